//! The one clock routelb's deadlines use: time since boot, suspended and stopped time
//! included (`CLOCK_BOOTTIME`), so a process frozen by SIGSTOP or a stalled VM sees the
//! time it missed and a deadline cannot pass unnoticed.

use std::time::{Duration, Instant};

/// Time since boot (`CLOCK_BOOTTIME`).
pub fn boottime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_else(|_| {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        })
}
