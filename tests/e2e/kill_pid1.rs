//! Signals sent to PID 1 by the workload do nothing: `kill -9 1` or `kill 1` cannot stop the VM.

#[test]
fn kill_minus_9_one_leaves_the_vm_running() {
    let r = e2e::run(
        "busybox",
        &[
            "sh",
            "-c",
            "kill -9 1; kill 1; kill -INT 1; kill -USR1 1; kill -PWR 1; sleep 1; echo still-alive",
        ],
    );
    r.assert_clean_power_off();
    assert_eq!(
        r.stdout,
        "still-alive\n",
        "stderr: {}\ndebug:\n{}",
        r.stderr,
        r.debug_log()
    );
    assert_eq!(r.outcome.exit_code, 0);
}
