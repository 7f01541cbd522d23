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

/// The boot stamps (`pid1`, `early`, `platform`, `fetched`, `config`, `disks`, `network`,
/// `runtime`, `launch`, `spawned`, `exec`, `output`), taken wherever those steps happen;
/// the config's `tether.boot_stamps` is a copy ([`boot_stamps`]) made for each write-back.
static STAMPS: std::sync::Mutex<Vec<(&'static str, i64)>> = std::sync::Mutex::new(Vec::new());

/// Records the boot stamp `name` now, once: a later stamp of the same name is ignored (a
/// relaunch is not the boot).
pub fn stamp(name: &'static str) {
    let at = boottime_us();
    let mut s = STAMPS.lock().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|(n, _)| *n == name) {
        s.push((name, at));
    }
}

/// The stamps recorded by [`stamp`] so far, as the config holds them.
pub fn boot_stamps() -> std::collections::BTreeMap<String, i64> {
    let s = STAMPS.lock().unwrap_or_else(|p| p.into_inner());
    s.iter().map(|(n, at)| ((*n).to_owned(), *at)).collect()
}

/// Seconds since the Unix epoch (UTC), the unit of `detail.*time`.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How often the guest's clock is compared with the host's after boot.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A difference the clock is stepped for (below it, the round trip's uncertainty).
const STEP_ABOVE_NS: i64 = 50_000_000;

/// `CLOCK_REALTIME` in ns since the epoch.
fn realtime_ns() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

fn monotonic_ns() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

/// Steps the wall clock to `host_ns` (plus what passed since it was read) when it is off by
/// more than the round trip can explain. Returns the difference found (host − guest, ns).
pub fn step_to(host_ns: i64, read_at_monotonic: i64) -> Option<i64> {
    let now = host_ns + (monotonic_ns() - read_at_monotonic);
    let diff = now - realtime_ns();
    if diff.abs() > STEP_ABOVE_NS {
        let ts = nix::sys::time::TimeSpec::new(now / 1_000_000_000, now % 1_000_000_000);
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            tracing::warn!(error = %e, "cannot set the clock");
            return None;
        }
    }
    Some(diff)
}

/// Reads the host's clock through the guestinfo channel (our `guestinfo.tether.hosttime`
/// key) and steps the guest's to it: half the round trip is added to what the host said.
/// `None` when the host does not offer its clock (vSphere: VMware Tools keep time there).
pub fn sync_with(transport: &dyn guestinfo::Transport) -> Option<i64> {
    let before = monotonic_ns();
    let value = transport.get(guestinfo::transport::HOST_TIME_KEY).ok()??;
    let after = monotonic_ns();
    let host: i64 = value.trim().parse().ok()?;
    step_to(host + (after - before) / 2, after)
}

/// Applies what the host gave at boot in the config it sent (our extension keys, answered
/// afresh for each read and never stored): its clock, and a random seed credited to the
/// kernel's CRNG, so that `getrandom` is ready before the entrypoint runs even without a
/// virtio-rng device. `read_at` is `CLOCK_MONOTONIC` (ns) when the config arrived.
pub fn apply_boot_keys(raw: &guestinfo::Map, read_at: i64) {
    if let Some(host) = raw
        .get(guestinfo::transport::HOST_TIME_KEY)
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        if let Some(diff) = step_to(host, read_at) {
            tracing::info!(off_by_ms = diff / 1_000_000, "clock set from the host");
        }
    }
    if let Some(seed) = raw.get(guestinfo::transport::ENTROPY_SEED_KEY) {
        match seed_crng(seed) {
            Ok(()) => tracing::debug!("CRNG seeded from the host"),
            Err(e) => tracing::warn!(error = %e, "cannot seed the CRNG"),
        }
    }
}

/// `CLOCK_MONOTONIC` in ns, for [`apply_boot_keys`].
pub fn monotonic_now_ns() -> i64 {
    monotonic_ns()
}

/// Credits 32 bytes from the host (64 hex digits) to the kernel's entropy pool
/// (`RNDADDENTROPY`, 256 bits: enough for the CRNG to be initialised at once).
fn seed_crng(hex: &str) -> std::io::Result<()> {
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    if bytes.len() < 32 {
        return Err(std::io::Error::other("seed shorter than 32 bytes"));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let bits: i32 = 256;
    let size: i32 = 32;
    let mut info = Vec::with_capacity(8 + 32);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(&bytes[..32]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // _IOW('R', 0x03, int[2]); libc does not name it. It fits every libc's request type.
    const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info (two ints and `buf_size` bytes) from the
    // pointer, which points at exactly that many initialised bytes; the descriptor is open.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            RNDADDENTROPY,
            info.as_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps the guest's clock in step with the host's after boot: a paused VM (QEMU's `stop`,
/// a SIGSTOP of QEMU, a suspended host) comes back with its clock behind, and is corrected
/// within [`SYNC_EVERY`].
pub async fn keep_in_step(transport: crate::writeback::WriteBack) {
    loop {
        tokio::time::sleep(SYNC_EVERY).await;
        let t = transport.clone();
        let found = crate::blocking::run("clock-sync", move || sync_with(&t)).await;
        match found {
            Ok(Some(diff)) if diff.abs() > STEP_ABOVE_NS => {
                tracing::info!(off_by_ms = diff / 1_000_000, "clock stepped to the host's");
            }
            Ok(Some(_)) => {}
            // No thread now (a workload holding every pid): the next round tries again.
            Err(e @ crate::blocking::BlockingError::Spawn(..)) => {
                tracing::debug!(error = %e, "clock sync skipped");
            }
            // No host clock on this platform: nothing to keep in step with.
            Ok(None) | Err(crate::blocking::BlockingError::Lost(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_taken_once() {
        stamp("test-first");
        let first = boot_stamps();
        stamp("test-first");
        stamp("test-second");
        let all = boot_stamps();
        assert_eq!(first.get("test-first"), all.get("test-first"));
        assert!(all["test-second"] >= all["test-first"]);
        let taken = STAMPS.lock().unwrap();
        assert_eq!(taken.iter().filter(|(n, _)| *n == "test-first").count(), 1);
    }
}
