//! `vch run busybox echo hello` prints hello and exits 0, through the real command.

use e2e::vch;

#[test]
fn vch_run_busybox_echo_prints_hello() {
    let state = tempfile::Builder::new()
        .prefix("e2e")
        .tempdir_in("/tmp")
        .unwrap();
    let (code, stdout, stderr) = vch(
        state.path(),
        &["run", "--timeout", "90", "busybox", "echo", "hello"],
    );
    assert_eq!(stdout, "hello\n", "stderr: {stderr}");
    assert_eq!(code, 0, "stderr: {stderr}");
    let (_, ps, _) = vch(state.path(), &["ps", "-a"]);
    assert!(ps.contains("Exited (0)"), "ps -a:\n{ps}");
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let r = e2e::run(
        "busybox",
        &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
    );
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "to-out\nmore-out\n");
    assert_eq!(r.stderr, "to-err\n");
    assert_eq!(r.outcome.exit_code, 0);
}
