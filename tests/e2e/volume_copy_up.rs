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
