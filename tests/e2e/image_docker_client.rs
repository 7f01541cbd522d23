//! The real docker clients (Debian's 20.10 and the machines' 28.x) against `vch daemon`:
//! `docker load` (file and stdin), `docker import` (file and stdin, with `--change`),
//! `docker images`, `docker tag`, `docker image inspect`, `docker run` of a loaded image (its
//! config applied, its Healthcheck refused with a warning), `docker save` (file and stdout),
//! `docker rmi` with docker's rules, and the image events.

use std::io::Read;
use std::path::Path;

use e2e::docker::{client, Daemon, DEBIAN_CLIENT, NEW_CLIENT};
use e2e::images::{busybox_layer, config, docker_save};
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
    let daemon = Daemon::start();
    let dir = daemon.state.path();
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

    for (n, path) in [DEBIAN_CLIENT, NEW_CLIENT].iter().enumerate() {
        let client = client(path);
        let client = client.as_path();
        let run = |args: &[&str]| daemon.docker_with(client, args, None);
        let with_stdin = |args: &[&str], file: &Path| {
            let bytes = std::fs::read(file).expect("read stdin file");
            daemon.docker_with(client, args, Some(&bytes))
        };
        let docker = |args: &[&str]| {
            let (code, out, err) = run(args);
            assert_eq!(
                code,
                0,
                "{path} {args:?}: {err}\ndaemon log:\n{}",
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
        assert_eq!(out, format!("Loaded image: {tag}\n"), "{path}");
        let (code, out, err) = with_stdin(&["load"], &archive);
        assert_eq!(
            (code, out),
            (0, format!("Loaded image: {tag}\n")),
            "{path}: {err}"
        );

        // import: a file with a name, stdin with a change.
        let imported = format!("tether-e2e/imported:{n}");
        let (out, _) = docker(&["import", rootfs.to_str().expect("path"), &imported]);
        let imported_id = out.trim().to_owned();
        assert!(
            imported_id.starts_with("sha256:")
                && imported_id.len() == 71
                && out.lines().count() == 1,
            "{path} import printed {out:?}"
        );
        let (code, out, err) = with_stdin(
            &[
                "import",
                "--change",
                "CMD [\"/bin/echo\", \"imported\"]",
                "-",
            ],
            &rootfs,
        );
        assert_eq!(code, 0, "{path} import -: {err}");
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
            .unwrap_or_else(|| panic!("{path} images:\n{out}"));
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
        assert_eq!(out.trim(), imported_id, "{path}");

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
            "{path}"
        );
        let (out, _) = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            &untagged_id[7..],
        ]);
        assert_eq!(out.trim(), "[\"/bin/echo\",\"imported\"]", "{path}");

        // run: the image's Cmd, Env and WorkingDir; its Healthcheck is refused with a warning.
        let name = format!("dc-run-{n}");
        let (code, out, err) = run(&["run", "--name", &name, "--network", "none", &copy]);
        assert_eq!(code, 0, "{path} run: {err}\n{}", daemon.log());
        assert_eq!(out, "from the image in /tmp\n", "{path}: {err}");
        assert!(
            err.contains("WARNING: The image's Healthcheck"),
            "{path}: {err}"
        );

        // save: to a file and to stdout; the archive names what was asked for.
        let saved = dir.join(format!("saved{n}.tar"));
        docker(&["save", "-o", saved.to_str().expect("path"), &tag]);
        let m = saved_manifest(&saved);
        assert_eq!(m[0]["RepoTags"], json!([tag]), "{path}: {m}");
        assert_eq!(
            m[0]["Config"],
            json!(format!("blobs/sha256/{}", &id[7..])),
            "{m}"
        );
        let to_stdout = dir.join(format!("stdout{n}.tar"));
        let saved_out = std::process::Command::new(client)
            .args(["save", &imported])
            .envs(daemon.env())
            .stdout(std::fs::File::create(&to_stdout).expect("create"))
            .output()
            .expect("docker save > file");
        let (code, err) = (
            saved_out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&saved_out.stderr).into_owned(),
        );
        assert_eq!(code, 0, "{path} save > file: {err}");
        let m = saved_manifest(&to_stdout);
        assert_eq!(m[0]["RepoTags"], json!([imported]), "{path}: {m}");

        // rmi: docker's rules and words.
        let (code, _, err) = run(&["rmi", &id[7..19]]);
        assert_eq!(
            code, 1,
            "{path}: rmi of an image in use and in several repositories"
        );
        assert!(
            err.contains("Error response from daemon: conflict: unable to delete"),
            "{err}"
        );
        let (out, _) = docker(&["rmi", &copy]);
        assert_eq!(out, format!("Untagged: {copy}\n"), "{path}");
        docker(&["rm", &name]);
        let (out, _) = docker(&["rmi", &imported]);
        assert_eq!(
            out,
            format!("Untagged: {imported}\nDeleted: {imported_id}\n"),
            "{path}"
        );
        let (out, _) = docker(&["rmi", &untagged_id[7..19]]);
        assert_eq!(out, format!("Deleted: {untagged_id}\n"), "{path}");
        // Its last name, no container left: the image goes with it.
        let (out, _) = docker(&["rmi", &tag]);
        assert_eq!(out, format!("Untagged: {tag}\nDeleted: {id}\n"), "{path}");
        let (code, _, err) = run(&["rmi", "tether-e2e/no-such:1"]);
        assert_eq!(code, 1);
        assert!(err.contains("No such image: tether-e2e/no-such:1"), "{err}");

        // A broken archive is the daemon's clear error, and the client's exit status 1.
        let cut = dir.join(format!("cut{n}.tar"));
        let whole = std::fs::read(&archive).expect("read archive");
        std::fs::write(&cut, &whole[..whole.len() / 2]).expect("write");
        let (code, _, err) = run(&["load", "-i", cut.to_str().expect("path")]);
        assert_eq!(code, 1, "{path} loaded half an archive");
        assert!(
            err.contains("Error response from daemon") && err.contains("truncated"),
            "{err}"
        );
    }

    // The image events the engine published, as `docker events` reports them.
    let (code, out, err) = daemon.docker(&[
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
    ]);
    assert_eq!(code, 0, "{err}");
    for action in ["load", "import", "tag", "untag", "delete", "save"] {
        assert!(
            out.lines().any(|l| l == action),
            "no {action} event in:\n{out}"
        );
    }
}
