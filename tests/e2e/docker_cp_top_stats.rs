//! The docker client's `cp` (both ways, running and stopped), `top`, `stats --no-stream`
//! and `inspect -f '{{.State.OOMKilled}}'` against a container VM, with Debian's 20.10
//! client and the newer static one.

use std::path::Path;

use e2e::docker::{client, Daemon, NEW_CLIENT};

#[test]
fn docker_cp_top_stats_and_oom() {
    let d = Daemon::start();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /data && echo inside > /data/f && sleep 600",
    ]);
    let local = tempfile::tempdir().unwrap();
    let l = |p: &str| local.path().join(p).display().to_string();
    assert!(e2e::docker::eventually(
        std::time::Duration::from_secs(60),
        || { d.docker(&["exec", "box", "test", "-e", "/data/f"]).0 == 0 }
    ));
    for (i, c) in [d.client.clone(), client(NEW_CLIENT)].iter().enumerate() {
        // Out: a file and a directory; in: a file and a directory to a new name.
        let out_f = l(&format!("f{i}"));
        let (code, _, err) = d.docker_with(c, &["cp", "box:/data/f", &out_f], None);
        assert_eq!(code, 0, "{err}\n{}", d.log());
        assert_eq!(std::fs::read_to_string(&out_f).unwrap(), "inside\n");
        let (code, _, err) = d.docker_with(c, &["cp", "box:/data", &l(&format!("d{i}"))], None);
        assert_eq!(code, 0, "{err}");
        assert!(Path::new(&l(&format!("d{i}/f"))).is_file());
        let src = local.path().join(format!("src{i}"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/g"), format!("from client {i}\n")).unwrap();
        let (code, _, err) = d.docker_with(
            c,
            &[
                "cp",
                &src.display().to_string(),
                &format!("box:/tmp/new{i}"),
            ],
            None,
        );
        assert_eq!(code, 0, "{err}\n{}", d.log());
        assert_eq!(
            d.ok(&["exec", "box", "cat", &format!("/tmp/new{i}/sub/g")]),
            format!("from client {i}")
        );
        let (code, _, err) = d.docker_with(c, &["cp", "box:/no/such", &l("x")], None);
        assert_ne!(code, 0);
        // A HEAD answer has no body: the clients word the 404 themselves.
        assert!(
            err.contains("Could not find the file") || err.contains("No such container:path"),
            "{err}"
        );
    }

    let top = d.ok(&["top", "box"]);
    assert!(
        top.lines().next().unwrap_or_default().contains("PID"),
        "{top}"
    );
    assert!(top.contains("sleep 600"), "{top}");
    let stats = d.ok(&["stats", "--no-stream", "box"]);
    assert!(
        stats.contains("MEM USAGE / LIMIT") && stats.contains("box"),
        "{stats}"
    );
    assert!(
        stats.contains("/ 256MiB"),
        "the VM's memory is the limit: {stats}"
    );
    let (code, stats_new, err) = d.docker_with(
        &client(NEW_CLIENT),
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.PIDs}}",
            "box",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(stats_new.starts_with("box "), "{stats_new}");

    // Stopped: cp still works both ways.
    d.ok(&["stop", "-t", "1", "box"]);
    d.ok(&["cp", &l("f0"), "box:/tmp/while-stopped"]);
    let (code, _, err) = d.docker(&["cp", "box:/tmp/while-stopped", &l("back")]);
    assert_eq!(code, 0, "{err}\n{}", d.log());
    assert_eq!(std::fs::read_to_string(l("back")).unwrap(), "inside\n");
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.OOMKilled}}",
            "box"
        ]),
        "false false"
    );

    // An OOM kill shows in State.OOMKilled.
    let (code, _, _) = d.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "160m",
        "busybox",
        "awk",
        "BEGIN { s = \"x\"; while (1) s = s s }",
    ]);
    assert_eq!(code, 137);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.ExitCode}}",
            "hog"
        ]),
        "true 137"
    );
}
