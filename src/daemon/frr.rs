//! FRR: `vtysh --dryrun` to validate, `frr-reload.py --reload` to apply (it computes and
//! applies the difference, so unchanged sessions stay up), `vtysh -c 'show version'` to
//! probe.

use std::path::{Path, PathBuf};
use std::process::Command;

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

impl Frr {
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

    fn reload(&self) -> Result<(), DaemonError> {
        // frr-reload.py fails in many ways when the daemons are down; ask them first.
        self.probe()?;
        let bindir = self.vtysh.parent().unwrap_or(Path::new("/usr/bin"));
        let out = run(Command::new("python3")
            .arg(&self.reload)
            .arg("--reload")
            .arg("--stdout")
            .arg("--bindir")
            .arg(bindir)
            .arg("--confdir")
            .arg(self.config.parent().unwrap_or(Path::new("/etc/frr")))
            .arg("--rundir")
            .arg(&self.vty_dir)
            .arg("--vty_socket")
            .arg(&self.vty_dir)
            .arg(&self.config))?;
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
