//! Signals reach the container's process (`vch kill -s`, and the `signal` channel request
//! the original left out); `vch stop` gives a grace period and then SIGKILLs a process that
//! ignores its stop signal.

use std::time::{Duration, Instant};

#[test]
fn kill_with_a_signal_reaches_a_trap() {
    let vch = e2e::Vch::new();
    vch.run_detached(&[
        "--name",
        "trap",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got USR1' USR1; echo ready; while true; do sleep 0.2; done",
    ]);
    assert!(vch.wait_until(Duration::from_secs(60), || vch
        .cmd(&["logs", "trap"])
        .1
        .contains("ready")));
    let (code, _, err) = vch.cmd(&["kill", "-s", "USR1", "trap"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        vch.wait_until(Duration::from_secs(30), || vch
            .cmd(&["logs", "trap"])
            .1
            .contains("got USR1")),
        "the trap did not run"
    );
    assert_eq!(vch.inspect("trap")["State"], "Up");
}

#[test]
fn stop_with_grace_and_with_an_ignoring_process() {
    let vch = e2e::Vch::new();
    vch.run_detached(&[
        "--name",
        "polite",
        "busybox",
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.2; done",
    ]);
    vch.run_detached(&[
        "--name",
        "stubborn",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do sleep 0.2; done",
    ]);
    for n in ["polite", "stubborn"] {
        assert!(vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", n])
            .1
            .contains("ready")));
    }
    let t = Instant::now();
    assert_eq!(vch.cmd(&["stop", "-t", "20", "polite"]).0, 0);
    let polite = t.elapsed();
    assert!(
        polite < Duration::from_secs(15),
        "a process that exits on TERM must not wait for the grace period ({polite:?})"
    );
    assert!(vch.cmd(&["logs", "polite"]).1.contains("bye"));
    assert_eq!(vch.inspect("polite")["State"], "Exited (0)");

    let t = Instant::now();
    assert_eq!(vch.cmd(&["stop", "-t", "3", "stubborn"]).0, 0);
    let stubborn = t.elapsed();
    assert!(
        stubborn >= Duration::from_secs(3),
        "SIGKILL came before the grace period ended ({stubborn:?})"
    );
    assert!(stubborn < Duration::from_secs(25), "stop took {stubborn:?}");
    assert_eq!(vch.inspect("stubborn")["State"], "Exited (137)");
}
