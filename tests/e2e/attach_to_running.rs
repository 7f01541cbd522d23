//! `vch attach` to a running container sees its output; two attachers both see it; one
//! detaching (or the VCH connection dropping) affects no other, and attaching again works.

use std::time::Duration;

const TICKER: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done";

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
    let n: u64 = b.expect_line("tick", Duration::from_secs(20)).unwrap()[5..]
        .parse()
        .unwrap();
    let m: u64 = b.expect_line("tick", Duration::from_secs(20)).unwrap()[5..]
        .parse()
        .unwrap();
    assert_eq!(m, n + 1, "ticks arrive in order without gaps");
}

#[test]
fn dropped_vch_connection_then_attach_again() {
    let vch = e2e::Vch::new();
    vch.run_detached(&["--name", "drop", "busybox", "sh", "-c", TICKER]);
    let mut first = vch.spawn(&["attach", "drop"]);
    first
        .expect_line("tick", Duration::from_secs(60))
        .expect("output before the drop");
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
    let before: u64 = first.seen.last().map(|l| l[5..].parse().unwrap()).unwrap();
    let after: u64 = line[5..].parse().unwrap();
    assert!(
        after > before,
        "the process kept running across the drop ({before} -> {after})"
    );
}
