//! Starting a private OpenSSH `sshd` on loopback for interop tests and the bench.
//! Shared by `tests/openssh.rs` and `examples/bench.rs` (included with `#[path]`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSH: &str = "/usr/bin/ssh";
pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sshproto-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails (does not skip) when an OpenSSH program is missing.
pub fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's openssh-client and openssh-server"
    );
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn keygen(dir: &Path, name: &str, ty: &str, bits: Option<u32>) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new(SSH_KEYGEN);
    cmd.args(["-q", "-N", "", "-t", ty, "-f"]).arg(&path);
    if let Some(b) = bits {
        cmd.args(["-b", &b.to_string()]);
    }
    let st = cmd.status().expect("run ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    path
}

/// A running sshd; killed on drop.
pub struct Sshd {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub host_ed25519: PathBuf,
    pub host_rsa: PathBuf,
    pub log: PathBuf,
}

impl Sshd {
    /// Starts sshd on a free loopback port, trusting `authorized` public key lines.
    pub fn start(authorized: &[String]) -> Sshd {
        Self::start_with(authorized, "")
    }

    /// Like `start`, with extra sshd_config lines.
    pub fn start_with(authorized: &[String], extra_config: &str) -> Sshd {
        require(SSHD);
        require(SSH_KEYGEN);
        // Privilege separation (sshd running as root) needs this directory; it is absent
        // in fresh containers. Best effort: a non-root sshd does not need it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = TempDir::new("sshd");
        let host_ed25519 = keygen(dir.path(), "host_ed25519", "ed25519", None);
        let host_rsa = keygen(dir.path(), "host_rsa", "rsa", Some(2048));
        let auth = dir.path().join("authorized_keys");
        std::fs::write(&auth, authorized.join("\n") + "\n").expect("write authorized_keys");
        let port = free_port();
        let log = dir.path().join("sshd.log");
        let cfg = dir.path().join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nHostKey {}\n\
                 HostKeyAlgorithms +ssh-rsa\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel DEBUG1\nMaxStartups 100\n{extra_config}\n",
                host_ed25519.display(),
                host_rsa.display(),
                auth.display(),
                dir.path().join("sshd.pid").display(),
            ),
        )
        .expect("write sshd_config");
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            child,
            port,
            dir,
            host_ed25519,
            host_rsa,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
