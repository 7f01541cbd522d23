//! A command that is not in the image fails at once with the original's message and 127, and
//! the VM powers off instead of hanging.

use e2e::vch;

#[test]
fn missing_binary_reports_started_error_and_127() {
    let r = e2e::run("busybox", &["nosuchcmd", "arg"]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.started, "nosuchcmd: no such executable in PATH");
    assert_eq!(r.outcome.exit_code, 127);
    let r = e2e::run("busybox", &["/not/there"]);
    r.assert_clean_power_off();
    assert_eq!(
        r.outcome.started,
        "stat /not/there: no such file or directory"
    );
    assert_eq!(r.outcome.exit_code, 127);
}

#[test]
fn vch_says_why_and_exits_127() {
    let state = tempfile::Builder::new()
        .prefix("e2e")
        .tempdir_in("/tmp")
        .unwrap();
    let (code, stdout, stderr) = vch(
        state.path(),
        &["run", "--timeout", "90", "busybox", "nosuchcmd"],
    );
    assert_eq!(code, 127, "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("failed to start: nosuchcmd: no such executable in PATH"),
        "stderr: {stderr}"
    );
}

#[test]
fn missing_image_is_a_clear_error() {
    let state = tempfile::Builder::new()
        .prefix("e2e")
        .tempdir_in("/tmp")
        .unwrap();
    let (code, _, stderr) = vch(
        state.path(),
        &["run", "--timeout", "120", "/no/such/rootfs", "true"],
    );
    assert_eq!(code, 125);
    assert!(
        stderr.contains("image \"/no/such/rootfs\" not found"),
        "stderr: {stderr}"
    );
}
