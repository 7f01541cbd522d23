//! Ending the VM: stop every process, flush, unmount, power off.

use std::time::Duration;

use crate::reaper::Reaper;
use crate::signals;

/// Time processes get between SIGTERM and SIGKILL once the container is ending.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Sends SIGTERM to every process but PID 1, waits up to `grace` for all to exit, then
/// SIGKILLs what is left and waits for the reaper to collect it.
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
    if !reaper.wait_all_gone(Duration::from_secs(5)).await {
        tracing::warn!("processes left after SIGKILL (uninterruptible sleep?)");
    }
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
            nix::unistd::sync();
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
            nix::unistd::sync();
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
