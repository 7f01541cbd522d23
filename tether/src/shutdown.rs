//! Ending the VM: stop every process, flush, unmount, power off.

use std::time::Duration;

use crate::reaper::Reaper;
use crate::signals;

/// Time processes get between SIGTERM and SIGKILL once the container is ending.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// The longest wait for processes to die after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// A SIGKILLed process dies only when its uninterruptible sleep ends: one writing to an NFS
/// server that is gone never does. Uninterruptible sleep this long after SIGKILL counts as
/// stuck, and the tether goes on without waiting for it any longer.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Sends SIGTERM to every process but PID 1, waits up to `grace` for all to exit, then
/// SIGKILLs what is left and waits for the reaper to collect it (not for processes stuck in
/// uninterruptible sleep).
pub async fn terminate_all(reaper: &Reaper, grace: Duration) {
    // kill(-1) from PID 1 reaches every process except PID 1 itself.
    if signals::send(-1, libc::SIGTERM).is_err() {
        // ESRCH: nothing left to signal.
        return;
    }
    if reaper.wait_all_gone(grace).await {
        return;
    }
    tracing::info!("processes still running after {grace:?}, sending SIGKILL");
    let _ = signals::send(-1, libc::SIGKILL);
    let all_stuck = || {
        let states = user_process_states();
        !states.is_empty() && states.iter().all(|s| *s == 'D')
    };
    if !wait_unless_stuck(KILL_WAIT, crate::reaper::no_children, all_stuck).await {
        tracing::warn!(
            "processes left after SIGKILL, in uninterruptible sleep (a network filesystem whose server is gone?)"
        );
    }
}

/// Polls until `done()`, or until `stuck()` has held for [`STUCK_AFTER`] without a break,
/// or until `limit` passes. Returns whether `done()` became true.
pub async fn wait_unless_stuck(
    limit: Duration,
    mut done: impl FnMut() -> bool,
    mut stuck: impl FnMut() -> bool,
) -> bool {
    let start = tokio::time::Instant::now();
    let mut stuck_since = None;
    loop {
        if done() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if stuck() {
            if now.duration_since(*stuck_since.get_or_insert(now)) >= STUCK_AFTER {
                return false;
            }
        } else {
            stuck_since = None;
        }
        if now.duration_since(start) >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state letter (`R`, `S`, `D`, `Z`, ...) and the flags of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may hold anything, spaces and `)`
    // included: the fields proper start after the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // state, ppid, pgrp, session, tty_nr, tpgid, flags
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// Whether a process sleeps uninterruptibly (`D`): signals, SIGKILL too, wait until it wakes.
pub fn in_uninterruptible_sleep(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|(state, _)| state == 'D')
}

/// The states of every process in the VM but PID 1, kernel threads and zombies (which the
/// reaper collects).
fn user_process_states() -> Vec<char> {
    /// `PF_KTHREAD` in the stat flags.
    const KERNEL_THREAD: u64 = 0x0020_0000;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != 1)
        .filter_map(|pid| parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .filter(|(state, flags)| flags & KERNEL_THREAD == 0 && *state != 'Z')
        .map(|(state, _)| state)
        .collect()
}

/// How long unmounting may take before the VM powers off regardless: an NFS server that is
/// gone can hold an unmount forever.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// Flushes, unmounts every volume and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // Local disks first, so a hung network unmount below cannot cost committed data.
    crate::disk::sync_local();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("unmount".into())
        .spawn(move || {
            crate::disk::unmount_all();
            // Not sync(): it would wait on a network filesystem whose server is gone (one a
            // stuck process kept busy is only detached). Every local one is unmounted or
            // read-only by now.
            crate::disk::sync_local();
            let _ = tx.send(());
        });
    match worker {
        Ok(_) => {
            if rx.recv_timeout(UNMOUNT_DEADLINE).is_err() {
                tracing::warn!(
                    "unmounting did not finish in {UNMOUNT_DEADLINE:?}; powering off anyway"
                );
                crate::disk::sync_local();
            }
        }
        Err(_) => {
            crate::disk::unmount_all();
            crate::disk::sync_local();
        }
    }
    halt_now()
}

/// The panic path: every process is killed so nothing holds a volume, then the normal
/// flush-unmount-power-off runs. Never returns.
pub fn panic_power_off() -> ! {
    let _ = signals::send(-1, libc::SIGKILL);
    // The reaper may be the thread that panicked: give the kernel a moment to tear the
    // killed processes down so their open files are closed.
    std::thread::sleep(Duration::from_millis(200));
    power_off()
}

/// Powers off at once; callers have flushed what they could. Never returns.
pub fn halt_now() -> ! {
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // No ACPI power-off: a reboot ends the VM when it is configured not to restart
    // (QEMU -no-reboot); a VM that restarts boots a fresh tether, which is also safe.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        // A kernel thread, a shell in uninterruptible sleep, a command name with ") S (".
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0";
        assert_eq!(parse_stat(kthread), Some(('S', 2_129_984)));
        let sh = "46 (sh) D 1 46 46 0 -1 4194560 300 0 0 0 1 2 0 0 20 0 1 0 30 0 0";
        assert_eq!(parse_stat(sh), Some(('D', 4_194_560)));
        let odd = "7 (a) S (b) R 1 7 7 0 -1 64 0";
        assert_eq!(parse_stat(odd), Some(('R', 64)));
        assert_eq!(parse_stat("7 (cut short) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_is_not_stuck() {
        assert!(!in_uninterruptible_sleep(
            i32::try_from(std::process::id()).unwrap_or(i32::MAX)
        ));
        assert!(!in_uninterruptible_sleep(i32::MAX));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn waiting_ends_when_done_stuck_or_late() {
        let t0 = tokio::time::Instant::now();
        // Done at once.
        assert!(wait_unless_stuck(KILL_WAIT, || true, || true).await);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Stuck from the start: gives up after STUCK_AFTER, not KILL_WAIT.
        let t0 = tokio::time::Instant::now();
        assert!(!wait_unless_stuck(KILL_WAIT, || false, || true).await);
        assert_eq!(t0.elapsed(), STUCK_AFTER);
        // Stuck only now and then: the stretch must be unbroken, so the limit ends it.
        let t0 = tokio::time::Instant::now();
        // Stuck at nine polls in ten (450 ms), then not.
        let mut n = 0usize;
        let flapping = move || {
            n += 1;
            [true, true, true, true, true, true, true, true, true, false][n % 10]
        };
        assert!(!wait_unless_stuck(KILL_WAIT, || false, flapping).await);
        assert_eq!(t0.elapsed(), KILL_WAIT);
        // Done later: true.
        let t0 = tokio::time::Instant::now();
        let mut polls = 0u32;
        let later = move || {
            polls += 1;
            polls > 3
        };
        assert!(wait_unless_stuck(KILL_WAIT, later, || false).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(150));
    }
}
