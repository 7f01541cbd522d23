//! What the tether writes back (started, exit status, start and stop times) is visible to the
//! host, and `vch inspect` shows it.

use e2e::vch;

#[test]
fn writeback_is_visible_with_vch_inspect() {
    let state = tempfile::Builder::new()
        .prefix("e2e")
        .tempdir_in("/tmp")
        .unwrap();
    let (code, _, stderr) = vch(
        state.path(),
        &[
            "run",
            "--name",
            "wb",
            "--timeout",
            "90",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 1; exit 3",
        ],
    );
    assert_eq!(code, 3, "stderr: {stderr}");
    let (code, out, stderr) = vch(state.path(), &["inspect", "wb"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    let id = doc["Id"].as_str().unwrap().to_owned();
    assert_eq!(doc["Name"], "wb");
    assert_eq!(doc["State"], "Exited (3)");
    let session = &doc["Config"]["sessions"][&id];
    assert_eq!(session["started"], "true", "{out}");
    assert_eq!(session["exit_status"], 3, "{out}");
    let start = session["detail"]["start_time"].as_i64().unwrap();
    let stop = session["detail"]["stop_time"].as_i64().unwrap();
    assert!(start > 1_700_000_000, "start time {start}");
    assert!(stop > start, "stop {stop} start {start}");
    assert_eq!(session["run_block"], false);
    // Boot timing stamps (CLOCK_BOOTTIME, microseconds), present and in boot order.
    let stamps = &doc["Config"]["tether"]["boot_stamps"];
    let us = |k: &str| {
        stamps[k]
            .as_i64()
            .unwrap_or_else(|| panic!("stamp {k} missing: {stamps}"))
    };
    assert!(us("pid1") > 0);
    assert!(
        us("pid1") <= us("config")
            && us("config") <= us("disks")
            && us("disks") <= us("network")
            && us("network") <= us("exec"),
        "{stamps}"
    );
    // The finer stamps the README lists, in the order boot takes them; `output` is the
    // entrypoint's first output (`echo up`) in the tether's hands.
    let order = [
        "pid1", "early", "platform", "fetched", "config", "disks", "network", "runtime", "launch",
        "spawned", "exec", "output",
    ];
    for pair in order.windows(2) {
        assert!(
            us(pair[0]) <= us(pair[1]),
            "{} after {}: {stamps}",
            pair[0],
            pair[1]
        );
    }
    // The same, readable: the kernel's time to PID 1 and each stage of the tether's start.
    let boot = &doc["Boot"];
    let kernel = boot["KernelToPid1Ms"].as_f64().unwrap();
    assert!((kernel - us("pid1") as f64 / 1000.0).abs() < 0.1, "{boot}");
    let total = boot["Pid1ToExecMs"].as_f64().unwrap();
    assert!(
        (total - (us("exec") - us("pid1")) as f64 / 1000.0).abs() < 0.1,
        "{boot}"
    );
    let stages: Vec<&str> = boot["Stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["config", "disks", "network", "exec"], "{boot}");
    let took: f64 = boot["Stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["TookMs"].as_f64().unwrap())
        .sum();
    assert!(
        (took - total).abs() < 0.5,
        "stages add up to {took}, not {total}: {boot}"
    );
}
