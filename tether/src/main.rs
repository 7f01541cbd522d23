//! tether: PID 1 of a container VM.
//!
//! It boots from the initramfs of the bootstrap ISO, reads the container's config from the
//! hypervisor, mounts the container's disk as the root, runs the entrypoint, reaps every
//! process, writes the outcome back, and powers the VM off when the container ends.
//!
//! PID 1 must never exit (the kernel panics) nor panic: every path ends in a clean power-off.

use tether::{boot, log, shutdown};

fn main() {
    if std::process::id() != 1 {
        eprintln!("tether: must run as PID 1 of a container VM (it mounts filesystems and powers the machine off)");
        std::process::exit(2);
    }
    // Before any thread exists, so that every thread inherits it (see `reaper`).
    let sigchld_blocked = tether::reaper::block_sigchld();
    std::panic::set_hook(Box::new(|info| {
        log::write_raw(format!("tether: PANIC: {info}\n").as_bytes());
        shutdown::panic_power_off();
    }));
    log::init(tracing::Level::INFO);
    if let Err(e) = sigchld_blocked {
        tracing::warn!(error = %e, "SIGCHLD not blocked: exits wait for the reaper's sweeps");
    }
    if let Err(e) = boot::run() {
        tracing::error!("{e:#}");
    }
    tracing::info!("powering off");
    shutdown::power_off();
}
