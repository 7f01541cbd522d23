//! A user keeps data in a named volume: it outlives the container that wrote it, and a
//! read-only mount of it refuses writes.

use e2e::Vch;

#[test]
fn data_written_before_a_stop_is_there_at_the_next_start() {
    let vch = Vch::new();
    let (code, out, err) = vch.cmd(&["volume", "create", "--size", "64M", "db"]);
    assert_eq!(code, 0, "volume create: {out}{err}");
    // One container commits a row and reports it; the user then stops it while it is
    // still running (the database keeps going until told).
    let id = vch.run_detached(&[
        "-v",
        "db:/var/lib/db",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo committed-row-1 > /var/lib/db/table; echo ready; exec sleep 600",
    ]);
    assert!(
        vch.wait_until(std::time::Duration::from_secs(60), || {
            vch.cmd(&["logs", &id]).1.contains("ready")
        }),
        "container never became ready"
    );
    let (code, _, err) = vch.cmd(&["stop", "-t", "2", &id]);
    assert_eq!(code, 0, "stop: {err}");
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk("db"));
    assert!(clean, "volume not clean after stop:\n{report}");

    // A new container with the same volume sees the data.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "db:/var/lib/db",
        "busybox",
        "cat",
        "/var/lib/db/table",
    ]);
    assert_eq!(code, 0, "second run: {err}");
    assert_eq!(out, "committed-row-1\n");
    assert_eq!(
        vch.volume_file("db", "table").as_deref(),
        Some(&b"committed-row-1\n"[..])
    );
}

#[test]
fn read_only_volume_refuses_writes_and_still_reads() {
    let vch = Vch::new();
    assert_eq!(vch.cmd(&["volume", "create", "--size", "32M", "conf"]).0, 0);
    e2e::write_volume_file(&vch.volume_disk("conf"), "app.conf", b"port=80\n");
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "conf:/etc/app:ro",
        "busybox",
        "sh",
        "-c",
        "cat /etc/app/app.conf; if echo x > /etc/app/new; then echo WROTE; fi; if rm /etc/app/app.conf; then echo REMOVED; fi; grep ' /etc/app ' /proc/mounts",
    ]);
    assert_eq!(code, 0, "run: {err}");
    assert!(out.starts_with("port=80\n"), "stdout: {out}");
    assert!(
        !out.contains("WROTE") && !out.contains("REMOVED"),
        "ro volume was written: {out}"
    );
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    let mount_line = out.lines().find(|l| l.contains(" /etc/app ")).unwrap_or("");
    assert!(mount_line.contains(" ro,"), "mount options: {mount_line}");
    assert_eq!(vch.volume_file("conf", "new"), None);
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk("conf"));
    assert!(clean, "{report}");
}
