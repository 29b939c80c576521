//! Talking to the routing daemon beside the agent: validate a configuration, write it
//! atomically, reload — BIRD over its control socket (`configure`), FRR with its reload
//! tool — and probe whether the daemon answers. Never restarts a daemon.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use thiserror::Error;

/// Which daemon, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Daemon {
    Bird {
        /// Where the configuration is written (the daemon's `-c`).
        config: PathBuf,
        /// The control socket (the daemon's `-s`).
        socket: PathBuf,
    },
    Frr {
        /// The integrated configuration file.
        config: PathBuf,
        /// The directory of the daemons' vty sockets (`--vty_socket`).
        vty_dir: PathBuf,
        /// `vtysh` and `frr-reload.py`.
        vtysh: PathBuf,
        reload: PathBuf,
    },
}

/// What went wrong, and whether the daemon is at fault or the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DaemonError {
    #[error("the configuration is invalid: {0}")]
    Invalid(String),
    #[error("the routing daemon is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

impl Daemon {
    pub fn config_path(&self) -> &Path {
        match self {
            Daemon::Bird { config, .. } | Daemon::Frr { config, .. } => config,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Daemon::Bird { .. } => "bird",
            Daemon::Frr { .. } => "frr",
        }
    }

    /// Whether the daemon answers; returns its greeting or version.
    pub fn probe(&self) -> Result<String, DaemonError> {
        match self {
            Daemon::Bird { socket, .. } => {
                bird_command(socket, "show status").map(|lines| lines.join(" "))
            }
            Daemon::Frr { vty_dir, vtysh, .. } => {
                let out = Command::new(vtysh)
                    .arg("--vty_socket")
                    .arg(vty_dir)
                    .args(["-c", "show version"])
                    .output()
                    .map_err(|e| {
                        DaemonError::Unreachable(format!("run {}: {e}", vtysh.display()))
                    })?;
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string())
                } else {
                    Err(DaemonError::Unreachable(output_text(&out)))
                }
            }
        }
    }

    /// Checks a configuration without applying it.
    pub fn validate(&self, text: &str) -> Result<(), DaemonError> {
        let check = sibling(self.config_path(), "check");
        write_atomic(&check, text)
            .map_err(|e| DaemonError::Failed(format!("write {}: {e}", check.display())))?;
        let result = match self {
            Daemon::Bird { socket, .. } => {
                // The daemon itself checks (same version, same paths); without it, bird -p.
                match bird_command(socket, &format!("configure check \"{}\"", check.display())) {
                    Ok(_) => Ok(()),
                    Err(DaemonError::Unreachable(_)) => bird_parse(&check),
                    Err(DaemonError::Failed(msg)) => Err(DaemonError::Invalid(msg)),
                    Err(e) => Err(e),
                }
            }
            Daemon::Frr { vtysh, .. } => {
                let out = Command::new(vtysh)
                    .arg("--dryrun")
                    .arg("-f")
                    .arg(&check)
                    .output()
                    .map_err(|e| DaemonError::Failed(format!("run {}: {e}", vtysh.display())))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(DaemonError::Invalid(output_text(&out)))
                }
            }
        };
        let _ = std::fs::remove_file(&check);
        result
    }

    /// Writes the configuration atomically and makes the running daemon load it.
    pub fn apply(&self, text: &str) -> Result<(), DaemonError> {
        let path = self.config_path();
        write_atomic(path, text)
            .map_err(|e| DaemonError::Failed(format!("write {}: {e}", path.display())))?;
        match self {
            Daemon::Bird { socket, .. } => {
                bird_command(socket, &format!("configure \"{}\"", path.display())).map(|_| ())
            }
            Daemon::Frr {
                vty_dir,
                vtysh,
                reload,
                ..
            } => {
                let bindir = vtysh.parent().unwrap_or(Path::new("/usr/bin"));
                let out = Command::new("python3")
                    .arg(reload)
                    .arg("--reload")
                    .arg("--stdout")
                    .arg("--bindir")
                    .arg(bindir)
                    .arg("--confdir")
                    .arg(path.parent().unwrap_or(Path::new("/etc/frr")))
                    .arg("--rundir")
                    .arg(vty_dir)
                    .arg("--vty_socket")
                    .arg(vty_dir)
                    .arg(path)
                    .output()
                    .map_err(|e| DaemonError::Failed(format!("run {}: {e}", reload.display())))?;
                if out.status.success() {
                    Ok(())
                } else {
                    let text = output_text(&out);
                    if text.contains("failed to connect") || text.contains("Connection refused") {
                        Err(DaemonError::Unreachable(text))
                    } else {
                        Err(DaemonError::Failed(format!("frr-reload failed: {text}")))
                    }
                }
            }
        }
    }
}

fn output_text(out: &std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(stdout.trim());
    }
    // Keep it short enough for an Event.
    s.lines()
        .filter(|l| !l.contains("vtysh.conf"))
        .take(12)
        .collect::<Vec<_>>()
        .join(" | ")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Writes a file so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = sibling(path, &format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn bird_parse(file: &Path) -> Result<(), DaemonError> {
    let out = Command::new("bird")
        .args(["-p", "-c"])
        .arg(file)
        .output()
        .map_err(|e| {
            DaemonError::Unreachable(format!("the daemon is down and bird -p cannot run: {e}"))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DaemonError::Invalid(output_text(&out)))
    }
}

/// Runs one command over BIRD's control socket. Returns the reply's lines; a reply whose
/// final code is 8xxx or 9xxx is a failure carrying BIRD's message.
pub fn bird_command(socket: &Path, command: &str) -> Result<Vec<String>, DaemonError> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| DaemonError::Unreachable(format!("connect {}: {e}", socket.display())))?;
    let timeout = Some(Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| DaemonError::Unreachable(e.to_string()))?,
    );
    let mut writer = stream;
    let read_reply =
        |reader: &mut BufReader<UnixStream>| -> Result<(u16, Vec<String>), DaemonError> {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line).map_err(|e| {
                    DaemonError::Unreachable(format!("read from {}: {e}", socket.display()))
                })?;
                if n == 0 {
                    return Err(DaemonError::Unreachable(format!(
                        "{} closed the connection",
                        socket.display()
                    )));
                }
                let line = line.trim_end_matches('\n').to_string();
                let code = line.get(..4).and_then(|c| c.parse::<u16>().ok());
                let last = code.is_some() && line.as_bytes().get(4) == Some(&b' ');
                let text = match code {
                    Some(_) => line.get(5..).unwrap_or_default().to_string(),
                    None => line.trim_start_matches(['+', ' ']).to_string(),
                };
                lines.push(text);
                if last {
                    return Ok((code.unwrap_or(0), lines));
                }
            }
        };
    // The greeting ("0001 BIRD 2.0.12 ready.").
    read_reply(&mut reader)?;
    writer
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| DaemonError::Unreachable(format!("write to {}: {e}", socket.display())))?;
    let (code, lines) = read_reply(&mut reader)?;
    if code >= 8000 {
        return Err(DaemonError::Failed(lines.join(" | ")));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = std::env::temp_dir().join(format!("routelb-daemon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bird.conf");
        write_atomic(&f, "one").unwrap();
        write_atomic(&f, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_absent_bird_socket_is_unreachable_not_invalid() {
        let err = bird_command(Path::new("/nonexistent/bird.ctl"), "show status").unwrap_err();
        assert!(matches!(err, DaemonError::Unreachable(_)), "{err}");
    }
}
