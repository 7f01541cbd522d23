//! A workload that sends every signal, round after round, to PID 1 and to its own process
//! group: the tether ignores what is not its business, the workload gets what it trapped,
//! execs keep answering during the storm, and the workload's own exit is what is reported.

use std::time::Duration;

use e2e::Vch;

/// The storm: the shell traps every signal it can (so the group's signals count instead of
/// killing it; KILL and STOP cannot be trapped and go to PID 1 only), then sends signals
/// 1..=64 to PID 1 and to its group until told to stop.
const STORM: &str = r#"
    n=0
    for s in $(seq 1 64); do
        case $s in 9|19|32|33) ;; *) trap 'n=$((n+1))' $s 2>/dev/null ;; esac
    done
    echo storming
    rounds=0
    while [ ! -e /tmp/enough ]; do
        for s in $(seq 1 64); do
            case $s in 32|33) continue ;; esac
            kill -$s 1 2>/dev/null
            case $s in 9|19) ;; *) kill -$s 0 2>/dev/null ;; esac
        done
        rounds=$((rounds+1))
    done
    echo rounds=$rounds trapped=$n
    exit 3
"#;

#[test]
fn every_signal_to_pid1_and_the_group() {
    let vch = Vch::new();
    let id = vch.run_detached(&[
        "--name",
        "storm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        STORM,
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", "storm"])
            .1
            .contains("storming")),
        "{:?}",
        vch.cmd(&["logs", "storm"])
    );
    // Execs answer while the storm goes on (each also costs the tether a reload).
    for i in 0..3 {
        let (code, out, err) = vch.cmd(&["exec", "storm", "echo", &format!("exec {i}")]);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("exec {i}\n").as_str()),
            "{err}"
        );
    }
    let (code, _, err) = vch.cmd(&["exec", "storm", "touch", "/tmp/enough"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = vch.cmd(&["wait", "storm"]);
    assert_eq!(code, 0, "{err}");
    let doc = vch.inspect("storm");
    assert_eq!(doc["State"], "Exited (3)", "{doc}");
    assert_eq!(
        doc["Config"]["sessions"][&id]["diagnostics"]["resurrection_count"].as_i64(),
        Some(0)
    );
    let logs = vch.cmd(&["logs", "storm"]).1;
    let line = logs
        .lines()
        .find(|l| l.starts_with("rounds="))
        .unwrap_or_else(|| panic!("no summary: {logs:?}"));
    let num = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(num("rounds=") >= 1, "{line}");
    assert!(
        num("trapped=") >= 1,
        "the group's signals did not arrive: {line}"
    );
    eprintln!("signal storm: {line}");
}
