//! The `routelb` binary as users run it.

use std::process::Command;

fn routelb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_routelb"))
        .args(args)
        .output()
        .expect("run routelb")
}

#[test]
fn crds_prints_what_deploy_ships() {
    let out = routelb(&["crds"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml")).unwrap();
    assert!(
        out.stdout == shipped,
        "deploy/crds.yaml is stale: run `routelb crds > deploy/crds.yaml`"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "addresspools.routelb.io",
        "bgppeers.routelb.io",
        "routerconfigs.routelb.io",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name} missing");
    }
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in ["allocator", "agent", "render", "cleanup", "crds"] {
        let out = routelb(&[sub, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.lines().next().is_some_and(|l| l.len() > 20),
            "{sub}: {help}"
        );
    }
}

#[test]
fn the_allocator_without_a_cluster_says_what_to_configure() {
    let out = Command::new(env!("CARGO_BIN_EXE_routelb"))
        .args(["allocator", "--health-addr", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run routelb");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set --kubeconfig or KUBECONFIG"), "{err}");
}
