//! `vch attach` to a running container sees its output; two attachers both see it; one
//! detaching (or the VCH connection dropping) affects no other, and attaching again works.

use std::time::Duration;

/// Counts, naming its own PID on each line: `tick N PID`.
const TICKER: &str = "i=0; while true; do echo tick $i $$; i=$((i+1)); sleep 0.3; done";

/// (count, PID) of a ticker line.
fn tick(line: &str) -> (u64, u32) {
    let mut f = line.split_whitespace().skip(1);
    let n = f.next().and_then(|v| v.parse().ok());
    let pid = f.next().and_then(|v| v.parse().ok());
    n.zip(pid)
        .unwrap_or_else(|| panic!("not a ticker line: {line:?}"))
}

#[test]
fn attach_sees_output_and_two_attachers_both_do() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&["--name", "ticker", "busybox", "sh", "-c", TICKER]);
    assert_eq!(id.len(), 64);
    let mut a = vch.spawn(&["attach", "ticker"]);
    let mut b = vch.spawn(&["attach", &id[..12]]);
    let la = a
        .expect_line("tick", Duration::from_secs(60))
        .expect("first attacher sees output");
    let lb = b
        .expect_line("tick", Duration::from_secs(60))
        .expect("second attacher sees output");
    assert!(la.starts_with("tick ") && lb.starts_with("tick "));
    // One goes away; the other keeps receiving.
    a.kill();
    let (n, p) = tick(&b.expect_line("tick", Duration::from_secs(20)).unwrap());
    let (m, q) = tick(&b.expect_line("tick", Duration::from_secs(20)).unwrap());
    assert_eq!(m, n + 1, "ticks arrive in order without gaps");
    assert_eq!(p, q);
}

#[test]
fn dropped_vch_connection_then_attach_again() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&["--name", "drop", "busybox", "sh", "-c", TICKER]);
    let mut first = vch.spawn(&["attach", "drop"]);
    first
        .expect_line("tick", Duration::from_secs(60))
        .expect("output before the drop");
    let session = |doc: &serde_json::Value| doc["Config"]["sessions"][&id].clone();
    let started_at = session(&vch.inspect("drop"))["detail"]["start_time"].clone();
    assert!(started_at.as_i64().is_some_and(|t| t > 0), "{started_at}");
    let (code, _, err) = vch.cmd(&["debug-drop-backchannel", "drop"]);
    assert_eq!(code, 0, "{err}");
    // The first attachment ends with the connection; the container keeps running.
    assert!(
        first.wait(Duration::from_secs(30)).is_some(),
        "attach did not notice the drop"
    );
    let mut second = vch.spawn(&["attach", "drop"]);
    let line = second
        .expect_line("tick", Duration::from_secs(60))
        .expect("output after reconnecting");
    let (before, pid_before) = first.seen.last().map(|l| tick(l)).unwrap();
    let (after, pid_after) = tick(&line);
    // The same process went on counting: not a relaunch, which would count from 0 again
    // under another PID.
    assert_eq!(pid_after, pid_before, "another process after the drop");
    assert!(
        after > before,
        "the process kept running across the drop ({before} -> {after})"
    );
    let doc = vch.inspect("drop");
    assert_eq!(doc["State"], "Up", "{doc}");
    assert_eq!(
        session(&doc)["detail"]["start_time"],
        started_at,
        "relaunched"
    );
    assert_eq!(
        session(&doc)["diagnostics"]["resurrection_count"].as_i64(),
        Some(0)
    );
}
