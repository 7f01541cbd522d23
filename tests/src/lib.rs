//! Shared helpers for the end-to-end scenarios: boot a container VM with the harness in a
//! private state directory and look at it the way a user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub mod docker;
pub mod faults;
pub mod pty;

use qemu_harness::state::State;
use qemu_harness::vm::{self, Captured};
pub use qemu_harness::vm::{RunOptions, RunOutcome};

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
        assert!(
            !self.outcome.timed_out,
            "VM did not power off by itself; debug log:\n{}",
            self.debug_log()
        );
    }
}

/// Runs `command` in a new VM from `image` and waits for it to power off.
pub fn run(image: &str, command: &[&str]) -> Finished {
    run_with(RunOptions::new(image, command))
}

/// Runs a VM with full options.
pub fn run_with(mut opts: RunOptions) -> Finished {
    let tmp = tempfile::Builder::new()
        .prefix("e2e")
        .tempdir_in("/tmp")
        .expect("temp dir");
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
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p qemu-harness --bin vch`",
        p.display()
    );
    p
}

/// The `--timeout` the helpers give a `vch run` that names none: a scenario that hangs
/// fails after minutes instead of vch's default hour.
pub const RUN_TIMEOUT_SECS: &str = "300";

/// `args` with `--timeout RUN_TIMEOUT_SECS` after `run` unless the caller gave one.
pub fn with_run_timeout<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut full = args.to_vec();
    if args.first() == Some(&"run") && !args.iter().any(|a| a.starts_with("--timeout")) {
        full.splice(1..1, ["--timeout", RUN_TIMEOUT_SECS]);
    }
    full
}

/// Runs `vch` with a state directory; returns (exit code, stdout, stderr).
pub fn vch(state_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vch_binary())
        .arg("--state")
        .arg(state_dir)
        .args(with_run_timeout(args))
        .output()
        .expect("run vch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A private `vch` state directory for one scenario; every VM still running in it is
/// removed (`vch rm -f`) when the scenario ends, pass or fail.
#[derive(Debug)]
pub struct Vch {
    pub dir: tempfile::TempDir,
}

impl Default for Vch {
    fn default() -> Self {
        Self::new()
    }
}

impl Vch {
    pub fn new() -> Vch {
        Vch {
            dir: tempfile::Builder::new()
                .prefix("e2e")
                .tempdir_in("/tmp")
                .expect("temp dir"),
        }
    }

    /// Runs `vch ARGS` to completion: (exit code, stdout, stderr).
    pub fn cmd(&self, args: &[&str]) -> (i32, String, String) {
        vch(self.dir.path(), args)
    }

    /// Runs `vch ARGS` with `input` on stdin.
    pub fn cmd_with_input(&self, args: &[&str], input: &[u8]) -> (i32, String, String) {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(vch_binary())
            .arg("--state")
            .arg(self.dir.path())
            .args(with_run_timeout(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vch");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        let out = wait_with_timeout(child, Duration::from_secs(120));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `vch ARGS` in the background with piped output (killed on drop of the child
    /// if the test forgets it: see [`Attached`]).
    pub fn spawn(&self, args: &[&str]) -> Attached {
        use std::process::Stdio;
        let child = Command::new(vch_binary())
            .arg("--state")
            .arg(self.dir.path())
            .args(with_run_timeout(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vch");
        Attached::new(child)
    }

    /// `vch run -d ARGS` (with a `--timeout` unless ARGS give one): the container ID.
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut full = vec!["run", "-d"];
        full.extend_from_slice(args);
        let (code, out, err) = self.cmd(&full);
        assert_eq!(code, 0, "vch run -d failed: {err}");
        out.trim().to_owned()
    }

    /// The container's config as `vch inspect` prints it.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let (code, out, err) = self.cmd(&["inspect", name]);
        assert_eq!(code, 0, "inspect: {err}");
        serde_json::from_str(&out).expect("inspect prints JSON")
    }

    /// Polls `check` every 100 ms until it returns true or `limit` passes.
    pub fn wait_until(&self, limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Vch {
    fn drop(&mut self) {
        let (_, ps, _) = self.cmd(&["ps", "-q"]);
        let ids: Vec<&str> = ps.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.cmd(&args);
        }
    }
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// A background `vch` whose stdout is read line by line on a thread.
#[derive(Debug)]
pub struct Attached {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Attached {
    /// Reads a started process's stdout line by line.
    pub fn from_child(child: std::process::Child) -> Attached {
        Attached::new(child)
    }

    fn new(mut child: std::process::Child) -> Attached {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Attached {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for the process to end (bounded) and returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real NFS server on this machine (nfs-ganesha with its VFS backend, NFSv3 and v4 over
/// TCP), exporting a fresh directory, for volume scenarios. Guests reach it through QEMU
/// user networking's host address. Stopped on drop.
#[derive(Debug)]
pub struct NfsServer {
    pub export: PathBuf,
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// Held while the server runs: its ports are fixed, so scenarios take turns.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Ports the test server listens on (fixed: NFSv3 clients learn them from rpcbind, and only
/// one scenario runs a server at a time).
pub const NFS_PORT: u16 = 20490;

/// Whose turn it is to run the NFS server.
static NFS_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl NfsServer {
    /// Starts rpcbind if it is not running (ganesha registers its v3 services there), then
    /// ganesha in the foreground, and waits until it accepts connections.
    pub fn start() -> NfsServer {
        // A scenario that failed while holding the turn poisons it; the server is gone all
        // the same.
        let turn = NFS_TURN.lock().unwrap_or_else(|p| p.into_inner());
        let rpcbind_up = std::process::Command::new("rpcinfo")
            .arg("-p")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !rpcbind_up {
            let ok = std::process::Command::new("rpcbind")
                .arg("-w")
                .status()
                .expect("rpcbind (apt package rpcbind) must be installed")
                .success();
            assert!(ok, "rpcbind failed to start");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let export = dir.path().join("export");
        std::fs::create_dir_all(&export).expect("export dir");
        let conf = dir.path().join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                r#"NFS_CORE_PARAM {{
    Protocols = 3, 4;
    NFS_Port = {NFS_PORT};
    MNT_Port = {mnt};
    NLM_Port = {nlm};
    Enable_RQUOTA = false;
    Bind_addr = 127.0.0.1;
}}
NFSV4 {{ Graceless = true; }}
EXPORT {{
    Export_Id = 1;
    Path = {e};
    Pseudo = {e};
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
"#,
                mnt = NFS_PORT + 1,
                nlm = NFS_PORT + 2,
                e = export.display()
            ),
        )
        .expect("write ganesha.conf");
        let child = std::process::Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-L")
            .arg(dir.path().join("ganesha.log"))
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path().join("ganesha.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ganesha.nfsd (apt packages nfs-ganesha nfs-ganesha-vfs) must be installed");
        let server = NfsServer {
            export,
            dir,
            child,
            _turn: turn,
        };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", NFS_PORT)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "NFS server did not start; log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default()
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vch {
    /// The image file of a disk volume in this state directory.
    pub fn volume_disk(&self, name: &str) -> PathBuf {
        qemu_harness::volume::VolumeStore::new(self.dir.path()).disk_path(name)
    }

    /// A file of a disk volume as the container sees it (under the volume's
    /// `.vic.vol.data`), read from the image without mounting it; `None` if absent.
    /// The VM must have powered off (the image is written back when QEMU exits).
    pub fn volume_file(&self, name: &str, path: &str) -> Option<Vec<u8>> {
        read_volume_file(&self.volume_disk(name), path)
    }
}

/// Reads `path` (relative to the volume's root as mounted in a container, i.e. under
/// `.vic.vol.data`) from a volume image with debugfs; `None` if the file does not exist.
pub fn read_volume_file(disk: &Path, path: &str) -> Option<Vec<u8>> {
    let inside = format!(
        "/{}/{}",
        qemu_harness::volume::DATA_DIR,
        path.trim_start_matches('/')
    );
    let exists = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{inside}\""))
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    if !String::from_utf8_lossy(&exists.stdout).contains("Inode:") {
        return None;
    }
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{inside}\""))
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    Some(out.stdout)
}

/// Writes a file into a volume image (under `.vic.vol.data`) with debugfs, without
/// mounting it: seeds a volume before a container uses it. The volume must not be attached
/// to a running VM. Parent directories must exist.
pub fn write_volume_file(disk: &Path, path: &str, contents: &[u8]) {
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(tmp.path(), contents).expect("write temp file");
    let inside = format!(
        "/{}/{}",
        qemu_harness::volume::DATA_DIR,
        path.trim_start_matches('/')
    );
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} \"{inside}\"", tmp.path().display()))
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("rror"),
        "debugfs write {inside}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory image: a copy of the built-in busybox image plus `files` (path inside the
/// image ⇒ contents), with `dirs` (path ⇒ uid, gid, mode) created or re-owned. Lives as long
/// as the returned guard.
pub fn busybox_image_with(
    files: &[(&str, &[u8])],
    dirs: &[(&str, u32, u32, u32)],
) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let base = qemu_harness::image::rootfs("busybox", &qemu_harness::artifacts::cache_dir())
        .expect("busybox image");
    let tmp = tempfile::Builder::new()
        .prefix("e2e-image")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let root = tmp.path().join("rootfs");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&root)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copy busybox image");
    for (path, uid, gid, mode) in dirs {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&p).expect("mkdir in image");
        std::os::unix::fs::chown(&p, Some(*uid), Some(*gid)).expect("chown in image");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
    for (path, contents) in files {
        let p = root.join(path.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir in image");
        }
        std::fs::write(&p, contents).expect("write in image");
    }
    (tmp, root)
}

/// `e2fsck -fn` on a volume image: (clean, report). Clean means no errors and no journal
/// left to replay, i.e. the guest unmounted it before power-off.
pub fn fsck_clean(disk: &Path) -> (bool, String) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let state = Command::new("dumpe2fs")
        .arg("-h")
        .arg(disk)
        .output()
        .expect("dumpe2fs");
    let header = String::from_utf8_lossy(&state.stdout).into_owned();
    // Exactly "clean": "not clean" and "clean with errors" also end in the word.
    let clean_state = header
        .lines()
        .filter_map(|l| l.strip_prefix("Filesystem state:"))
        .any(|state| state.trim() == "clean")
        && !header.contains("needs_recovery");
    (
        out.status.success() && clean_state,
        format!("{report}\n{header}"),
    )
}

pub use pty::Terminal;

impl Vch {
    /// Starts `vch ARGS` on a new `rows` x `cols` terminal.
    pub fn on_terminal(&self, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let mut cmd = Command::new(vch_binary());
        cmd.arg("--state")
            .arg(self.dir.path())
            .args(with_run_timeout(args));
        Terminal::spawn(cmd, rows, cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_files_without_a_vm() {
        let vch = Vch::new();
        let store = qemu_harness::volume::VolumeStore::new(vch.dir.path());
        store
            .create(&qemu_harness::volume::CreateVolume {
                name: "seeded".into(),
                size: Some(16 << 20),
                ..Default::default()
            })
            .expect("create volume");
        assert_eq!(vch.volume_file("seeded", "a.txt"), None);
        write_volume_file(&vch.volume_disk("seeded"), "a.txt", b"hello\n");
        assert_eq!(
            vch.volume_file("seeded", "/a.txt").as_deref(),
            Some(&b"hello\n"[..])
        );
    }

    /// dumpe2fs says "not clean" for a file system the guest never unmounted: that is not
    /// clean, though the line ends in the word.
    #[test]
    fn fsck_clean_refuses_a_not_clean_state() {
        let vch = Vch::new();
        let store = qemu_harness::volume::VolumeStore::new(vch.dir.path());
        store
            .create(&qemu_harness::volume::CreateVolume {
                name: "state".into(),
                size: Some(16 << 20),
                ..Default::default()
            })
            .expect("create volume");
        let disk = vch.volume_disk("state");
        let (clean, report) = fsck_clean(&disk);
        assert!(clean, "a fresh volume is clean:\n{report}");
        // What a kernel leaves in the superblock while the file system is mounted.
        let out = Command::new("debugfs")
            .args(["-w", "-R", "ssv state 0"])
            .arg(&disk)
            .output()
            .expect("debugfs (e2fsprogs) must be installed");
        assert!(out.status.success(), "{out:?}");
        let (clean, report) = fsck_clean(&disk);
        assert!(
            report.contains("Filesystem state:         not clean"),
            "{report}"
        );
        assert!(!clean, "a not-clean file system passed:\n{report}");
    }

    #[test]
    fn every_run_gets_a_timeout() {
        assert_eq!(
            with_run_timeout(&["run", "busybox", "true"]),
            ["run", "--timeout", RUN_TIMEOUT_SECS, "busybox", "true"]
        );
        // The caller's own timeout stays, in either spelling; other commands are untouched.
        assert_eq!(
            with_run_timeout(&["run", "--timeout", "5", "busybox", "true"]),
            ["run", "--timeout", "5", "busybox", "true"]
        );
        assert_eq!(
            with_run_timeout(&["run", "--timeout=5", "busybox"]),
            ["run", "--timeout=5", "busybox"]
        );
        assert_eq!(with_run_timeout(&["ps", "-a"]), ["ps", "-a"]);
        // A word of the command is no option.
        assert_eq!(
            with_run_timeout(&["run", "busybox", "echo", "timeout"]),
            [
                "run",
                "--timeout",
                RUN_TIMEOUT_SECS,
                "busybox",
                "echo",
                "timeout"
            ]
        );
    }
}

// ------------------------------------------------------------------ image scenarios

/// Image archives built offline and the Debian tarballs (the `image_*` scenarios).
pub mod images;
