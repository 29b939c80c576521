//! FRR: `vtysh --dryrun` to validate, `frr-reload.py --reload` to apply (it computes and
//! applies the difference, so unchanged sessions stay up), `vtysh -c 'show version'` to
//! probe.

use std::path::{Path, PathBuf};
use std::process::Command;

use routelb_core::routing::context::Context;

use super::{DaemonError, RoutingDaemon, check_file, output_text, run};

/// FRR, where its configuration, vty sockets and tools are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frr {
    /// The integrated configuration file.
    pub config: PathBuf,
    /// The directory of the daemons' vty sockets (`--vty_socket`).
    pub vty_dir: PathBuf,
    /// `vtysh` and `frr-reload.py`.
    pub vtysh: PathBuf,
    pub reload: PathBuf,
}

/// The vtysh commands (under `configure`) that turn on graceful restart for the
/// neighbours of `text` that ask for it, exist in the running configuration and do not
/// have it yet.
/// A neighbour's graceful-restart mode line (`graceful-restart`, or `-disable`).
fn is_graceful_restart(line: &str) -> bool {
    let l = line.trim_end();
    l.starts_with(" neighbor ")
        && (l.ends_with(" graceful-restart") || l.ends_with(" graceful-restart-disable"))
}

/// Whether the neighbour a ` neighbor X ...` line is about exists in `running`.
fn neighbour_exists(running: &str, line: &str) -> bool {
    let Some(addr) = line.split_whitespace().nth(1) else {
        return false;
    };
    let remote = format!(" neighbor {addr} remote-as ");
    running.lines().any(|r| r.starts_with(&remote))
}

fn graceful_restart_additions(text: &str, running: &str) -> Vec<Vec<String>> {
    let router = |conf: &str| {
        conf.lines()
            .find(|l| l.starts_with("router bgp "))
            .map(str::to_string)
    };
    let (Some(wanted), Some(current)) = (router(text), router(running)) else {
        return Vec::new();
    };
    if wanted != current {
        return Vec::new();
    }
    let has = |conf: &str, line: &str| conf.lines().any(|l| l.trim_end() == line);
    text.lines()
        .filter(|l| is_graceful_restart(l) && !has(running, l.trim_end()))
        .filter(|l| neighbour_exists(running, l))
        .map(|l| vec![wanted.clone(), l.trim().to_string()])
        .collect()
}

impl Frr {
    fn write_and_reload(&self, text: &str) -> Result<(), DaemonError> {
        let path = &self.config;
        super::write_atomic(path, text)
            .map_err(|e| DaemonError::io(format!("write {}", path.display()), &e))?;
        self.reload()
    }

    /// frr-reload.py in `mode` (`--reload` or `--test`) for the configuration file.
    fn frr_reload(&self, mode: &str) -> Command {
        let bindir = self.vtysh.parent().unwrap_or(Path::new("/usr/bin"));
        let mut cmd = Command::new("python3");
        cmd.arg(&self.reload)
            .arg(mode)
            .arg("--stdout")
            .arg("--bindir")
            .arg(bindir)
            .arg("--confdir")
            .arg(self.config.parent().unwrap_or(Path::new("/etc/frr")))
            .arg("--rundir")
            .arg(&self.vty_dir)
            .arg("--vty_socket")
            .arg(&self.vty_dir)
            .arg(&self.config);
        cmd
    }

    /// Runs one vtysh command against the running daemons.
    pub fn vtysh(&self, command: &str) -> Result<String, DaemonError> {
        let out = run(Command::new(&self.vtysh)
            .arg("--vty_socket")
            .arg(&self.vty_dir)
            .args(["-c", command]))
        .map_err(|e| DaemonError::Unreachable {
            what: format!("run {}", self.vtysh.display()),
            errno: None,
            message: e.to_string(),
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(DaemonError::Unreachable {
                what: format!("vtysh -c '{command}'"),
                errno: None,
                message: output_text(&out),
            })
        }
    }
}

impl RoutingDaemon for Frr {
    fn name(&self) -> &'static str {
        "frr"
    }

    fn config_path(&self) -> &Path {
        &self.config
    }

