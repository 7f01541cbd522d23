//! A user mounts an NFS export as a volume: the container reads what the server has and
//! what it writes lands on the server. The server is a real NFS server on this machine
//! (nfs-ganesha), reached from the guest through QEMU user networking.

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
