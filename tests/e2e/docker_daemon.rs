//! The endpoint itself: one daemon per state directory, a restart that finds the running
//! containers again, bad requests answered clearly, clients that go away leaving nothing
//! behind, TCP only on loopback unless TLS with client certificates is on.

use std::process::Command;
use std::time::Duration;

use e2e::docker::{eventually, Daemon};

#[test]
fn a_restarted_daemon_serves_the_running_containers_again() {
    let mut d = Daemon::start();
    // A second daemon on the same state directory is refused, and the first goes on.
    let second = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(d.state.path())
        .arg("daemon")
        .output()
        .expect("run a second daemon");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another daemon serves"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(d.alive());

    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "keep",
        "busybox",
        "sh",
        "-c",
        "echo started; sleep 600",
    ]);
    assert_eq!(d.stop(), Some(0), "SIGTERM ends the daemon cleanly");
    // The container's VM runs on without the daemon.
    let ps = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(d.state.path())
        .args(["ps", "-q"])
        .output()
        .expect("vch ps");
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), id);
    d.restart();
    assert_eq!(
        d.ok(&["ps", "--format", "{{.Names}} {{.State}}"]),
        "keep running"
    );
    let (code, out, _) = d.docker(&["exec", "keep", "echo", "still here"]);
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    assert_eq!(d.ok(&["logs", "keep"]), "started");
    // The wait of a restarted daemon sees the exit.
    let mut wait = d.spawn(&["wait", "keep"]);
    std::thread::sleep(Duration::from_millis(500));
    d.ok(&["stop", "-t", "1", "keep"]);
    assert_eq!(
        wait.expect_line("143", Duration::from_secs(30)).as_deref(),
        Some("143")
    );
}

#[test]
fn bad_requests_get_clear_answers_and_leave_nothing_behind() {
    let d = Daemon::start();
    let raw = |req: &str| d.raw(req.as_bytes(), Duration::from_secs(5));
    let r = raw("POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"Image\"");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("invalid JSON"), "{r}");
    let r = raw("POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"Image\":\"busybox\",\"Cmd\":[\"true\"],\"X\":1}");
    assert!(
        r.starts_with("HTTP/1.1 201"),
        "unknown fields are ignored: {r}"
    );
    let r = raw("GET /v1.41/no/such/thing HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = raw("GET /v1.99/info HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.contains("too new"), "{r}");
    let r = raw("GET /containers/json?all=maybe HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A body far over the limit: 413, and the daemon answers the next request.
    let mut big = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8388608\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b' ', 8 << 20));
    let r = d.raw(&big, Duration::from_secs(10));
    assert!(r.starts_with("HTTP/1.1 413"), "{}", &r[..r.len().min(200)]);
    // Garbage instead of HTTP.
    let r = d.raw(b"\x16\x03\x01\x00garbage\r\n\r\n", Duration::from_secs(5));
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(
        d.ok(&["version", "--format", "{{.Server.APIVersion}}"]),
        "1.41"
    );

    // Clients that go away mid-wait and mid-logs: the daemon's tasks for them end.
    d.ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "600"]);
    let before = d.streams();
    let mut wait = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    std::io::Write::write_all(
        &mut wait,
        b"POST /v1.41/containers/sleeper/wait?condition=next-exit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("send");
    let mut logs = d.spawn(&["logs", "-f", "sleeper"]);
    assert!(
        eventually(Duration::from_secs(10), || d.streams() == before + 2),
        "two streams open"
    );
    drop(wait);
    logs.kill();
    assert!(
        eventually(Duration::from_secs(10), || d.streams() == before),
        "abandoned wait and logs left tasks behind: {}",
        d.streams()
    );
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as dockerd's TLS
/// guide makes them.
fn certificates(dir: &std::path::Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=e2e CA",
        ],
        dir,
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{who}-key.pem"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &format!("{who}-cert.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
            dir,
        );
    }
    // The client's files under the names docker looks for in DOCKER_CERT_PATH.
    let client = dir.join("client");
    std::fs::create_dir_all(&client).expect("mkdir");
    std::fs::copy(dir.join("ca.pem"), client.join("ca.pem")).expect("copy");
    std::fs::copy(dir.join("client-cert.pem"), client.join("cert.pem")).expect("copy");
    std::fs::copy(dir.join("client-key.pem"), client.join("key.pem")).expect("copy");
}

#[test]
fn tcp_needs_loopback_or_tls_with_client_certificates() {
    let state = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let refused = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(state.path())
        .args(["daemon", "-H", &format!("tcp://0.0.0.0:{port}")])
        .output()
        .expect("run daemon");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs --tlsverify"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let certs = tempfile::tempdir().expect("temp dir");
    certificates(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    let mut daemon = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(state.path())
        .args([
            "daemon",
            "-H",
            &format!("tcp://0.0.0.0:{port}"),
            "--tlsverify",
        ])
        .args([
            "--tlscacert",
            &c("ca.pem"),
            "--tlscert",
            &c("server-cert.pem"),
            "--tlskey",
            &c("server-key.pem"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start TLS daemon");
    let config = tempfile::tempdir().expect("temp dir");
    let docker = |tls: bool| {
        let mut cmd = Command::new(e2e::docker::client(e2e::docker::DEBIAN_CLIENT));
        cmd.env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
            .env("DOCKER_CONFIG", config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION");
        if tls {
            cmd.env("DOCKER_TLS_VERIFY", "1")
                .env("DOCKER_CERT_PATH", certs.path().join("client"));
        } else {
            cmd.env_remove("DOCKER_TLS_VERIFY");
        }
        cmd.args(["version", "--format", "{{.Server.APIVersion}}"])
            .output()
            .expect("run docker")
    };
    assert!(
        eventually(Duration::from_secs(30), || docker(true).status.success()),
        "docker --tlsverify could not reach the daemon"
    );
    assert_eq!(String::from_utf8_lossy(&docker(true).stdout).trim(), "1.41");
    // Plain HTTP, and TLS without a client certificate, are both refused.
    assert!(!docker(false).status.success());
    let no_cert = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &c("ca.pem"),
            &format!("https://127.0.0.1:{port}/_ping"),
        ])
        .output()
        .expect("curl");
    assert!(
        !no_cert.status.success(),
        "a client without a certificate got in"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}
