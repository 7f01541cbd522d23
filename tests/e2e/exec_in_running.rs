//! `vch exec` runs commands in a running container: exit codes propagate, a missing binary
//! fails fast with 127, execs run in a cgroup beside the container's, stdin can be piped and
//! its end closes the process's stdin, and an output larger than what a client may fall
//! behind arrives whole.

use std::time::Duration;

fn sleeper(vch: &e2e::Vch, name: &str) {
    vch.run_detached(&["--name", name, "busybox", "sleep", "600"]);
}

#[test]
fn exec_true_false_and_missing_binary() {
    let vch = e2e::Vch::new();
    sleeper(&vch, "ex");
    assert_eq!(vch.cmd(&["exec", "ex", "true"]).0, 0);
    assert_eq!(vch.cmd(&["exec", "ex", "false"]).0, 1);
    let (code, out, _) = vch.cmd(&["exec", "ex", "sh", "-c", "echo $((6*7)); exit 5"]);
    assert_eq!((code, out.as_str()), (5, "42\n"));
    let start = std::time::Instant::now();
    let (code, _, err) = vch.cmd(&["exec", "ex", "nosuchcmd"]);
    assert_eq!(code, 127, "stderr: {err}");
    assert!(
        err.contains("nosuchcmd: no such executable in PATH"),
        "stderr: {err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "a missing binary must fail fast"
    );
    // Execs see the container's environment and can be given their own.
    let (_, out, _) = vch.cmd(&[
        "exec",
        "-e",
        "X=y",
        "-w",
        "/tmp",
        "-u",
        "user",
        "ex",
        "sh",
        "-c",
        "echo $X $(pwd) $(id -un) $PATH",
    ]);
    assert_eq!(
        out,
        "y /tmp user /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    // The container's processes and its execs each run in a cgroup of their own (the CPU
    // is shared per cgroup: a fork bomb in one cannot starve the tether or an exec), the
    // tether (PID 1) outside both.
    let (_, out, err) = vch.cmd(&[
        "exec",
        "ex",
        "sh",
        "-c",
        "cat /proc/self/cgroup /proc/$(pidof sleep)/cgroup /proc/1/cgroup",
    ]);
    assert_eq!(out, "0::/exec\n0::/container\n0::/\n", "stderr: {err}");
    // Exec output is in the container's output log too.
    let log = std::fs::read(
        vch.dir
            .path()
            .join("vms")
            .join(&vch.inspect("ex")["Id"].as_str().unwrap()[..12])
            .join("output.log"),
    )
    .unwrap();
    assert!(
        log.windows(3).any(|w| w == b"42\n"),
        "exec output missing from output.log"
    );
}

#[test]
fn stdin_is_piped_and_closed() {
    let vch = e2e::Vch::new();
    sleeper(&vch, "in");
    let (code, out, err) = vch.cmd_with_input(&["exec", "-i", "in", "cat"], b"data\nmore data\n");
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "data\nmore data\n");
    let (code, out, _) =
        vch.cmd_with_input(&["exec", "-i", "in", "wc", "-c"], &vec![b'x'; 1_000_000]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "1000000");
}

/// An exec's output far beyond the 4 MiB an attached client may fall behind arrives whole:
/// a client slower than the process (the back-channel's cipher under TCG) is waited for,
/// not detached.
#[test]
fn exec_output_larger_than_the_client_budget_arrives_whole() {
    let vch = e2e::Vch::new();
    sleeper(&vch, "big");
    let (code, out, err) = vch.cmd(&["exec", "big", "head", "-c", "16777216", "/dev/zero"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out.len(), 16 << 20, "stderr: {err}");
}
