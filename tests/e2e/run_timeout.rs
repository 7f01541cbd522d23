//! `--timeout`: a VM still running when it passes is killed, and what the user sees says so
//! — the foreground run's message and exit code, and the container's state afterwards.

use std::time::{Duration, Instant};

use e2e::Vch;

/// The container's state as `vch inspect` and `vch ps -a` show it.
fn states(vch: &Vch, name: &str) -> (String, String) {
    let inspect = vch.inspect(name)["State"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ps = vch
        .cmd(&["ps", "-a"])
        .1
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_default()
        .to_owned();
    (inspect, ps)
}

fn says_timed_out(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("timed out") || t.contains("timeout")
}

#[test]
fn foreground_run_past_its_timeout_is_killed_and_says_so() {
    let vch = Vch::new();
    let t = Instant::now();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "15",
        "--name",
        "slow",
        "busybox",
        "sh",
        "-c",
        "echo started; exec sleep 600",
    ]);
    let took = t.elapsed();
    assert_eq!((code, out.as_str()), (125, "started\n"), "stderr: {err}");
    assert!(
        err.contains("did not finish within 15 s; the VM was killed"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(60),
        "took {took:?}"
    );
    // Not an exit of its own: the state must not read like one.
    let (inspect, ps) = states(&vch, "slow");
    assert!(
        says_timed_out(&inspect) && says_timed_out(&ps),
        "a VM killed at its timeout shows as {inspect:?} / {ps:?}"
    );
}

#[test]
fn detached_run_past_its_timeout_is_killed_and_says_so() {
    let vch = Vch::new();
    let id = vch.run_detached(&[
        "--timeout",
        "15",
        "--name",
        "slowd",
        "busybox",
        "sleep",
        "600",
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || !vch
            .cmd(&["ps", "-q"])
            .1
            .contains(&id)),
        "the VM outlived its timeout"
    );
    let (inspect, ps) = states(&vch, "slowd");
    assert!(
        says_timed_out(&inspect) && says_timed_out(&ps),
        "a VM killed at its timeout shows as {inspect:?} / {ps:?}"
    );
}
