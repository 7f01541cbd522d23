//! A container with a restart policy is relaunched when its process exits; the resurrection
//! count and the last exit records are written back.

use std::time::Duration;

#[test]
fn restart_always_counts_resurrections() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&[
        "--name",
        "phoenix",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "echo life; sleep 1; exit 3",
    ]);
    let resurrections = || {
        vch.inspect("phoenix")["Config"]["sessions"][&id]["diagnostics"]["resurrection_count"]
            .as_i64()
            .unwrap_or(0)
    };
    assert!(
        vch.wait_until(Duration::from_secs(120), || resurrections() >= 2),
        "no restarts: {}",
        vch.inspect("phoenix")
    );
    let doc = vch.inspect("phoenix");
    let logs = doc["Config"]["sessions"][&id]["diagnostics"]["exit_logs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!logs.is_empty() && logs.len() <= 5, "exit logs: {logs:?}");
    assert!(
        logs.iter().all(|l| l["exit_status"] == 3),
        "exit logs: {logs:?}"
    );
    assert_eq!(doc["State"], "Up");
    let (_, out, _) = vch.cmd(&["logs", "phoenix"]);
    assert!(out.matches("life").count() >= 2, "logs:\n{out}");
}
