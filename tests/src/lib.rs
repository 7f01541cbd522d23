//! Shared helpers for the end-to-end scenarios: boot a container VM with the harness in a
//! private state directory and look at it the way a user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use qemu_harness::vm::{RunOptions, RunOutcome};
use qemu_harness::state::State;
use qemu_harness::vm::{self, Captured};

/// Hard limit for one scenario's VM; QEMU is killed when it passes.
pub const VM_TIMEOUT: Duration = Duration::from_secs(90);

/// A finished container VM.
#[derive(Debug)]
pub struct Finished {
    pub outcome: RunOutcome,
    pub stdout: String,
    pub stderr: String,
    pub state_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Finished {
    /// The VM's config as the host sees it now (with the tether's write-backs).
    pub fn config(&self) -> guestinfo::ContainerConfig {
        vm::load_config(&self.outcome.dir).expect("config of a finished VM")
    }

    /// The tether's debug log, for failure messages.
    pub fn debug_log(&self) -> String {
        std::fs::read_to_string(self.outcome.dir.join("tether.debug")).unwrap_or_default()
    }

    /// Panics with the run's details unless it exited normally (not killed at the timeout).
    pub fn assert_clean_power_off(&self) {
        assert!(!self.outcome.timed_out, "VM did not power off by itself; debug log:\n{}", self.debug_log());
    }
}

/// Runs `command` in a new VM from `image` and waits for it to power off.
pub fn run(image: &str, command: &[&str]) -> Finished {
    run_with(RunOptions::new(image, command))
}

/// Runs a VM with full options.
pub fn run_with(mut opts: RunOptions) -> Finished {
    let tmp = tempfile::Builder::new().prefix("e2e").tempdir_in("/tmp").expect("temp dir");
    let state = State::open(tmp.path()).expect("state dir");
    if opts.timeout > VM_TIMEOUT {
        opts.timeout = VM_TIMEOUT;
    }
    let mut out = Captured::default();
    let outcome = vm::run(&state, opts, &mut out).expect("harness run");
    Finished {
        outcome,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        state_dir: tmp.path().to_owned(),
        _tmp: tmp,
    }
}

/// The `vch` binary of this workspace (scripts/test builds it). Missing is a failure, not a
/// reason to skip.
pub fn vch_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vch");
    assert!(p.is_file(), "{} is missing: build it with `cargo build -p qemu-harness --bin vch`", p.display());
    p
}

/// Runs `vch` with a state directory; returns (exit code, stdout, stderr).
pub fn vch(state_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vch_binary()).arg("--state").arg(state_dir).args(args).output().expect("run vch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
