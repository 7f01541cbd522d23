//! A volume the VM cannot have — no disk with its label, an NFS server that does not answer —
//! gives a clear error in `started`, no launch, and a clean power-off, never a hang.

use std::time::{Duration, Instant};

use e2e::{RunOptions, Vch};

#[test]
fn unknown_label_is_reported_and_nothing_runs() {
    let id = "badd15c000000000000000000000000000000000000000000000000000000001";
    let mut opts = RunOptions::new("busybox", &["echo", "must-not-run"]);
    opts.spec.id = id.into();
    opts.timeout = Duration::from_secs(90);
    // What a port layer would write for a volume whose disk was never attached.
    let m = "guestinfo.vice./mounts|ghost";
    opts.extra_config = vec![
        ("guestinfo.vice./mounts".into(), "ghost".into()),
        (format!("{m}/source/Scheme"), "label".into()),
        (format!("{m}/source/Path"), "ghost-label".into()),
        (format!("{m}/dest"), "/data".into()),
        (format!("{m}/mode"), "rw".into()),
    ];
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "", "the entrypoint ran");
    assert!(
        r.outcome.started.contains("volume ghost")
            && r.outcome
                .started
                .contains("no disk labelled \"ghost-label\""),
        "started = {:?}",
        r.outcome.started
    );
}

#[test]
fn unreachable_nfs_server_is_reported_within_the_deadline() {
    let vch = Vch::new();
    // A closed port on this machine: the server refuses at once. An address nobody answers
    // for: the tether's own deadline ends the wait.
    for (name, target) in [
        ("refused", "localhost:/nothing"),
        ("silent", "192.0.2.1:/export"),
    ] {
        let (code, out, err) = vch.cmd(&["volume", "create", "--nfs", target, name]);
        assert_eq!(code, 0, "volume create: {out}{err}");
        let t = Instant::now();
        let (code, out, err) = vch.cmd(&[
            "run",
            "--timeout",
            "120",
            "-v",
            &format!("{name}:/mnt/x"),
            "busybox",
            "echo",
            "must-not-run",
        ]);
        let took = t.elapsed();
        assert_ne!(code, 0, "{name}: run succeeded: {out}");
        assert!(!out.contains("must-not-run"), "{name}: the entrypoint ran");
        assert!(
            err.contains(&format!("volume {name}")),
            "{name}: stderr: {err}"
        );
        assert!(took < Duration::from_secs(60), "{name}: took {took:?}");
    }
}
