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

/// Flushes and powers the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    crate::disk::unmount_all();
    nix::unistd::sync();
    halt_now()
}

/// Powers off without unmounting (the panic path: the state of mounts is unknown, but the
/// disks are synced). Never returns.
pub fn halt_now() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // No ACPI power-off: a reboot ends the VM when it is configured not to restart
    // (QEMU -no-reboot); a VM that restarts boots a fresh tether, which is also safe.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
