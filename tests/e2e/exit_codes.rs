//! The container's exit code is the process's, and 128 + signal when a signal killed it.

#[test]
fn exit_code_42_propagates() {
    let r = e2e::run("busybox", &["sh", "-c", "exit 42"]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.started, "true");
    assert_eq!(r.outcome.exit_code, 42);
}

#[test]
fn killed_by_sigkill_is_137_and_sigterm_is_143() {
    let r = e2e::run("busybox", &["sh", "-c", "kill -KILL $$"]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 137, "debug log:\n{}", r.debug_log());
    let r = e2e::run("busybox", &["sh", "-c", "kill -TERM $$"]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 143, "debug log:\n{}", r.debug_log());
}
