//! A disconnect storm: while a container writes numbered lines to stdout and stderr, the
//! VCH side loses the VM 20 times at random moments, by turns the back-channel's TCP
//! connection cut under it (`ss -K`) and the keeper killed with SIGKILL (the next command
//! starts a keeper that adopts the running VM). After every fault an exec works and a
//! newly attached client receives output; at the end `vch logs` has every line once, in
//! order per stream, correctly tagged, and the container's exit status reaches the host.
//!
//! The long variant (`TETHER_E2E_LONG=1`, set by `.ci/run`) writes at least 100 MB.

use std::time::{Duration, Instant};

use e2e::faults::{self, Rng, LINE_BYTES};
use e2e::Vch;

const FAULTS: u32 = 20;
/// Lines per stream per batch of the workload.
const BATCH: u64 = 2000;

#[test]
fn disconnect_storm_loses_no_line() {
    let long = faults::long_scenarios();
    // 100 MB over both streams in the long variant.
    let min_batches = if long {
        (100_000_000 / (2 * LINE_BYTES as u64)).div_ceil(BATCH)
    } else {
        0
    };
    let vch = Vch::new();
    let script = faults::line_writer(BATCH, min_batches, 7);
    let id = vch.run_detached(&[
        "--name",
        "storm",
        "--network",
        "none",
        "--timeout",
        "1800",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", "--tail", "1", "storm"])
            .1
            .starts_with("out ")),
        "no output: {:?}",
        vch.cmd(&["logs", "--tail", "3", "storm"])
    );
    let mut rng = Rng::new();
    let t0 = Instant::now();
    let (mut cuts, mut kills) = (0, 0);
    for i in 0..FAULTS {
        std::thread::sleep(rng.pause(Duration::from_millis(100), Duration::from_millis(1500)));
        if i % 2 == 0 {
            // The connection exists once the port layer's handshake is through; right after
            // an adoption QEMU may not have redialled yet.
            let cut = (0..100).any(|_| {
                faults::cut_backchannel(&vch, &id) || {
                    std::thread::sleep(Duration::from_millis(100));
                    false
                }
            });
            assert!(cut, "fault {i}: no back-channel connection to cut");
            cuts += 1;
        } else {
            faults::kill_keeper(&vch, &id);
            kills += 1;
        }
        // An exec goes through (the first command after a kill starts the adopting keeper).
        let word = format!("after-fault-{i}");
        let (code, out, err) = vch.cmd(&["exec", "storm", "echo", &word]);
        assert_eq!(
            (code, out.trim()),
            (0, word.as_str()),
            "fault {i}: exec failed: {err}"
        );
        // A client attached now receives output.
        let mut attached = vch.spawn(&["attach", "storm"]);
        assert!(
            attached
                .expect_line("out ", Duration::from_secs(60))
                .is_some(),
            "fault {i}: an attached client got no output"
        );
        attached.kill();
        assert_eq!(vch.inspect("storm")["State"], "Up", "fault {i}");
    }
    let faulted_for = t0.elapsed();
    let (code, _, err) = vch.cmd(&["exec", "storm", "touch", "/tmp/stop"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = vch.cmd(&["wait", "storm"]);
    assert_eq!((code, out.trim()), (0, "7"), "{err}");
    assert_eq!(vch.inspect("storm")["State"], "Exited (7)");

    let (code, stdout, err) = vch.cmd(&["logs", "--stdout", "storm"]);
    assert_eq!(code, 0, "{err}");
    let wrote: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {:?}", stdout.lines().last()));
    // `logs` writes the container's stderr to its own stderr, as docker does.
    let (code, _, stderr) = vch.cmd(&["logs", "--stderr", "storm"]);
    assert_eq!(code, 0, "{stderr}");
    let out = faults::check_lines(&stdout, "out", wrote);
    let errs = faults::check_lines(&stderr, "err", wrote);
    let mb = (2 * wrote) as f64 * LINE_BYTES as f64 / 1e6;
    eprintln!(
        "disconnect storm: {FAULTS} faults ({cuts} TCP cuts, {kills} keeper kills) over {faulted_for:.1?}; \
         {wrote} lines per stream ({mb:.1} MB); stdout {out:?}; stderr {errs:?}"
    );
    assert_eq!(
        (out.lost, out.duplicated, out.out_of_order, out.malformed),
        (0, 0, 0, 0),
        "stdout: {out:?}"
    );
    assert_eq!(
        (
            errs.lost,
            errs.duplicated,
            errs.out_of_order,
            errs.malformed
        ),
        (0, 0, 0, 0),
        "stderr: {errs:?}"
    );
    assert_eq!((out.lines, errs.lines), (wrote, wrote));
}
