//! The container's processes in a cgroup of their own, its execs in another, the tether
//! outside both.
//!
//! The kernel's group scheduling then shares the CPU between the tether and the container
//! as a whole, however many processes the container runs. Without it a fork bomb, or any
//! workload with thousands of runnable processes, leaves PID 1 one share among thousands:
//! with a reaper fast enough to keep the process table from filling (so the bomb never
//! starves itself of pids), `vch exec` timed out and `vch stop` took 48 s under TCG. The
//! container's cgroup has the default weight, so a single busy process competes with the
//! tether exactly as before: giving the tether more (PID 1 at niceness -10) cut the output
//! log's throughput threefold, its pumps preempting the writer for every line.
//!
//! Execs get a cgroup of their own for the same reason: in the container's, `vch exec` into a
//! fork-bombed container took 245 s to list `/proc`; beside it, an exec has its own share.
//! (The VM is the container's boundary; these cgroups only share the CPU, they limit nothing.)
//!
//! Each launched process moves itself in before exec (see [`crate::launch`]), so nothing it
//! starts ever runs outside. Without cgroup2 (an old kernel, a failed mount) processes stay
//! where they are and everything else works.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use nix::mount::{mount, MsFlags};

/// Where the cgroup2 hierarchy is mounted (visible to the container, as under docker).
const ROOT: &str = "/sys/fs/cgroup";
/// The container's cgroup: its sessions (the primary) and everything they start.
pub const CONTAINER: &str = "/sys/fs/cgroup/container";
/// The execs' cgroup.
pub const EXEC: &str = "/sys/fs/cgroup/exec";

/// Which cgroup a launched process goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// the container's sessions
    Container,
    /// `exec` sessions
    Exec,
}

/// Each cgroup's `cgroup.procs`, open for writing; the launch child writes "0".
static PROCS: OnceLock<[OwnedFd; 2]> = OnceLock::new();

/// Why the container's cgroup could not be set up (the tether carries on without it).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// mounting cgroup2
    #[error("mount cgroup2 on {ROOT}: {0}")]
    Mount(nix::Error),
    /// enabling the cpu controller for the container's cgroup
    #[error("enable the cpu controller: {0}")]
    Controller(std::io::Error),
    /// creating a cgroup or opening its process list
    #[error("{0}: {1}")]
    Create(&'static str, std::io::Error),
}

/// Mounts cgroup2 if needed, creates the cgroups with the cpu controller and keeps their
/// process lists open for [`procs_fd`]. Call once, before the first launch. (Enabling the
/// controller only once the entrypoint had started saved the boot about 270 of the code
/// blocks TCG translates, a few milliseconds, but a fork bomb started by the entrypoint
/// then had the CPU one process to one with the tether until then, and the tether took
/// seconds to get there.)
pub fn setup() -> Result<(), CgroupError> {
    let root = Path::new(ROOT);
    if !root.join("cgroup.controllers").exists() {
        let _ = fs::create_dir_all(root);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("cgroup2"), root, Some("cgroup2"), flags, None::<&str>)
            .map_err(CgroupError::Mount)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .open(root.join("cgroup.subtree_control"))
        .and_then(|mut f| f.write_all(b"+cpu"))
        .map_err(CgroupError::Controller)?;
    let container = create(CONTAINER)?;
    let exec = create(EXEC)?;
    let _ = PROCS.set([container, exec]);
    Ok(())
}

/// Creates a cgroup (or finds it) and opens its `cgroup.procs` for writing (O_CLOEXEC,
/// std's default: no workload ever holds it).
fn create(dir: &'static str) -> Result<OwnedFd, CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CgroupError::Create(dir, e)),
    }
    fs::OpenOptions::new()
        .write(true)
        .open(Path::new(dir).join("cgroup.procs"))
        .map(OwnedFd::from)
        .map_err(|e| CgroupError::Create(dir, e))
}

/// A cgroup's `cgroup.procs` for a launch child to move itself in, or -1 without cgroups.
pub fn procs_fd(group: Group) -> RawFd {
    let i = match group {
        Group::Container => 0,
        Group::Exec => 1,
    };
    PROCS
        .get()
        .and_then(|p| p.get(i))
        .map_or(-1, AsRawFd::as_raw_fd)
}
