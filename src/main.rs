fn main() -> std::process::ExitCode {
    routelb::cli::main()
}
