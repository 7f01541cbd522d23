//! The real docker clients (Debian's 20.10 and the machines' 28.x) against `vch daemon`:
//! `docker load` (file and stdin), `docker import` (file and stdin, with `--change`),
//! `docker images`, `docker tag`, `docker image inspect`, `docker run` of a loaded image (its
//! config applied, its Healthcheck refused with a warning), `docker save` (file and stdout),
//! `docker rmi` with docker's rules, and the image events.

use std::io::Read;
use std::path::Path;

use e2e::images::{busybox_layer, config, docker_save, Daemon, DOCKER_CLIENTS};
use e2e::Vch;
use serde_json::json;

/// The `manifest.json` of a `docker save` archive.
fn saved_manifest(path: &Path) -> serde_json::Value {
    let mut ar = tar::Archive::new(std::fs::File::open(path).expect("open saved archive"));
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        if e.path().expect("entry path").to_str() == Some("manifest.json") {
            let mut text = String::new();
            e.read_to_string(&mut text).expect("read manifest");
            return serde_json::from_str(&text).expect("manifest JSON");
        }
    }
    panic!("{} has no manifest.json", path.display());
}

#[test]
fn docker_clients_load_import_list_tag_run_save_and_remove_images() {
    let vch = Vch::new();
    let daemon = Daemon::start(&vch);
    let dir = vch.dir.path();
    let layer = busybox_layer().tar();
    let rootfs = dir.join("rootfs.tar");
    std::fs::write(&rootfs, &layer).expect("write rootfs");
    let cfg = config(
        &[&layer],
        json!({
            "Cmd": ["sh", "-c", "echo \"from $WHO in $(pwd)\""],
            "Env": ["PATH=/bin", "WHO=the image"],
            "WorkingDir": "/tmp",
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1_000_000_000},
        }),
    );
    let id = e2e::images::sha(&cfg).to_string();

    for (n, client) in DOCKER_CLIENTS.iter().enumerate() {
        let docker = |args: &[&str]| {
            let (code, out, err) = daemon.docker(client, args);
            assert_eq!(
                code,
                0,
                "{client} {args:?}: {err}\ndaemon log:\n{}",
                daemon.log()
            );
            (out, err)
        };
        let tag = format!("tether-e2e/dc:{n}");
        let archive = dir.join(format!("dc{n}.tar"));
        std::fs::write(
            &archive,
            docker_save(&cfg, std::slice::from_ref(&layer), &[&tag]),
        )
        .expect("write archive");
        let archive_s = archive.to_str().expect("path");

        // load: from a file, then from stdin.
        let (out, _) = docker(&["load", "-i", archive_s]);
        assert_eq!(out, format!("Loaded image: {tag}\n"), "{client}");
        let (code, out, err) = daemon.docker_with_file(client, &["load"], &archive);
        assert_eq!(
            (code, out),
            (0, format!("Loaded image: {tag}\n")),
            "{client}: {err}"
        );

        // import: a file with a name, stdin with a change.
        let imported = format!("tether-e2e/imported:{n}");
        let (out, _) = docker(&["import", rootfs.to_str().expect("path"), &imported]);
        let imported_id = out.trim().to_owned();
        assert!(
            imported_id.starts_with("sha256:")
                && imported_id.len() == 71
                && out.lines().count() == 1,
            "{client} import printed {out:?}"
        );
        let (code, out, err) = daemon.docker_with_file(
            client,
            &[
                "import",
                "--change",
                "CMD [\"/bin/echo\", \"imported\"]",
                "-",
            ],
            &rootfs,
        );
        assert_eq!(code, 0, "{client} import -: {err}");
        let untagged_id = out.trim().to_owned();
        assert!(untagged_id.starts_with("sha256:"), "{out}");

        // images: docker's table, IDs, a reference filter.
        let (out, _) = docker(&["images"]);
        let row = out
            .lines()
            .find(|l| {
                l.starts_with("tether-e2e/dc ")
                    && l.split_whitespace().nth(1) == Some(&n.to_string())
            })
            .unwrap_or_else(|| panic!("{client} images:\n{out}"));
        assert_eq!(row.split_whitespace().nth(2), Some(&id[7..19]), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("<none> ") && l.contains(&untagged_id[7..19])),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("busybox ") && l.contains("latest")),
            "{out}"
        );
        let (out, _) = docker(&["images", "-q", "--no-trunc", "tether-e2e/imported"]);
        assert_eq!(out.trim(), imported_id, "{client}");

        // tag and inspect.
        let copy = format!("tether-e2e/copy:{n}");
        docker(&["tag", &tag, &copy]);
        let (out, _) = docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{json .RepoTags}} {{json .Config.Cmd}} {{.Os}}/{{.Architecture}}",
            &copy,
        ]);
        let tags = json!([copy, tag]).to_string();
        assert_eq!(
            out.trim(),
            format!("{id} {tags} [\"sh\",\"-c\",\"echo \\\"from $WHO in $(pwd)\\\"\"] linux/amd64"),
            "{client}"
        );
        let (out, _) = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            &untagged_id[7..],
        ]);
        assert_eq!(out.trim(), "[\"/bin/echo\",\"imported\"]", "{client}");

        // run: the image's Cmd, Env and WorkingDir; its Healthcheck is refused with a warning.
        let name = format!("dc-run-{n}");
        let (code, out, err) = daemon.docker(
            client,
            &["run", "--name", &name, "--network", "none", &copy],
        );
        assert_eq!(code, 0, "{client} run: {err}\n{}", daemon.log());
        assert_eq!(out, "from the image in /tmp\n", "{client}: {err}");
        assert!(
            err.contains("WARNING: The image's Healthcheck"),
            "{client}: {err}"
        );

        // save: to a file and to stdout; the archive names what was asked for.
        let saved = dir.join(format!("saved{n}.tar"));
        docker(&["save", "-o", saved.to_str().expect("path"), &tag]);
        let m = saved_manifest(&saved);
        assert_eq!(m[0]["RepoTags"], json!([tag]), "{client}: {m}");
        assert_eq!(
            m[0]["Config"],
            json!(format!("blobs/sha256/{}", &id[7..])),
            "{m}"
        );
        let to_stdout = dir.join(format!("stdout{n}.tar"));
        let (code, err) = daemon.docker_to_file(client, &["save", &imported], &to_stdout);
        assert_eq!(code, 0, "{client} save > file: {err}");
        let m = saved_manifest(&to_stdout);
        assert_eq!(m[0]["RepoTags"], json!([imported]), "{client}: {m}");

        // rmi: docker's rules and words.
        let (code, _, err) = daemon.docker(client, &["rmi", &id[7..19]]);
        assert_eq!(
            code, 1,
            "{client}: rmi of an image in use and in several repositories"
        );
        assert!(
            err.contains("Error response from daemon: conflict: unable to delete"),
            "{err}"
        );
        let (out, _) = docker(&["rmi", &copy]);
        assert_eq!(out, format!("Untagged: {copy}\n"), "{client}");
        docker(&["rm", &name]);
        let (out, _) = docker(&["rmi", &imported]);
        assert_eq!(
            out,
            format!("Untagged: {imported}\nDeleted: {imported_id}\n"),
            "{client}"
        );
        let (out, _) = docker(&["rmi", &untagged_id[7..19]]);
        assert_eq!(out, format!("Deleted: {untagged_id}\n"), "{client}");
        // Its last name, no container left: the image goes with it.
        let (out, _) = docker(&["rmi", &tag]);
        assert_eq!(out, format!("Untagged: {tag}\nDeleted: {id}\n"), "{client}");
        let (code, _, err) = daemon.docker(client, &["rmi", "tether-e2e/no-such:1"]);
        assert_eq!(code, 1);
        assert!(err.contains("No such image: tether-e2e/no-such:1"), "{err}");

        // A broken archive is the daemon's clear error, and the client's exit status 1.
        let cut = dir.join(format!("cut{n}.tar"));
        let whole = std::fs::read(&archive).expect("read archive");
        std::fs::write(&cut, &whole[..whole.len() / 2]).expect("write");
        let (code, _, err) = daemon.docker(client, &["load", "-i", cut.to_str().expect("path")]);
        assert_eq!(code, 1, "{client} loaded half an archive");
        assert!(
            err.contains("Error response from daemon") && err.contains("truncated"),
            "{err}"
        );
    }

    // The image events the engine published, as `docker events` reports them.
    let (code, out, err) = daemon.docker(
        DOCKER_CLIENTS[0],
        &[
            "events",
            "--since",
            "0",
            "--until",
            &format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() + 1)
                    .unwrap_or(0)
            ),
            "--filter",
            "type=image",
            "--format",
            "{{.Action}}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for action in ["load", "import", "tag", "untag", "delete", "save"] {
        assert!(
            out.lines().any(|l| l == action),
            "no {action} event in:\n{out}"
        );
    }
}
