//! A new volume mounted over an image directory starts with the image's content (docker's
//! copy-up); a volume that already holds data is left alone; the volume's `lost+found`
//! stays hidden and the mount point keeps the image directory's owner and mode.

use e2e::Vch;

fn image() -> (tempfile::TempDir, std::path::PathBuf) {
    e2e::busybox_image_with(
        &[
            ("/srv/data/seed.txt", b"from-the-image\n"),
            ("/srv/data/nested/deep.txt", b"deep\n"),
        ],
        &[("/srv/data", 1000, 1000, 0o750)],
    )
}

#[test]
fn empty_volume_gets_the_image_content_and_a_full_one_is_left_alone() {
    let vch = Vch::new();
    let (_keep, rootfs) = image();
    let img = rootfs.to_str().expect("utf-8 path");
    // First use: the volume is empty, so the image's /srv/data is copied in, with owners.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "appdata:/srv/data",
        img,
        "sh",
        "-c",
        "cat /srv/data/seed.txt /srv/data/nested/deep.txt; ls -a /srv/data; stat -c '%u:%g %a' /srv/data /srv/data/seed.txt; echo user-data > /srv/data/mine; rm /srv/data/seed.txt",
    ]);
    assert_eq!(code, 0, "first run: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("from-the-image"), "{out}");
    assert_eq!(lines.get(1).copied(), Some("deep"), "{out}");
    assert!(
        !out.contains("lost+found"),
        "the volume's lost+found is visible: {out}"
    );
    assert!(
        out.contains("1000:1000 750\n"),
        "mount point lost the image directory's owner/mode: {out}"
    );
    assert_eq!(
        vch.volume_file("appdata", "mine").as_deref(),
        Some(&b"user-data\n"[..])
    );

    // Second use: the volume is not empty, so nothing is copied again (seed.txt stays gone).
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "appdata:/srv/data",
        img,
        "ls",
        "/srv/data",
    ]);
    assert_eq!(code, 0, "second run: {err}");
    assert!(out.contains("mine"), "{out}");
    assert!(
        !out.contains("seed.txt"),
        "copy-up ran on a non-empty volume: {out}"
    );
}

#[test]
fn nocopy_volume_stays_empty() {
    let vch = Vch::new();
    let (_keep, rootfs) = image();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "bare:/srv/data:nocopy",
        rootfs.to_str().expect("utf-8 path"),
        "ls",
        "-a",
        "/srv/data",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), [".", ".."]);
}

#[test]
fn image_declared_volume_becomes_an_anonymous_volume_filled_from_the_image() {
    let vch = Vch::new();
    let (_keep, rootfs) = image();
    // The image declares /srv/data a volume, in the shape of docker's image config.
    let decl = rootfs.with_extension("image.json");
    std::fs::write(&decl, br#"{"Volumes": {"/srv/data": {}}}"#).expect("declare volume");
    let img = rootfs.to_str().expect("utf-8 path");
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "anon",
        "--network",
        "none",
        img,
        "sh",
        "-c",
        "cat /srv/data/seed.txt; grep ' /srv/data ' /proc/mounts",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("from-the-image\n"), "{out}");
    assert!(
        out.contains(" /srv/data ext4 "),
        "/srv/data is not a volume: {out}"
    );
    let (_, ls, _) = vch.cmd(&["volume", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "one anonymous volume: {ls}");
    // Removing the container removes its anonymous volume.
    assert_eq!(vch.cmd(&["rm", "anon"]).0, 0);
    let (_, ls, _) = vch.cmd(&["volume", "ls", "-q"]);
    assert_eq!(ls.trim(), "", "anonymous volume left behind: {ls}");
}

#[test]
fn nested_volumes_mount_in_order_and_each_gets_its_own_image_content() {
    let vch = Vch::new();
    let (_keep, rootfs) = image();
    // Given child first on the command line: the order must come from the paths.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--network",
        "none",
        "-v",
        "inner:/srv/data/nested",
        "-v",
        "outer:/srv/data",
        rootfs.to_str().expect("utf-8 path"),
        "sh",
        "-c",
        "cat /srv/data/seed.txt /srv/data/nested/deep.txt; echo in-inner > /srv/data/nested/new; echo in-outer > /srv/data/new",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-the-image\ndeep\n");
    assert_eq!(
        vch.volume_file("inner", "deep.txt").as_deref(),
        Some(&b"deep\n"[..])
    );
    assert_eq!(
        vch.volume_file("inner", "new").as_deref(),
        Some(&b"in-inner\n"[..])
    );
    assert_eq!(
        vch.volume_file("outer", "new").as_deref(),
        Some(&b"in-outer\n"[..])
    );
    assert_eq!(
        vch.volume_file("outer", "seed.txt").as_deref(),
        Some(&b"from-the-image\n"[..])
    );
}
