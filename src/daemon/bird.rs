//! BIRD 2 over its control socket: `configure check` to validate (`bird -p` when the
//! daemon is down), `configure` to reload, `show status` to probe.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use routelb_core::status::bird::line_code;

use super::{DaemonError, RoutingDaemon, check_file, output_text, run};

/// BIRD, where its configuration and control socket are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bird {
    /// Where the configuration is written (the daemon's `-c`).
    pub config: PathBuf,
    /// The control socket (the daemon's `-s`).
    pub socket: PathBuf,
}

/// A reply from BIRD's control socket that failed: its code (8xxx, 9xxx) and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub message: String,
}

impl Bird {
    /// Runs one command; a refused command is `Ok(Err(..))`, with BIRD's message.
    pub fn command(&self, command: &str) -> Result<Result<Vec<String>, Refused>, DaemonError> {
        bird_command(&self.socket, command)
    }
}

impl RoutingDaemon for Bird {
    fn name(&self) -> &'static str {
        "bird"
    }

    fn config_path(&self) -> &Path {
        &self.config
    }

    fn probe(&self) -> Result<String, DaemonError> {
        match self.command("show status")? {
            Ok(lines) => Ok(lines.join(" ")),
            Err(r) => Err(DaemonError::Failed {
                what: "show status".into(),
                errno: None,
                message: r.message,
            }),
        }
    }

    /// BIRD's `show status` says when it started ("Last reboot on ...").
    fn instance(&self) -> Result<String, DaemonError> {
        let lines = match self.command("show status")? {
            Ok(lines) => lines,
            Err(r) => {
                return Err(DaemonError::Failed {
                    what: "show status".into(),
                    errno: None,
                    message: r.message,
                });
            }
        };
        Ok(lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("Last reboot on"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| lines.join(" ")))
    }

    /// BIRD derives its boot time from its monotonic clock at every `show status`, so
    /// the same process says "19:03:06.697" and then "19:03:06.698": times less than
    /// 50 ms apart are one start (a restart seen by routelb is seconds later).
    fn restarted(&self, was: &str, now: &str) -> bool {
        match (boot_time(was), boot_time(now)) {
            (Some(a), Some(b)) => (a - b).abs() > 50,
            _ => was != now,
        }
    }

    fn validate(&self, text: &str) -> Result<(), DaemonError> {
        check_file(&self.config, text, |file| {
            // The daemon itself checks (same version, same paths); without it, bird -p.
            match self.command(&format!("configure check \"{}\"", file.display())) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(refused)) => Err(DaemonError::Invalid {
                    message: refused.message,
                }),
                Err(e) if e.is_unreachable() => bird_parse(file),
                Err(e) => Err(e),
            }
        })
    }

    fn version(&self) -> Option<String> {
        let raw = bird_reply(&self.socket, "show status").ok()?;
        routelb_core::status::bird::parse_version(&raw.join("\n"))
    }

    fn sessions(
        &self,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Result<Vec<routelb_core::crd::SessionReport>, DaemonError> {
        let raw = bird_reply(&self.socket, "show protocols all")?;
        Ok(routelb_core::status::bird::parse_protocols(
            &raw.join("\n"),
            now,
        ))
    }

    fn reload(&self) -> Result<(), DaemonError> {
        match self.command(&format!("configure \"{}\"", self.config.display()))? {
            Ok(_) => Ok(()),
            Err(refused) => Err(DaemonError::Failed {
                what: "configure".into(),
                errno: None,
                message: refused.message,
            }),
        }
    }
}

fn bird_parse(file: &Path) -> Result<(), DaemonError> {
    let out = run(Command::new("bird").args(["-p", "-c"]).arg(file)).map_err(|e| {
        DaemonError::Unreachable {
            what: "the daemon is down and bird -p cannot run".into(),
            errno: None,
            message: e.to_string(),
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DaemonError::Invalid {
            message: output_text(&out),
        })
    }
}

/// Runs one command over BIRD's control socket. Returns the reply's lines, or BIRD's
/// refusal (a final code of 8xxx or 9xxx) with its message.
pub fn bird_command(
    socket: &Path,
    command: &str,
) -> Result<Result<Vec<String>, Refused>, DaemonError> {
    let raw = bird_reply(socket, command)?;
    let mut code = 0;
    let lines: Vec<String> = raw
        .iter()
        .map(|line| match line_code(line) {
            Some(c) => {
                code = c;
                line.get(5..).unwrap_or_default().to_string()
            }
            None => line.trim_start_matches(['+', ' ']).to_string(),
        })
        .collect();
    if code >= 8000 {
        return Ok(Err(Refused {
            code,
            message: lines.join(" | "),
        }));
    }
    Ok(Ok(lines))
}

/// Milliseconds since the epoch of BIRD's "2026-12-04 19:03:06.697" (local time as BIRD
/// prints it; only differences matter here).
fn boot_time(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(' ')?;
    let civil: k8s_openapi::jiff::civil::DateTime = format!("{date}T{time}").parse().ok()?;
    let ts = civil.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).ok()?;
    Some(ts.timestamp().as_millisecond())
}

/// Runs one command over BIRD's control socket and returns the reply's raw lines, codes
/// included (`1002-...`, continuation lines starting with a space), up to and including
/// its last line (a code followed by a space).
pub fn bird_reply(socket: &Path, command: &str) -> Result<Vec<String>, DaemonError> {
    let at = |what: &str| format!("{what} {}", socket.display());
    let stream =
        UnixStream::connect(socket).map_err(|e| DaemonError::unreachable(at("connect"), &e))?;
    let timeout = Some(Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| DaemonError::unreachable(at("use"), &e))?,
    );
    let mut writer = stream;
    let mut read_reply = || -> Result<Vec<String>, DaemonError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| DaemonError::unreachable(at("read from"), &e))?;
            if n == 0 {
                return Err(DaemonError::Unreachable {
                    what: at("read from"),
                    errno: None,
                    message: "the daemon closed the connection".into(),
                });
            }
            let line = line.trim_end_matches('\n').to_string();
            let last = line_code(&line).is_some() && line.as_bytes().get(4) == Some(&b' ');
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    };
    // The greeting ("0001 BIRD 2.0.12 ready.").
    read_reply()?;
    writer
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| DaemonError::unreachable(at("write to"), &e))?;
    read_reply()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_time_that_jitters_by_a_millisecond_is_no_restart() {
        let bird = Bird {
            config: "/etc/bird/bird.conf".into(),
            socket: "/run/bird/bird.ctl".into(),
        };
        assert!(!bird.restarted("2026-12-04 19:03:06.697", "2026-12-04 19:03:06.698"));
        assert!(!bird.restarted("2026-12-04 19:03:06.999", "2026-12-04 19:03:07.000"));
        assert!(bird.restarted("2026-12-04 19:03:06.697", "2026-12-04 19:03:09.120"));
        assert!(bird.restarted("2026-12-04 19:03:06.697", "show status said something else"));
    }

    #[test]
    fn an_absent_bird_socket_is_unreachable_not_invalid() {
        let err = bird_command(Path::new("/nonexistent/bird.ctl"), "show status").unwrap_err();
        assert!(
            matches!(
                err,
                DaemonError::Unreachable {
                    errno: Some(libc::ENOENT),
                    ..
                }
            ),
            "{err}"
        );
    }
}
