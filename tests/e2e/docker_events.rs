//! `docker events`: what monitoring tools watch, in order, with the exit code of `die`.

use e2e::docker::Daemon;

#[test]
fn docker_events_report_a_containers_life() {
    let d = Daemon::start();
    let since = d.ok(&["info", "--format", "{{.SystemTime}}"]);
    let (code, _, err) = d.docker(&[
        "run", "--rm", "--name", "ev", "busybox", "sh", "-c", "exit 5",
    ]);
    assert_eq!(code, 5, "{err}");
    // The removal happens after the exit; wait until it did.
    assert!(
        e2e::docker::eventually(std::time::Duration::from_secs(30), || d
            .ok(&["ps", "-aq"])
            .is_empty()),
        "not removed"
    );
    let until = d.ok(&["info", "--format", "{{.SystemTime}}"]);
    let out = d.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "container=ev",
        "--format",
        "{{.Type}} {{.Action}} {{index .Actor.Attributes \"name\"}} {{index .Actor.Attributes \"exitCode\"}}",
    ]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let pos = |want: &str| {
        lines
            .iter()
            .position(|l| *l == want)
            .unwrap_or_else(|| panic!("no {want:?} in {lines:?}"))
    };
    let order = [
        pos("container create ev"),
        pos("container start ev"),
        pos("container die ev 5"),
        pos("container destroy ev"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {lines:?}"
    );
}
