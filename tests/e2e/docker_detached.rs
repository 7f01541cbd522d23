//! A container run in the background with docker: logs followed, listed, inspected,
//! signalled, stopped, waited for, started again and removed.

use std::time::Duration;

use e2e::docker::Daemon;

const TICKER: &str =
    "trap 'echo got USR2' USR2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done";

#[test]
fn docker_run_detached_then_logs_ps_inspect_stop_start_kill_wait_rm() {
    let d = Daemon::start();
    let id = d.ok(&[
        "run", "-d", "--name", "ticker", "-l", "team=vch", "busybox", "sh", "-c", TICKER,
    ]);
    assert_eq!(id.len(), 64, "{id}");
    // logs -f follows until the container stops.
    let mut follow = d.spawn(&["logs", "-f", "ticker"]);
    follow
        .expect_line("tick 2", Duration::from_secs(60))
        .expect("followed output");
    assert_eq!(
        d.ok(&[
            "ps",
            "--format",
            "{{.Names}} {{.State}} {{.Image}} {{.Label \"team\"}}"
        ]),
        "ticker running busybox vch"
    );
    assert_eq!(d.ok(&["ps", "-q", "--filter", "label=team=vch"]), &id[..12]);
    assert_eq!(d.ok(&["ps", "-q", "--filter", "status=exited"]), "");
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.Name}} {{.Config.Tty}} {{.HostConfig.AutoRemove}}",
            "ticker"
        ]),
        "true /ticker false false"
    );
    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "ticker"]);
    assert!(ip.starts_with("172.16."), "written-back address: {ip}");
    // A signal the process traps.
    d.ok(&["kill", "-s", "USR2", &id[..12]]);
    follow
        .expect_line("got USR2", Duration::from_secs(30))
        .expect("USR2 delivered");
    // stop: TERM, the shell dies of it (143); logs -f ends.
    d.ok(&["stop", "-t", "2", "ticker"]);
    assert!(
        follow.wait(Duration::from_secs(30)).is_some(),
        "logs -f did not end at the stop"
    );
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "ticker"
        ]),
        "exited 143"
    );
    assert!(d
        .ok(&["ps", "-a", "--format", "{{.Status}}"])
        .starts_with("Exited (143)"));
    let (_, logs, _) = d.docker(&["logs", "--tail", "1", "ticker"]);
    assert!(logs.starts_with("tick "), "{logs}");
    // Stopping a stopped container: docker's 304, no error.
    d.ok(&["stop", "ticker"]);
    // Start again, then kill with a signal that ends it: wait reports 128 + 10.
    d.ok(&["start", "ticker"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Running}}", "ticker"]),
        "true"
    );
    d.ok(&["kill", "-s", "USR1", "ticker"]);
    assert_eq!(d.ok(&["wait", "ticker"]), "138");
    // rm -f of a running container: the VM and the state are gone.
    d.ok(&["start", "ticker"]);
    let vm_dir = d.state.path().join("vms").join(&id[..12]);
    assert!(vm_dir.exists());
    d.ok(&["rm", "-f", "ticker"]);
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    assert!(!vm_dir.exists(), "the VM's folder was removed");
}
