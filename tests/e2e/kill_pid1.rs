//! Signals a container's processes send to PID 1 (the tether) do not disturb the container.
//! The tether handles two: SIGHUP (a config reload, the original's path from the toolbox)
//! and SIGCHLD (reaping); the kernel drops every other signal a process sends to PID 1
//! without a handler, SIGKILL included. After a storm of them the container keeps running,
//! its process was launched once, exits and execs still report their own status, and a stop
//! works as ever.

use std::time::Duration;

use e2e::Vch;

const STORM: &str = "echo launched; \
    i=0; while [ $i -lt 300 ]; do kill -CHLD 1; i=$((i+1)); done; \
    for s in HUP HUP TERM INT USR1 USR2 PWR QUIT KILL; do kill -$s 1; done; \
    echo stormed; exec sleep 600";

#[test]
fn signals_to_pid1_from_inside_leave_the_container_alone() {
    let vch = Vch::new();
    let id = vch.run_detached(&["--name", "pid1", "busybox", "sh", "-c", STORM]);
    let logs = || vch.cmd(&["logs", "pid1"]).1;
    assert!(
        vch.wait_until(Duration::from_secs(60), || logs().contains("stormed")),
        "the storm did not finish: {:?}",
        vch.cmd(&["logs", "pid1"])
    );
    // Reloads relaunch nothing: one launch, no resurrection, still up.
    let (code, out, err) = vch.cmd(&[
        "exec",
        "pid1",
        "sh",
        "-c",
        "kill -HUP 1; kill -CHLD 1; kill -TERM 1; echo exec-ok",
    ]);
    assert_eq!((code, out.as_str()), (0, "exec-ok\n"), "{err}");
    // The exec went through a reload after the signals', so any relaunch has begun; its
    // first line would follow within moments.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(logs(), "launched\nstormed\n");
    let doc = vch.inspect("pid1");
    assert_eq!(doc["State"], "Up", "{doc}");
    assert_eq!(
        doc["Config"]["sessions"][&id]["diagnostics"]["resurrection_count"].as_i64(),
        Some(0)
    );

    // The reaper still hands every exit to its owner: an exec's status, an orphan left
    // behind by an exec, and then the container's own exit on stop.
    let (code, _, err) = vch.cmd(&[
        "exec",
        "pid1",
        "sh",
        "-c",
        "(sleep 0.3; kill -CHLD 1) & exit 5",
    ]);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = vch.cmd(&["exec", "pid1", "sh", "-c", "sleep 0.5; exit 6"]);
    assert_eq!(code, 6, "{err}");
    let (code, _, err) = vch.cmd(&["stop", "-t", "5", "pid1"]);
    assert_eq!(code, 0, "{err}");
    // `exec sleep` made sleep the session's process; the stop signal (TERM) ends it.
    assert_eq!(vch.inspect("pid1")["State"], "Exited (143)");
}
