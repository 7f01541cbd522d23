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
            "sleep 1; exit 3",
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
}
