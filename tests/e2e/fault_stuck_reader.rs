//! An attached client that stops reading holds up neither the workload, nor its log, nor the
//! other attached clients. The workload measures its own throughput (the guest's
//! `/proc/uptime`) writing the same amount with no client, then with one stuck client (a
//! `vch attach` whose output nobody reads) beside a live one; both figures are printed.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::faults::{self, LINE_BYTES};
use e2e::Vch;

/// Lines per phase: 8 MB of output.
const LINES: u64 = 80_000;

fn phase(name: &str, start: u64) -> String {
    let pad = "x".repeat(LINE_BYTES - 15);
    format!(
        r##"read a _ < /proc/uptime
awk -v s={start} -v n={LINES} 'BEGIN {{ for (i = s; i < s + n; i++) printf "out %09d {pad}\n", i }}'
read b _ < /proc/uptime
echo "# {name} $a $b" >&2
"##
    )
}

#[test]
fn a_stuck_attacher_holds_up_nobody() {
    let vch = Vch::new();
    let script = format!(
        "{}while [ ! -e /tmp/go ]; do sleep 0.2; done\n{}while [ ! -e /tmp/stop ]; do sleep 0.2; done; exit 0",
        phase("alone", 0),
        phase("stuck", LINES)
    );
    let id = vch.run_detached(&[
        "--name",
        "slow",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(120), || vch
            .cmd(&["logs", "--stderr", "slow"])
            .2
            .contains("# alone")),
        "the first phase did not end"
    );
    // A client that never reads: its stdout is a pipe nobody drains.
    let mut stuck = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(vch.dir.path())
        .args(["attach", "slow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vch attach");
    let mut live = vch.spawn(&["attach", "slow"]);
    // Both are attached once the keeper has relayed the channel; give them a moment.
    std::thread::sleep(Duration::from_secs(3));
    let (code, _, err) = vch.cmd(&["exec", "slow", "touch", "/tmp/go"]);
    assert_eq!(code, 0, "{err}");
    // The live client sees the second phase to its last line.
    let last = format!("out {:09}", 2 * LINES - 1);
    assert!(
        live.expect_line(&last, Duration::from_secs(300)).is_some(),
        "the live client did not get the whole output; last seen {:?}",
        live.seen.last()
    );
    let (code, _, err) = vch.cmd(&["exec", "slow", "touch", "/tmp/stop"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = vch.cmd(&["wait", "slow"]);
    assert_eq!(code, 0, "{err}");
    let _ = stuck.kill();
    let _ = stuck.wait();

    let stdout = vch.cmd(&["logs", "--stdout", &id]).1;
    let c = faults::check_lines(&stdout, "out", 2 * LINES);
    assert_eq!(
        (c.lines, c.lost, c.duplicated, c.out_of_order, c.malformed),
        (2 * LINES, 0, 0, 0, 0),
        "{c:?}"
    );
    // `logs` writes the container's stderr to its own stderr, as docker does.
    let stderr = vch.cmd(&["logs", "--stderr", &id]).2;
    let rate = |name: &str| -> f64 {
        let l = stderr
            .lines()
            .find(|l| l.starts_with(&format!("# {name} ")))
            .unwrap_or_else(|| panic!("no {name} timing: {stderr:?}"));
        let v: Vec<f64> = l
            .split_whitespace()
            .skip(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        let secs = (v[1] - v[0]).max(0.01);
        (LINES * LINE_BYTES as u64) as f64 / 1e6 / secs
    };
    let (alone, with_stuck) = (rate("alone"), rate("stuck"));
    eprintln!(
        "stuck reader: workload throughput {alone:.1} MB/s with no client, {with_stuck:.1} MB/s with one stuck and one live client ({} MB each, guest clock)",
        LINES * LINE_BYTES as u64 / 1_000_000
    );
    // Not a speed bound: a stuck client that held the workload up would stop it for good
    // (a full pipe), and the live client's last line above would never come.
}