    fn probe(&self) -> Result<String, DaemonError> {
        Ok(self
            .vtysh("show version")?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    fn version(&self) -> Option<String> {
        routelb_core::status::frr::parse_version(&self.vtysh("show version").ok()?)
    }

    fn sessions(
        &self,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Result<Vec<routelb_core::crd::SessionReport>, DaemonError> {
        let text = self.vtysh("show bgp neighbors json")?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DaemonError::Failed {
                what: "read vtysh -c 'show bgp neighbors json'".into(),
                errno: None,
                message: e.to_string(),
            })?;
        Ok(routelb_core::status::frr::parse_neighbors(&json, now))
    }

    /// The process IDs of zebra and bgpd (their pid files beside the vty sockets).
    fn instance(&self) -> Result<String, DaemonError> {
        self.probe()?;
        let pid = |d: &str| {
            let path = self.vty_dir.join(format!("{d}.pid"));
            std::fs::read_to_string(&path)
                .map(|p| p.trim().to_string())
                .map_err(|e| DaemonError::io(format!("read {}", path.display()), &e))
        };
        Ok(format!("zebra {} bgpd {}", pid("zebra")?, pid("bgpd")?))
    }

    fn settle(&self, before: Option<&Context>, after: &Context) -> Result<(), DaemonError> {
        let Some(before) = before else { return Ok(()) };
        for peer in &after.peers {
            let Some(old) = before.peers.iter().find(|p| p.address == peer.address) else {
                continue;
            };
            // (A changed graceful-restart mode was reset when it was set.)
            if (old.hold_time, old.keepalive) != (peer.hold_time, peer.keepalive) {
                tracing::info!(peer = %peer.address, "BGP timers changed: resetting the session so FRR applies them");
                self.vtysh(&format!("clear bgp {}", peer.address))?;
            }
        }
        Ok(())
    }

    fn validate(&self, text: &str) -> Result<(), DaemonError> {
        check_file(&self.config, text, |file| {
            let out = run(Command::new(&self.vtysh)
                .arg("--dryrun")
                .arg("-f")
                .arg(file))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(DaemonError::Invalid {
                    message: output_text(&out),
                })
            }
        })
    }

    fn apply(&self, text: &str) -> Result<(), DaemonError> {
        // frr-reload.py gives its additions twice (by design), and FRR 8 refuses
        // "neighbor X graceful-restart" the second time: such lines are given once, by
        // vtysh, so that frr-reload.py finds them in place. A neighbour that does not
        // exist yet is first created by a reload without its graceful-restart line.
        self.probe()?;
        let running = self.vtysh("show running-config")?;
        let new: Vec<&str> = text
            .lines()
            .filter(|l| is_graceful_restart(l) && !neighbour_exists(&running, l))
            .collect();
        let running = if new.is_empty() {
            running
        } else {
            let first: String = text
                .lines()
                .filter(|l| !new.contains(l))
                .map(|l| format!("{l}\n"))
                .collect();
            self.write_and_reload(&first)?;
            self.vtysh("show running-config")?
        };
        for cmds in graceful_restart_additions(text, &running) {
            let neighbour = cmds[1]
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut args: Vec<String> = vec!["configure".into()];
            args.extend(cmds);
            let out = run(Command::new(&self.vtysh)
                .arg("--vty_socket")
                .arg(&self.vty_dir)
                .args(args.iter().flat_map(|c| ["-c", c.as_str()])))?;
            if !out.status.success() {
                return Err(DaemonError::Failed {
                    what: "set graceful restart".into(),
                    errno: None,
                    message: output_text(&out),
                });
            }
            // FRR applies a graceful-restart mode only to a new session.
            tracing::info!(peer = %neighbour, "graceful restart mode set: resetting the session so FRR applies it");
            self.vtysh(&format!("clear bgp {neighbour}"))?;
        }
        self.write_and_reload(text)
    }

    fn reload(&self) -> Result<(), DaemonError> {
        // frr-reload.py fails in many ways when the daemons are down; ask them first.
        self.probe()?;
        let out = run(&mut self.frr_reload("--reload"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DaemonError::Failed {
                what: "frr-reload".into(),
                errno: None,
                message: output_text(&out),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graceful_restart_is_given_once_to_existing_neighbours_that_lack_it() {
        let text = "router bgp 64512\n neighbor 192.0.2.1 remote-as 64500\n neighbor 192.0.2.1 graceful-restart\n neighbor 192.0.2.4 remote-as 64500\n neighbor 192.0.2.4 graceful-restart-disable\n neighbor 192.0.2.2 remote-as 64500\n neighbor 192.0.2.2 graceful-restart\n neighbor 192.0.2.3 remote-as 64500\n neighbor 192.0.2.3 graceful-restart\nexit\n";
        let running = "router bgp 64512\n neighbor 192.0.2.1 remote-as 64500\n neighbor 192.0.2.2 remote-as 64500\n neighbor 192.0.2.2 graceful-restart\nexit\n";
        assert_eq!(
            graceful_restart_additions(text, running),
            [vec![
                "router bgp 64512".to_string(),
                "neighbor 192.0.2.1 graceful-restart".to_string()
            ]],
            "192.0.2.2 has it; 192.0.2.3 is new: frr-reload.py adds it with the neighbour"
        );
        let other_as = running.replace("64512", "64513");
        assert!(graceful_restart_additions(text, &other_as).is_empty());
    }
}
