//! The routing daemon beside the agent, behind one trait: validate a configuration,
//! write it atomically and make the running daemon load it, say whether it answers.
//! BIRD ([`bird::Bird`], over its control socket) and FRR ([`frr::Frr`], with vtysh and
//! frr-reload.py) implement it. A daemon is never restarted.

pub mod bird;
pub mod frr;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use thiserror::Error;

/// A routing daemon routelb configures.
pub trait RoutingDaemon: fmt::Debug + Send + Sync {
    /// `bird` or `frr`.
    fn name(&self) -> &'static str;
    /// Where the configuration is written (what the daemon loads).
    fn config_path(&self) -> &Path;
    /// Whether the daemon answers; returns its greeting or version.
    fn probe(&self) -> Result<String, DaemonError>;
    /// What identifies the running daemon process: changes when it restarts (then it
    /// may run any configuration, its bootstrap one for instance).
    fn instance(&self) -> Result<String, DaemonError>;
    /// Whether two [`instance`](Self::instance) answers are two different processes.
    fn restarted(&self, was: &str, now: &str) -> bool {
        was != now
    }
    /// Checks a configuration without applying it.
    fn validate(&self, text: &str) -> Result<(), DaemonError>;
    /// Makes the running daemon load the configuration file as it is now.
    fn reload(&self) -> Result<(), DaemonError>;
    /// The daemon's version (`2.0.12`), when it says.
    fn version(&self) -> Option<String>;
    /// The BGP sessions as the daemon reports them (its own status interface: BIRD's
    /// control socket, FRR's vtysh JSON), at `now`.
    fn sessions(
        &self,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Result<Vec<routelb_core::crd::SessionReport>, DaemonError>;

    /// After a reload from the configuration rendered from `before` to the one from
    /// `after`: whatever the daemon needs to apply it fully (FRR applies BGP timers only
    /// to new sessions, so the sessions whose timers changed are reset).
    fn settle(
        &self,
        _before: Option<&routelb_core::routing::context::Context>,
        _after: &routelb_core::routing::context::Context,
    ) -> Result<(), DaemonError> {
        Ok(())
    }

    /// Writes the configuration atomically, then reloads.
    fn apply(&self, text: &str) -> Result<(), DaemonError> {
        let path = self.config_path();
        write_atomic(path, text)
            .map_err(|e| DaemonError::io(format!("write {}", path.display()), &e))?;
        self.reload()
    }
}

/// What went wrong, and whether the daemon is at fault or the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DaemonError {
    /// The daemon (or its checker) refused the configuration, in its own words.
    #[error("the configuration is invalid: {message}")]
    Invalid { message: String },
    /// The daemon does not answer: retried later, the kernel side is unaffected.
    #[error("the routing daemon is unreachable: {what}: {message}")]
    Unreachable {
        what: String,
        errno: Option<i32>,
        message: String,
    },
    /// Anything else: writing a file, running a tool, the daemon failing to load.
    #[error("{what}: {message}")]
    Failed {
        what: String,
        errno: Option<i32>,
        message: String,
    },
}

impl DaemonError {
    /// A failed file or process operation, keeping its errno.
    pub fn io(what: impl Into<String>, e: &std::io::Error) -> DaemonError {
        DaemonError::Failed {
            what: what.into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    /// The daemon could not be reached through `what`.
    pub fn unreachable(what: impl Into<String>, e: &std::io::Error) -> DaemonError {
        DaemonError::Unreachable {
            what: what.into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, DaemonError::Unreachable { .. })
    }
}

/// Runs a program, mapping a failure to start it to [`DaemonError::Failed`].
fn run(cmd: &mut Command) -> Result<Output, DaemonError> {
    let program = cmd.get_program().to_string_lossy().to_string();
    cmd.output()
        .map_err(|e| DaemonError::io(format!("run {program}"), &e))
}

/// A program's output, short enough for an Event.
fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(stdout.trim());
    }
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains("vtysh.conf")).collect();
    // Tools that log their progress (frr-reload.py): the errors are what matters.
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("ERROR") || l.contains("% ") || l.contains("Failed"))
        .collect();
    let shown = if errors.is_empty() { lines } else { errors };
    shown.into_iter().take(12).collect::<Vec<_>>().join(" | ")
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Writes a file so that readers see the old or the new content, never a mix. The file
/// is readable by its owner and group only (configurations hold BGP passwords); a file it
/// replaces keeps its owner and group (the daemon's user may need to read it).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let tmp = sibling(path, &format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        if let Ok(old) = std::fs::metadata(path) {
            // Best effort: a member of the group may give the file its group; only
            // CAP_CHOWN gives it away.
            let _ = std::os::unix::fs::fchown(&f, None, Some(old.gid()));
            let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Writes `text` beside the configuration for a check, runs `check`, removes the file.
fn check_file(
    config: &Path,
    text: &str,
    check: impl FnOnce(&Path) -> Result<(), DaemonError>,
) -> Result<(), DaemonError> {
    let file = sibling(config, "check");
    write_atomic(&file, text)
        .map_err(|e| DaemonError::io(format!("write {}", file.display()), &e))?;
    let result = check(&file);
    let _ = std::fs::remove_file(&file);
    result
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "passwords are not world-readable");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_keep_the_errno() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        let d = DaemonError::unreachable("connect /run/bird/bird.ctl", &e);
        assert!(d.is_unreachable());
        assert!(matches!(
            d,
            DaemonError::Unreachable {
                errno: Some(libc::ENOENT),
                ..
            }
        ));
        assert!(d.to_string().contains("connect /run/bird/bird.ctl"), "{d}");
    }
}
