//! The two clocks the tether writes down: the boot clock of the boot stamps and the wall
//! clock of the session times the host reads.

use std::time::{SystemTime, UNIX_EPOCH};

/// `CLOCK_BOOTTIME` in microseconds: time since the kernel started, so the first stamp is
/// the kernel's own time to PID 1.
pub fn boottime_us() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (UTC), the unit of `detail.*time`.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
