//! A `docker save` archive built here from Debian's busybox-static is loaded with `vch load`
//! (from a file and from stdin) and run by name and by ID prefix; the image's config drives
//! the container with docker's rules (Entrypoint + Cmd, `--entrypoint`, Env under `-e`,
//! WorkingDir, User, Volumes filled by copy-up), and `vch rmi` follows docker's rules.

use std::time::Duration;

use e2e::images::{busybox_layer, config, docker_save};
use e2e::Vch;
use serde_json::json;

const NAME: &str = "tether-e2e/bb:1";

#[test]
fn a_docker_save_archive_loads_and_its_config_drives_the_container() {
    let vch = Vch::new();
    let layer = busybox_layer()
        .dir("data", 0o755)
        .file("data/seed", b"seeded by the image\n", 0o644)
        .dir("srv", 0o755)
        .dir("srv/app", 0o755)
        .tar();
    let cfg = config(
        &[&layer],
        json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"$GREETING from $(pwd) as $(id -un)\"; cat /data/seed"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/srv/app",
            "User": "user",
            "Volumes": {"/data": {}},
            "Labels": {"org.example.kind": "e2e"},
        }),
    );
    let id = e2e::images::sha(&cfg).to_string();
    let archive = docker_save(&cfg, std::slice::from_ref(&layer), &[NAME]);
    let file = vch.dir.path().join("bb.tar");
    std::fs::write(&file, &archive).expect("write archive");

    let (code, out, err) = vch.cmd(&["load", "-i", file.to_str().expect("path")]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Loaded image: tether-e2e/bb:1\n"),
        "{err}"
    );
    // Progress is for terminals only: nothing on a pipe.
    assert_eq!(err, "", "vch load printed progress to a pipe");
    let (code, list, err) = vch.cmd(&["images"]);
    assert_eq!(code, 0, "{err}");
    let row = list
        .lines()
        .find(|l| l.starts_with("tether-e2e/bb "))
        .unwrap_or_else(|| panic!("no row for the image:\n{list}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..3], ["1", &id[7..19]], "{list}");
    assert!(vch.image_ids().contains(&id), "{list}");

    // The image's Entrypoint + Cmd, Env, WorkingDir and User; /data is an anonymous volume
    // the tether filled from the image.
    let (code, out, err) = vch.cmd(&["run", "--network", "none", "--timeout", "120", NAME]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "hello from /srv/app as user\nseeded by the image\n",
        "{err}"
    );
    let (_, ps, _) = vch.cmd(&["ps", "-a", "-q"]);
    let first = ps
        .split_whitespace()
        .next()
        .expect("a container")
        .to_owned();
    let inspect = vch.inspect(&first);
    assert_eq!(inspect["ImageID"], json!(id), "{inspect:#}");
    assert_eq!(
        inspect["Mounts"][0]["Destination"],
        json!("/data"),
        "{inspect:#}"
    );

    // By ID prefix, with the user's settings over the image's: `--entrypoint` drops the
    // image's Cmd, `-e` wins over the image's Env, `-w` and `-u` over its WorkingDir and User.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "none",
        "--timeout",
        "120",
        "-e",
        "GREETING=bonjour",
        "-w",
        "/tmp",
        "-u",
        "root",
        "--entrypoint",
        "/bin/sh",
        &id[7..19],
        "-c",
        "echo \"$GREETING $(pwd) $(id -u) $PATH\"",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "bonjour /tmp 0 /bin\n", "{err}");

    // docker's rmi rules: containers keep their image.
    let (code, _, err) = vch.cmd(&["rmi", NAME]);
    assert_eq!(code, 1, "rmi of an image in use succeeded");
    assert!(
        err.contains("conflict: unable to remove repository reference")
            && err.contains(&first[..12]),
        "{err}"
    );
    let (_, ps, _) = vch.cmd(&["ps", "-a", "-q"]);
    let all: Vec<&str> = ps.split_whitespace().collect();
    let mut rm = vec!["rm"];
    rm.extend(&all);
    assert_eq!(vch.cmd(&rm).0, 0);
    let layer_dir = e2e::images::sha(&layer).hex().to_owned();
    assert!(vch.store_entries("layers").contains(&layer_dir));
    let (code, out, err) = vch.cmd(&["rmi", NAME]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("Untagged: {NAME}\nDeleted: {id}\n"));
    assert!(
        !vch.store_entries("layers").contains(&layer_dir),
        "the layer only this image used is still stored"
    );

    // From stdin, as `docker load < FILE`.
    let (code, out, err) = vch.cmd_with_file(&["load"], &file, Duration::from_secs(120));
    assert_eq!(
        (code, out.as_str()),
        (0, "Loaded image: tether-e2e/bb:1\n"),
        "{err}"
    );
    assert!(vch.image_ids().contains(&id));
}
