//! A user mounts an NFS export as a volume: the container reads what the server has and
//! what it writes lands on the server. The server is a real NFS server on this machine
//! (nfs-ganesha), reached from the guest through QEMU user networking.

use std::time::{Duration, Instant};

use e2e::{NfsServer, Vch};

#[test]
fn container_reads_and_writes_an_nfs_export() {
    let server = NfsServer::start();
    std::fs::write(server.export.join("from-server.txt"), b"served over nfs\n").expect("seed");
    let vch = Vch::new();
    let target = format!("localhost:{}", server.export.display());
    let (code, out, err) = vch.cmd(&["volume", "create", "--nfs", &target, "shared"]);
    assert_eq!(code, 0, "volume create: {out}{err}");
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "-v",
        "shared:/mnt/shared",
        "busybox",
        "sh",
        "-c",
        "cat /mnt/shared/from-server.txt; echo written-by-container > /mnt/shared/from-guest.txt; grep ' /mnt/shared ' /proc/mounts",
    ]);
    assert_eq!(code, 0, "run failed: {err}\nserver log:\n{}", server.log());
    assert!(out.starts_with("served over nfs\n"), "stdout: {out}");
    let mount = out.lines().nth(1).unwrap_or("");
    assert!(
        mount.contains(" nfs ") && mount.contains("vers=3"),
        "not an NFSv3 mount: {mount}"
    );
    assert_eq!(
        std::fs::read_to_string(server.export.join("from-guest.txt")).expect("file on server"),
        "written-by-container\n"
    );

    // Mounted read-only, the same export refuses writes (the original ignored `ro`).
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "-v",
        "shared:/mnt/shared:ro",
        "busybox",
        "sh",
        "-c",
        "cat /mnt/shared/from-guest.txt; if echo x > /mnt/shared/ro-write.txt; then echo WROTE; fi",
    ]);
    assert_eq!(code, 0, "ro run: {err}");
    assert_eq!(out, "written-by-container\n");
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    assert!(!server.export.join("ro-write.txt").exists());
}

/// The NFS server disappears while a container writes to it: stopping the container still
/// powers the VM off by itself within the tether's bounds (a 20 s bound on unmounting, so a
/// dead server cannot hold the power-off), and the container's local volume is clean with
/// its data.
#[test]
fn server_gone_mid_run_cannot_hold_the_power_off() {
    let server = NfsServer::start();
    let vch = Vch::new();
    let target = format!("localhost:{}", server.export.display());
    for args in [
        &["volume", "create", "--nfs", &target, "shared"][..],
        &["volume", "create", "--size", "32M", "local"],
    ] {
        let (code, out, err) = vch.cmd(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let id = vch.run_detached(&[
        "--name",
        "nfsgone",
        "-v",
        "shared:/mnt/shared",
        "-v",
        "local:/data",
        "busybox",
        "sh",
        "-c",
        // The log stays open, so what the server missed is still dirty in the guest's
        // page cache at the stop: unmounting it would wait for the server forever.
        "echo before-the-end > /data/last; sync; exec 3>>/mnt/shared/log; \
         while true; do echo tick >&3; sleep 0.1; done",
    ]);
    let log = server.export.join("log");
    assert!(
        vch.wait_until(Duration::from_secs(60), || log.exists()),
        "the container never wrote to the server; logs: {:?}",
        vch.cmd(&["logs", "nfsgone"])
    );
    // The server goes away mid-write; soon the writer sleeps uninterruptibly on it. (The
    // pattern `tic[k]` finds the writer's command line, not this one's.)
    drop(server);
    let writer_state = || {
        vch.cmd(&[
            "exec",
            "nfsgone",
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do grep -q 'tic[k]' $p/cmdline 2>/dev/null && cut -d' ' -f3 $p/stat; done",
        ])
        .1
    };
    assert!(
        vch.wait_until(Duration::from_secs(60), || writer_state().trim() == "D"),
        "the writer never got stuck: {:?}",
        writer_state()
    );

    // The writer is now stuck in uninterruptible sleep: neither the stop signal nor SIGKILL
    // can end it. The VM must power itself off regardless, before vch's own limit (the
    // grace period + 15 s) would power it off hard.
    let t = Instant::now();
    let (code, _, err) = vch.cmd(&["stop", "-t", "2", "nfsgone"]);
    let took = t.elapsed();
    assert_eq!(code, 0, "stop: {err}");
    let dir = vch.dir.path().join("vms").join(&id[..12]);
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let debug = std::fs::read_to_string(dir.join("tether.debug")).unwrap_or_default();
    assert!(
        console.contains("reboot: Power down"),
        "the VM did not power itself off (took {took:?}); debug log:\n{debug}"
    );
    assert!(
        took < Duration::from_secs(40),
        "stop took {took:?}\n{debug}"
    );
    // Killed, though never reaped: not the 0 of a process that exited by itself.
    assert_eq!(vch.inspect("nfsgone")["State"], "Exited (137)", "{debug}");
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk("local"));
    assert!(
        clean,
        "local volume not clean:\n{report}\ndebug log:\n{debug}"
    );
    assert_eq!(
        vch.volume_file("local", "last").as_deref(),
        Some(&b"before-the-end\n"[..])
    );
}
