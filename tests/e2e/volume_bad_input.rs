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
fn refusing_nfs_server_is_reported_at_once() {
    let vch = Vch::new();
    // A closed port on this machine: the server refuses at once.
    let (code, out, err) = vch.cmd(&["volume", "create", "--nfs", "localhost:/nothing", "refused"]);
    assert_eq!(code, 0, "volume create: {out}{err}");
    let t = Instant::now();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "-v",
        "refused:/mnt/x",
        "busybox",
        "echo",
        "must-not-run",
    ]);
    let took = t.elapsed();
    assert_eq!((code, out.as_str()), (125, ""), "stderr: {err}");
    assert!(err.contains("volume refused"), "stderr: {err}");
    assert!(
        !err.contains("did not answer"),
        "a refusal waited for the deadline: {err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// A server that accepts the connection and then says nothing: the kernel would retry for
/// minutes; the tether's own 20 s deadline ends the wait.
#[test]
fn silent_nfs_server_is_reported_at_the_deadline() {
    // Accepts every connection and keeps it open without a byte in reply.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let vch = Vch::new();
    // Ports given, so the kernel asks no portmapper and talks MOUNT straight to the listener.
    let opts = format!(
        "vers=3,proto=tcp,port={port},mountvers=3,mountproto=tcp,mountport={port},nolock,hard,timeo=600"
    );
    let (code, out, err) = vch.cmd(&[
        "volume",
        "create",
        "--nfs",
        "localhost:/export",
        "--nfs-opts",
        &opts,
        "silent",
    ]);
    assert_eq!(code, 0, "volume create: {out}{err}");
    let t = Instant::now();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "-v",
        "silent:/mnt/x",
        "busybox",
        "echo",
        "must-not-run",
    ]);
    let took = t.elapsed();
    assert_eq!((code, out.as_str()), (125, ""), "stderr: {err}");
    assert!(
        err.contains("volume silent: NFS server 172.16.0.1 did not answer within 20s"),
        "stderr: {err}"
    );
    // Only the tether's deadline says "did not answer" (a refusal or an error of the mount
    // says why instead). The 20 s are the guest's: a guest under TCG on a loaded machine
    // may calibrate its clock wrong at boot, so the host's clock cannot check them.
    assert!(took < Duration::from_secs(90), "took {took:?}");
}
