//! A workload that fills its disk gets ENOSPC; the tether still writes back the exit
//! status and powers the VM off by itself; a volume filled to the brim keeps the data
//! written before and is clean for `e2fsck -fn`.

use e2e::{RunOptions, Vch};

#[test]
fn full_container_root_disk() {
    // A directory image gets a root disk of the asked size: 48 MiB fills in moments.
    let (_guard, image) = e2e::busybox_image_with(&[], &[]);
    let fill = "dd if=/dev/zero of=/fill bs=1M; echo dd=$?; \
                echo still-writing >&2; sync; exit 3";
    let mut opts = RunOptions::new(image.to_str().expect("utf-8 path"), &["sh", "-c", fill]);
    opts.disk_mb = 48;
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.started, "true");
    assert!(r.stdout.contains("dd=1"), "stdout: {}", r.stdout);
    assert!(
        r.stderr.contains("No space left on device"),
        "stderr: {}",
        r.stderr
    );
    assert!(r.stderr.contains("still-writing"), "stderr: {}", r.stderr);
    assert_eq!(r.outcome.exit_code, 3, "debug log:\n{}", r.debug_log());
}

#[test]
fn full_volume_keeps_what_was_written_before() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&["volume", "create", "--size", "16M", "small"]);
    assert_eq!(code, 0, "{err}");
    let fill = "echo written-before > /data/kept; sync; \
                dd if=/dev/zero of=/data/fill bs=64k; echo dd=$?; \
                echo after > /data/more; echo more=$?; exit 4";
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "none",
        "-v",
        "small:/data",
        "busybox",
        "sh",
        "-c",
        fill,
    ]);
    assert_eq!(code, 4, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("dd=1"), "stdout: {out}");
    assert!(err.contains("No space left on device"), "stderr: {err}");
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk("small"));
    assert!(clean, "the full volume is not clean:\n{report}");
    assert_eq!(
        vch.volume_file("small", "kept").as_deref(),
        Some(&b"written-before\n"[..])
    );
    let doc = vch.inspect(vch.cmd(&["ps", "-a", "-q"]).1.trim());
    assert_eq!(doc["State"], "Exited (4)", "{doc}");
}
