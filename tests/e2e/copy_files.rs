//! `vch cp` copies files in and out of a container VM with docker's rules: a file, a
//! directory, `DIR/.` (its contents), a destination that does not exist, `-` (a tar stream on
//! stdin or stdout), owners kept with `-a`, symlinks copied as links unless `-L`, and paths
//! that lead out of the container refused. Both on a running container (the tether's archive
//! channels) and on a stopped one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::Vch;

/// `vch ARGS` with its stdout as bytes (a tar stream).
fn vch_bytes(vch: &Vch, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(vch.dir.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vch");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(vch: &Vch, args: &[&str]) -> String {
    let (code, out, err) = vch.cmd(args);
    assert_eq!(code, 0, "vch {args:?}: {err}");
    out
}

/// A tar stream with one file entry, its name written raw (so `..` can be in it).
fn tar_with(name: &str, uid: u64, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o640);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.append(&h, data).expect("append");
    b.into_inner().expect("tar")
}

fn entries(tar_bytes: &[u8]) -> Vec<(String, u64)> {
    tar::Archive::new(tar_bytes)
        .entries()
        .expect("tar")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path().expect("path").to_string_lossy().into_owned(),
                e.header().uid().expect("uid"),
            )
        })
        .collect()
}

/// Every form of `vch cp` against `box`. Each copy of a stopped container boots its VM
/// (about 3 s under TCG), so there `full` is false and the forms that take the same path
/// through the engine as another are left out.
fn copy_both_ways(vch: &Vch, local: &Path, tag: &str, full: bool) {
    std::fs::create_dir_all(local).unwrap();
    let l = |p: &str| local.join(p).display().to_string();
    // A file out, to a new name and into a directory.
    ok(vch, &["cp", "box:/data/sub/f", &l("f")]);
    assert_eq!(std::fs::read_to_string(local.join("f")).unwrap(), "hi\n");
    std::fs::create_dir_all(local.join("into")).unwrap();
    ok(vch, &["cp", "box:/data/sub/f", &l("into")]);
    assert!(local.join("into/f").is_file());
    // A directory out: the symlink stays a link, modes are kept.
    ok(vch, &["cp", "box:/data", &l("out")]);
    assert_eq!(
        std::fs::read_to_string(local.join("out/sub/f")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_link(local.join("out/link")).unwrap(),
        Path::new("sub/f")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(local.join("out/sub/f"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o604, "mode kept");
    if full {
        // DIR/. copies the contents into a new directory.
        ok(vch, &["cp", "box:/data/.", &l("contents")]);
        assert!(local.join("contents/sub/f").is_file());
        assert!(!local.join("contents/data").exists());
    }
    // -L follows a symlink given as the source; without it the link is copied.
    if full {
        ok(vch, &["cp", "-L", "box:/data/link", &l("followed")]);
        assert_eq!(
            std::fs::read_to_string(local.join("followed")).unwrap(),
            "hi\n"
        );
        ok(vch, &["cp", "box:/data/link", &l("nolink")]);
        assert!(std::fs::symlink_metadata(local.join("nolink"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // `-` writes a tar stream rooted at the path's name, owners as in the container.
    let (code, tar_out, err) = vch_bytes(vch, &["cp", "box:/data/sub", "-"]);
    assert_eq!(code, 0, "{err}");
    let names = entries(&tar_out);
    assert!(names.contains(&("sub/f".into(), 1000)), "{names:?}");

    // In: a file to a new name, a directory (with a link) into a directory.
    let dir = local.join("in");
    std::fs::create_dir_all(dir.join("deep")).unwrap();
    std::fs::write(dir.join("deep/file"), format!("from the host {tag}\n")).unwrap();
    std::os::unix::fs::symlink("deep/file", dir.join("ln")).unwrap();
    std::fs::write(local.join("single"), "one\n").unwrap();
    ok(
        vch,
        &["cp", &l("single"), &format!("box:/tmp/single-{tag}")],
    );
    ok(vch, &["cp", &l("in"), "box:/tmp/"]);
    if full {
        ok(
            vch,
            &[
                "cp",
                &format!("{}/.", l("in")),
                &format!("box:/tmp/flat-{tag}"),
            ],
        );
    }
    // Read back through the container (a copy out again works whether it runs or not).
    ok(
        vch,
        &["cp", &format!("box:/tmp/single-{tag}"), &l("back-single")],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("back-single")).unwrap(),
        "one\n"
    );
    ok(vch, &["cp", "box:/tmp/in", &l("back-in")]);
    assert_eq!(
        std::fs::read_to_string(local.join("back-in/deep/file")).unwrap(),
        format!("from the host {tag}\n")
    );
    assert_eq!(
        std::fs::read_link(local.join("back-in/ln")).unwrap(),
        Path::new("deep/file")
    );
    if full {
        ok(
            vch,
            &["cp", &format!("box:/tmp/flat-{tag}"), &l("back-flat")],
        );
        assert!(local.join("back-flat/deep/file").is_file());
    }

    if full {
        // `-a` keeps the archive's owners; without it everything belongs to root.
        let (code, _, err) = vch.cmd_with_input(
            &["cp", "-a", "-", "box:/tmp"],
            &tar_with(&format!("owned-{tag}"), 4242, b"x"),
        );
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = vch.cmd_with_input(
            &["cp", "-", "box:/tmp"],
            &tar_with(&format!("rooted-{tag}"), 4242, b"x"),
        );
        assert_eq!(code, 0, "{err}");
        let (_, t, _) = vch_bytes(vch, &["cp", &format!("box:/tmp/owned-{tag}"), "-"]);
        assert_eq!(entries(&t)[0].1, 4242, "-a keeps the owner");
        let (_, t, _) = vch_bytes(vch, &["cp", &format!("box:/tmp/rooted-{tag}"), "-"]);
        assert_eq!(entries(&t)[0].1, 0, "without -a root owns it");
    }

    // Refused: an entry that climbs out of the destination, a path above the root, the
    // tether's own files; a path that is not there.
    let (code, _, err) =
        vch.cmd_with_input(&["cp", "-", "box:/tmp"], &tar_with("../escaped", 0, b"x"));
    assert_ne!(code, 0);
    assert!(err.contains("leads out"), "{err}");
    if full {
        let (code, _, _) = vch_bytes(vch, &["cp", "box:/escaped", "-"]);
        assert_ne!(code, 0, "nothing was written outside the destination");
        let (code, _, err) = vch.cmd(&["cp", "box:/../../etc/passwd", &l("x")]);
        assert_ne!(code, 0);
        assert!(err.contains("leads out"), "{err}");
        let (code, _, err) = vch.cmd(&["cp", "box:/.tether", &l("x")]);
        assert_ne!(code, 0, "{err}");
    }
    let (code, _, err) = vch.cmd(&["cp", "box:/no/such/file", &l("x")]);
    assert_ne!(code, 0);
    assert!(err.contains("Could not find the file"), "{err}");
}

#[test]
fn vch_cp_running_and_stopped() {
    let vch = Vch::new();
    vch.run_detached(&[
        "--name",
        "box",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /data/sub && echo hi > /data/sub/f && chmod 604 /data/sub/f && \
         chown 1000:1000 /data/sub/f && ln -sfn sub/f /data/link && touch /ready && sleep 600",
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || {
            vch.cmd(&["exec", "box", "test", "-e", "/ready"]).0 == 0
        }),
        "the container did not set up its files"
    );
    let local = tempfile::tempdir().unwrap();
    copy_both_ways(&vch, &local.path().join("running"), "running", true);
    let out = ok(&vch, &["exec", "box", "cat", "/tmp/in/ln"]);
    assert_eq!(out, "from the host running\n", "the link works inside");

    ok(&vch, &["stop", "-t", "1", "box"]);
    copy_both_ways(&vch, &local.path().join("stopped"), "stopped", false);
    // What was copied into the stopped container is there when it runs again.
    ok(&vch, &["start", "box"]);
    assert_eq!(
        ok(&vch, &["exec", "box", "cat", "/tmp/single-stopped"]),
        "one\n"
    );
}
