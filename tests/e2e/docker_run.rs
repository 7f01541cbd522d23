//! `docker run` against the VCH's endpoint: the real docker client creates, attaches to,
//! starts and waits for a container VM, and exits as docker does.

use e2e::docker::Daemon;

#[test]
fn docker_run_keeps_streams_apart_and_exits_with_the_code() {
    let d = Daemon::start();
    let (code, out, err) = d.docker(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(code, 3, "stderr: {err}\ndaemon log:\n{}", d.log());
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    // --rm: the server removed it (the client never sends DELETE).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !d.ok(&["ps", "-aq"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "--rm container was not removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn docker_run_fails_as_docker_does() {
    let d = Daemon::start();
    // No such image: the client tries to pull, which this VCH refuses clearly: 125.
    let (code, _, err) = d.docker(&["run", "--rm", "nosuchimage:1.0", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("Unable to find image 'nosuchimage:1.0' locally"),
        "{err}"
    );
    assert!(err.contains("no registry to pull from"), "{err}");
    // No such command: 127 with docker's words.
    let (code, _, err) = d.docker(&["run", "--rm", "busybox", "nosuchcmd"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    // Not executable: 126.
    let (code, _, err) = d.docker(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    // An unknown container: exit 1 and docker's message.
    let (code, _, err) = d.docker(&["logs", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such container: nosuch"), "{err}");
    let (code, _, err) = d.docker(&["inspect", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such object: nosuch"), "{err}");
    // A name taken: 409; `create` exits 1, `run` 125.
    d.ok(&["create", "--name", "taken", "busybox", "true"]);
    let (code, _, err) = d.docker(&["create", "--name", "taken", "busybox", "true"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("The container name \"/taken\" is already in use"),
        "{err}"
    );
    let (code, _, err) = d.docker(&["run", "--name", "taken", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn both_docker_clients_drive_the_endpoint() {
    let d = Daemon::start();
    for client in [e2e::docker::DEBIAN_CLIENT, e2e::docker::NEW_CLIENT] {
        let c = e2e::docker::client(client);
        let (code, out, err) =
            d.docker_with(&c, &["version", "--format", "{{.Server.APIVersion}}"], None);
        assert_eq!((code, out.trim()), (0, "1.41"), "{client}: {err}");
        let (code, out, err) = d.docker_with(
            &c,
            &[
                "run",
                "--rm",
                "busybox",
                "sh",
                "-c",
                "echo hi from $(hostname | cut -c1-3); exit 7",
            ],
            None,
        );
        assert_eq!(code, 7, "{client}: {err}");
        assert!(out.starts_with("hi from "), "{client}: {out}");
        let (code, out, err) = d.docker_with(
            &c,
            &["run", "-i", "--rm", "busybox", "wc", "-c"],
            Some(b"12345"),
        );
        assert_eq!((code, out.trim()), (0, "5"), "{client}: {err}");
    }
}
