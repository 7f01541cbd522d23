//! A bare init for the boot benchmark: the least a container VM's PID 1 can do. It mounts
//! the kernel filesystems and the container disk, runs the entrypoint (`/bin/echo hello`)
//! with its output on the output channel, and powers off. No config, no reaping beyond its
//! child, no write-back: the yardstick the tether's own start-up cost is measured against.

use std::path::Path;
use std::time::Duration;

use nix::mount::MsFlags;
use tether::{disk, early, platform, shutdown};

fn main() {
    if let Err(e) = run() {
        eprintln!("bare-init: {e}");
    }
    nix::unistd::sync();
    shutdown::halt_now();
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    early::mount_kernel_filesystems()?;
    early::load_modules(Path::new("/lib/modules"))?;
    let out = early::wait_for("output port", Duration::from_secs(3), || {
        early::virtio_port(platform::port::OUTPUT)
    })?;
    let dev = early::wait_for("container disk", Duration::from_secs(10), || {
        disk::find_by_label(disk::CONTAINERFS_LABEL)
    })?;
    disk::mount_ext4(&dev, Path::new("/root"), MsFlags::MS_NOATIME)?;
    disk::switch_root(Path::new("/root"))?;
    let port = std::fs::File::options().write(true).open(out)?;
    // SAFETY: fork in a single-threaded process; the child only calls dup2 and execv
    // (async-signal-safe) before replacing itself.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::dup2_stdout(&port);
            let prog = c"/bin/echo";
            let _ = nix::unistd::execv(prog, &[c"echo", c"hello"]);
            // SAFETY: _exit is always safe to call; it ends the child without unwinding.
            unsafe { libc::_exit(127) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
    nix::unistd::sync();
    Ok(())
}
