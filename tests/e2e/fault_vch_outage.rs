//! The VCH goes away for a long time: the container's keeper is stopped (SIGSTOP: its
//! sockets stay open but nothing answers) for 15 s, 60 s in the long variant
//! (`TETHER_E2E_LONG=1`), while the container keeps writing. Nothing in the guest blocks
//! (the output keeps growing during the outage) or grows without bound (the tether's RSS,
//! sampled in the guest each second, is printed beside its value before the outage; the
//! bound is the output queue, 64 records of at most 60 KiB, plus each attached client's
//! queue of as many), and the output is whole afterwards.

use std::time::{Duration, Instant};

use e2e::faults;
use e2e::Vch;

const BATCH: u64 = 2000;

/// Samples the tether's RSS (kB) with the guest's uptime, every second, into /tmp/rss.
const SAMPLER: &str = "(while [ ! -e /tmp/stop ]; do read u _ < /proc/uptime; \
    echo \"# rss $u $(awk '/VmRSS/ { print $2 }' /proc/1/status)\" >> /tmp/rss; sleep 1; done) &\n";

#[test]
fn keeper_gone_for_a_long_time() {
    let outage = if faults::long_scenarios() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(15)
    };
    let vch = Vch::new();
    let writer = faults::line_writer(BATCH, 0, 0).replace("exit 0", "cat /tmp/rss; exit 0");
    let script = format!("{SAMPLER}{writer}");
    let id = vch.run_detached(&[
        "--name",
        "away",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    let log = vch
        .dir
        .path()
        .join("vms")
        .join(&id[..12])
        .join("output.log");
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(
        vch.wait_until(Duration::from_secs(60), || size() > 1_000_000),
        "no output"
    );
    let (code, up, err) = vch.cmd(&["exec", "away", "cat", "/proc/uptime"]);
    assert_eq!(code, 0, "{err}");
    let outage_from: f64 = up
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime");

    let keeper = faults::keeper_pid(&vch, &id).expect("keeper");
    let pid = nix::unistd::Pid::from_raw(keeper);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop the keeper");
    let before = size();
    let t = Instant::now();
    std::thread::sleep(outage);
    let during = size() - before;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("continue the keeper");
    let outage_took = t.elapsed();

    let (code, out, err) = vch.cmd(&["exec", "away", "echo", "back"]);
    assert_eq!((code, out.as_str()), (0, "back\n"), "{err}");
    let (code, _, err) = vch.cmd(&["exec", "away", "touch", "/tmp/stop"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = vch.cmd(&["wait", "away"]);
    assert_eq!((code, out.trim()), (0, "0"), "{err}");

    let stdout = vch.cmd(&["logs", "--stdout", "away"]).1;
    // `logs` writes the container's stderr to its own stderr, as docker does.
    let stderr = vch.cmd(&["logs", "--stderr", "away"]).2;
    let wrote: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .and_then(|n| n.parse().ok())
        .expect("summary line");
    let samples: Vec<(f64, u64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# rss "))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    let kept: String = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = faults::check_lines(&kept, "out", wrote);
    let errs = faults::check_lines(&stderr, "err", wrote);
    assert_eq!(
        (out.lost, out.duplicated, out.out_of_order, out.malformed),
        (0, 0, 0, 0),
        "{out:?}"
    );
    assert_eq!(
        (
            errs.lost,
            errs.duplicated,
            errs.out_of_order,
            errs.malformed
        ),
        (0, 0, 0, 0),
        "{errs:?}"
    );

    let outage_to = outage_from + outage_took.as_secs_f64();
    let max =
        |r: &dyn Fn(f64) -> bool| samples.iter().filter(|(u, _)| r(*u)).map(|(_, k)| *k).max();
    let before_rss = max(&|u| u < outage_from);
    let during_rss = max(&|u| u >= outage_from && u <= outage_to);
    let after_rss = max(&|u| u > outage_to);
    eprintln!(
        "VCH outage: keeper stopped {outage_took:.1?}; the workload wrote {:.1} MB meanwhile; \
         tether RSS max before {before_rss:?} kB, during {during_rss:?} kB, after {after_rss:?} kB; \
         {wrote} lines per stream, none lost",
        during as f64 / 1e6
    );
    assert!(during > 0, "the workload was blocked during the outage");
    assert!(
        during_rss.is_some(),
        "no RSS sample during the outage: {samples:?}"
    );
}
