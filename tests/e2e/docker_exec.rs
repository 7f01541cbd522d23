//! `docker exec` into a container VM: exit codes, piped stdin, a terminal of the right size,
//! detached execs.

use std::time::Duration;

use e2e::docker::Daemon;

#[test]
fn docker_exec_codes_stdin_tty_and_detach() {
    let d = Daemon::start();
    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    let (code, out, err) = d.docker(&[
        "exec",
        "box",
        "sh",
        "-c",
        "echo in exec; echo oops >&2; exit 4",
    ]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (4, "in exec\n", "oops\n")
    );
    // -i: piped stdin reaches the process, and its end closes the process's stdin.
    let c = d.client.clone();
    let (code, out, err) = d.docker_with(
        &c,
        &["exec", "-i", "box", "sh", "-c", "wc -l"],
        Some(b"a\nb\nc\n"),
    );
    assert_eq!((code, out.trim()), (0, "3"), "{err}");
    // -t under a terminal: the process sees the client's terminal size.
    let mut pty = d.pty(&["exec", "-t", "box", "stty", "size"], 33, 77);
    assert_eq!(
        pty.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        pty.screen()
    );
    assert!(
        pty.screen().contains("33 77"),
        "terminal size: {:?}",
        pty.screen()
    );
    // -d: runs on its own.
    d.ok(&["exec", "-d", "box", "sh", "-c", "echo detached > /tmp/mark"]);
    assert!(
        e2e::docker::eventually(Duration::from_secs(30), || {
            d.docker(&["exec", "box", "cat", "/tmp/mark"]).1 == "detached\n"
        }),
        "detached exec did not run"
    );
    // A command that does not exist: docker's 127 and words; a stopped container: 1.
    let (code, _, err) = d.docker(&["exec", "box", "nosuchcmd"]);
    assert_eq!(code, 127, "{err}");
    d.ok(&["stop", "-t", "1", "box"]);
    let (code, _, err) = d.docker(&["exec", "box", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not running"), "{err}");
}
