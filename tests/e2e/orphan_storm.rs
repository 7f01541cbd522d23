//! 10,000 orphans created at once and exiting together: the tether reaps them all, none is
//! left as a zombie, and the guest measures the time from their release to zero zombies
//! (printed beside the time the same guest needs to see 10,000 processes exit at all).

use e2e::Vch;

/// How many orphans.
const ORPHANS: u32 = 10_000;

/// Every orphan is a forked shell (no exec: cheap) blocked opening a FIFO for reading. The
/// subshell that forked them exits, so they are the tether's; once all sleep there, opening the FIFO for writing
/// releases them all at once and closing it lets them all read EOF and exit. The guest
/// then counts, from one `cat` of every `/proc/*/stat` (each pass is the clock's grain),
/// the orphans still alive and the zombies, until both are zero, and prints the times
/// from the release (in `/proc/uptime`'s hundredths of a second).
const SCRIPT: &str = r#"
    up() { read u _ < /proc/uptime; echo ${u%.*}${u#*.}; }
    mkfifo /tmp/go
    (i=0; while [ $i -lt $N ]; do (read x < /tmp/go) & i=$((i+1)); done)
    count() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v me=$$ '$1 != me && $4 == 1 && $2 == "(sh)" { if ($3 == "Z") z++; else a++; if ($3 == "S") s++ } END { print a+0, z+0, s+0 }'; }
    while set -- $(count); [ "$3" -lt $N ]; do sleep 1; done
    echo blocked=$3
    t0=$(up)
    exec 3>/tmp/go; exec 3>&-
    gone=""; zmax=0; scans=0
    while :; do
        set -- $(count)
        t=$(up); scans=$((scans+1))
        [ "$2" -gt $zmax ] && zmax=$2
        if [ -z "$gone" ] && [ "$1" = 0 ]; then gone=$t; fi
        [ "$1" = 0 ] && [ "$2" = 0 ] && break
    done
    echo alive_gone_cs=$((gone - t0)) zero_zombies_cs=$((t - t0)) zombies=$2 most_zombies_seen=$zmax scans=$scans
"#;

#[test]
fn ten_thousand_orphans_are_reaped() {
    let script = format!("N={ORPHANS}; {SCRIPT}");
    let vch = Vch::new();
    // Each blocked shell costs the guest kernel a task, a stack and page tables: the
    // kernel's task limit (threads-max) grows with memory, 1822 at 256 MiB. Forking 10,000
    // shells under TCG takes a while, hence the longer hard limit.
    let (code, stdout, stderr) = vch.cmd(&[
        "run",
        "--memory",
        "4096",
        "--timeout",
        "600",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let get = |k: &str| -> i64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    assert_eq!(get("blocked="), i64::from(ORPHANS), "stdout:\n{stdout}");
    assert_eq!(get("zombies="), 0, "stdout:\n{stdout}");
    let (gone, zero) = (get("alive_gone_cs="), get("zero_zombies_cs="));
    assert!(gone >= 0 && zero >= gone, "stdout:\n{stdout}");
    // A figure, not a bound: the scan's own grain is in it.
    eprintln!(
        "orphan storm: {ORPHANS} orphans; release -> none alive {:.2} s, -> no zombies {:.2} s; most zombies seen in one scan {} over {} scans (guest /proc/uptime, one /proc scan per step)",
        gone as f64 / 100.0,
        zero as f64 / 100.0,
        get("most_zombies_seen="),
        get("scans="),
    );
}
