//! A volume in use is protected: `vch volume rm` refuses while a container uses it, `-f`
//! removes it only when every user has stopped, and a disk volume is attached to one
//! running container at a time (as on vSphere).

use std::time::Duration;

use e2e::Vch;

#[test]
fn volume_rm_and_a_second_user_are_refused_while_it_runs() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&["volume", "create", "--size", "32M", "data"]);
    assert_eq!(code, 0, "volume create: {err}");
    let id = vch.run_detached(&[
        "--name",
        "holder",
        "--network",
        "none",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f; exec sleep 600",
    ]);
    let listed = || vch.cmd(&["volume", "ls", "-q"]).1;

    // Running user: refused, with or without -f, and the volume stays.
    for args in [
        &["volume", "rm", "data"][..],
        &["volume", "rm", "-f", "data"],
    ] {
        let (code, out, err) = vch.cmd(args);
        assert_ne!(code, 0, "{args:?} removed a volume in use: {out}");
        assert!(
            err.contains("volume data is in use by container(s) holder (running)"),
            "{args:?}: {err}"
        );
    }
    assert!(listed().lines().any(|l| l == "data"), "{}", listed());

    // A second running container cannot attach the same disk.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "data:/data",
        "busybox",
        "echo",
        "must-not-run",
    ]);
    assert_eq!((code, out.as_str()), (125, ""), "second user: {err}");
    assert!(
        err.contains("in use by container(s) holder")
            && err.contains("one running container at a time"),
        "{err}"
    );

    // Stopped user: plain rm still refuses (the container refers to it), -f removes it.
    let (code, _, err) = vch.cmd(&["stop", "-t", "2", "holder"]);
    assert_eq!(code, 0, "stop: {err}");
    assert!(
        vch.wait_until(Duration::from_secs(30), || !vch
            .cmd(&["ps", "-q"])
            .1
            .contains(&id)),
        "holder still running"
    );
    let (code, _, err) = vch.cmd(&["volume", "rm", "data"]);
    assert_ne!(code, 0, "rm removed a volume a stopped container refers to");
    assert!(
        err.contains("holder (stopped; rm -f removes it anyway)"),
        "{err}"
    );
    // Now that the first user stopped, another container may attach it.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "data:/data",
        "busybox",
        "cat",
        "/data/f",
    ]);
    assert_eq!((code, out.as_str()), (0, "kept\n"), "{err}");
    let (code, out, err) = vch.cmd(&["volume", "rm", "-f", "data"]);
    assert_eq!((code, out.as_str()), (0, "data\n"), "{err}");
    assert!(!listed().lines().any(|l| l == "data"), "{}", listed());
    assert!(!vch.volume_disk("data").exists(), "the disk image stayed");
}
