//! The real docker client against our endpoint: a `vch daemon` on a private state directory,
//! the client pointed at its socket only (never at a dockerd this machine may run).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pty::Terminal;
use crate::vch_binary;

/// How long one docker command may take before the test gives up on it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// Debian 12's client (API 1.41), which `scripts/setup` installs with the `docker.io`
/// package.
pub const DEBIAN_CLIENT: &str = "/usr/bin/docker";
/// The newer static client these machines carry (API 1.50, negotiates down).
pub const NEW_CLIENT: &str = "/usr/local/bin/docker";

/// A client binary that must exist (a missing one fails the scenario, it does not skip it).
pub fn client(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: scripts/setup installs Debian's docker.io client"
    );
    p
}

/// A `vch daemon` serving a private state directory; stopped (and every container VM in it
/// removed) on drop.
#[derive(Debug)]
pub struct Daemon {
    pub state: tempfile::TempDir,
    config: tempfile::TempDir,
    child: Option<Child>,
    /// `unix://…/docker.sock`.
    pub host: String,
    /// The client `docker()` runs.
    pub client: PathBuf,
}

impl Daemon {
    /// Starts a daemon on a new state directory and waits until it answers.
    pub fn start() -> Daemon {
        let state = tempfile::Builder::new()
            .prefix("e2e-docker")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let config = tempfile::tempdir().expect("temp dir");
        let host = format!("unix://{}", state.path().join("docker.sock").display());
        let mut d = Daemon {
            state,
            config,
            child: None,
            host,
            client: client(DEBIAN_CLIENT),
        };
        d.restart();
        d
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon process (again), waiting until its socket answers `_ping`.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.state.path().join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(vch_binary())
            .arg("--state")
            .arg(self.state.path())
            .args(["daemon", "--container-timeout", "300"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start vch daemon");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let (code, _, _) = self.docker(&["version", "--format", "{{.Server.APIVersion}}"]);
            if code == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vch daemon did not answer; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon (SIGTERM, as a user or init would), waiting for it to exit;
    /// returns its exit code. Containers keep running.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Whether the daemon process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The environment that points a docker client at this daemon and nowhere else.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.host.clone()),
            (
                "DOCKER_CONFIG".into(),
                self.config.path().display().to_string(),
            ),
            ("DOCKER_CONTEXT".into(), "default".into()),
            ("DOCKER_CLI_HINTS".into(), "false".into()),
        ]
    }

    fn command(&self, client: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(client);
        c.args(args)
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION")
            .envs(self.env());
        c
    }

    /// `docker ARGS` with the default client: (exit code, stdout, stderr).
    pub fn docker(&self, args: &[&str]) -> (i32, String, String) {
        self.docker_with(&self.client.clone(), args, None)
    }

    /// `docker ARGS` with a given client and optional stdin.
    pub fn docker_with(
        &self,
        client: &Path,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> (i32, String, String) {
        let mut child = self
            .command(client, args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let out = wait_output(child, CLIENT_TIMEOUT);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `docker ARGS` that must succeed: its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.docker(args);
        assert_eq!(
            code,
            0,
            "docker {args:?} failed: {err}\ndaemon log:\n{}",
            self.log()
        );
        out.trim().to_owned()
    }

    /// `docker ARGS` in the background with its stdout read line by line.
    pub fn spawn(&self, args: &[&str]) -> crate::Attached {
        let child = self
            .command(&self.client, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        crate::Attached::from_child(child)
    }

    /// `docker ARGS` on a pseudo-terminal of `rows` x `cols`.
    pub fn pty(&self, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let mut c = self.command(&self.client, args);
        c.env("TERM", "xterm");
        Terminal::spawn(c, rows, cols)
    }

    /// The daemon's raw HTTP endpoint (for requests the client never sends).
    pub fn socket(&self) -> PathBuf {
        self.state.path().join("docker.sock")
    }

    /// Sends raw bytes to the API socket; returns what came back within `limit`.
    pub fn raw(&self, request: &[u8], limit: Duration) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).expect("connect");
        s.set_read_timeout(Some(limit)).expect("timeout");
        // The server may answer (413) and close before all of a big request went out.
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Tasks the daemon runs for clients (`NGoroutines` of `docker info`).
    pub fn streams(&self) -> usize {
        self.ok(&["info", "--format", "{{.NGoroutines}}"])
            .parse()
            .expect("NGoroutines is a number")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Every VM of this state directory goes, whatever the scenario left behind.
        let _ = Command::new(vch_binary())
            .arg("--state")
            .arg(self.state.path())
            .args(["ps", "-q"])
            .output()
            .map(|o| {
                let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new(vch_binary())
                        .arg("--state")
                        .arg(self.state.path())
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            });
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes; whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn wait_output(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}
