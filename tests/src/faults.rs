//! Helpers for the fault scenarios: the numbered-line workload and its check, the keeper's
//! PID and back-channel port, cutting the back-channel's TCP connection, a pseudo-random
//! pause.

use std::path::Path;
use std::time::Duration;

use crate::Vch;

/// Whether the long variants run (`TETHER_E2E_LONG`, which `.ci/run` sets): the 100 MB storm,
/// the 60 s outage, the 30 s clock pauses.
pub fn long_scenarios() -> bool {
    std::env::var_os("TETHER_E2E_LONG").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Bytes of one workload line, newline included.
pub const LINE_BYTES: usize = 100;

/// A workload that writes numbered lines, alternating stdout (`out N ...`) and stderr
/// (`err N ...`), each [`LINE_BYTES`] long, in batches of `batch` per stream, until
/// `/tmp/stop` exists and at least `min_batches` batches are out; then it prints how many
/// lines it wrote per stream (`wrote N`, on stdout) and exits with `code`.
pub fn line_writer(batch: u64, min_batches: u64, code: i32) -> String {
    // The padding makes each line LINE_BYTES long: "out " + 9 digits + " " + pad + "\n".
    let pad = "x".repeat(LINE_BYTES - 15);
    format!(
        r#"b=0
while [ ! -e /tmp/stop ] || [ $b -lt {min_batches} ]; do
    awk -v s=$((b*{batch})) -v n={batch} 'BEGIN {{ for (i = s; i < s + n; i++) {{ printf "out %09d {pad}\n", i; printf "err %09d {pad}\n", i | "cat 1>&2" }} }}'
    b=$((b+1))
done
echo "wrote $((b*{batch}))"
exit {code}"#
    )
}

/// What [`check_lines`] found in one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCheck {
    pub lines: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub malformed: u64,
}

/// Checks one stream's log (`tag` is `out` or `err`) against the `expected` numbered lines
/// 0..expected: each once, in order, whole.
pub fn check_lines(log: &str, tag: &str, expected: u64) -> StreamCheck {
    let pad = "x".repeat(LINE_BYTES - 15);
    let mut c = StreamCheck::default();
    let mut seen = vec![false; expected as usize];
    let mut last: Option<u64> = None;
    for line in log.lines() {
        if line.starts_with("wrote ") {
            continue;
        }
        c.lines += 1;
        let n = line
            .strip_prefix(tag)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|r| r.split_once(' '))
            .filter(|(_, p)| *p == pad)
            .and_then(|(n, _)| n.parse::<u64>().ok());
        let Some(n) = n.filter(|n| *n < expected) else {
            c.malformed += 1;
            continue;
        };
        if seen[n as usize] {
            c.duplicated += 1;
        }
        seen[n as usize] = true;
        if last.is_some_and(|l| n <= l) {
            c.out_of_order += 1;
        }
        last = Some(n);
    }
    c.lost = seen.iter().filter(|s| !**s).count() as u64;
    c
}

/// The VM's metadata as the harness keeps it.
pub fn meta(vch: &Vch, id: &str) -> serde_json::Value {
    let path = vch.dir.path().join("vms").join(&id[..12]).join("meta.json");
    let text = std::fs::read_to_string(&path).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

/// The PID of the VM's keeper.
pub fn keeper_pid(vch: &Vch, id: &str) -> Option<i32> {
    meta(vch, id)["keeper_pid"].as_i64().map(|p| p as i32)
}

/// SIGKILLs the VM's keeper and waits until it is gone.
pub fn kill_keeper(vch: &Vch, id: &str) -> i32 {
    let pid = keeper_pid(vch, id).expect("a keeper runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the keeper");
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });
    assert!(gone, "keeper {pid} did not die");
    pid
}

/// Cuts the TCP connection the VM's back-channel device dials (`ss -K`: the kernel aborts
/// the socket, as a network failure would; needs root). Returns whether one was cut.
pub fn cut_backchannel(vch: &Vch, id: &str) -> bool {
    let port = meta(vch, id)["attach_port"]
        .as_u64()
        .expect("the VM's back-channel port");
    let out = std::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "dst",
            "127.0.0.1",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("ss (iproute2) must be installed");
    assert!(out.status.success(), "ss -K: {out:?}");
    String::from_utf8_lossy(&out.stdout).contains("ESTAB")
}

/// A small pseudo-random sequence (xorshift), seeded from the clock unless `TETHER_FAULT_SEED`
/// is set: the scenario prints its seed so a failing run can be repeated.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("TETHER_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("fault seed: TETHER_FAULT_SEED={seed}");
        Rng(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A pause between `lo` and `hi`.
    pub fn pause(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.draw() % span)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_check_counts_what_is_wrong() {
        let pad = "x".repeat(LINE_BYTES - 15);
        let l = |n: u64| format!("out {n:09} {pad}\n");
        let good: String = (0..4).map(l).collect();
        assert_eq!(
            check_lines(&good, "out", 4),
            StreamCheck {
                lines: 4,
                ..Default::default()
            }
        );
        let bad = format!("{}{}{}{}err 000000003 {pad}\n", l(0), l(2), l(2), l(1));
        let c = check_lines(&bad, "out", 4);
        assert_eq!(
            (c.lost, c.duplicated, c.out_of_order, c.malformed),
            (1, 1, 2, 1)
        );
        assert_eq!(l(7).len(), LINE_BYTES);
    }
}
