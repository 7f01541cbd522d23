//! 10,000 orphans created at once and exiting together: the tether reaps them all, none is
//! left as a zombie, and the guest measures the time from their release until every one has
//! exited and been reaped.

use e2e::Vch;

/// How many orphans.
const ORPHANS: u32 = 10_000;

/// Every orphan is a forked shell (no exec: cheap) blocked opening a FIFO for reading. The
/// subshell that forked them exits, so they are the tether's; once all sleep there, opening
/// the FIFO for writing releases them all at once and closing it lets them all read EOF and
/// exit. The clock then runs until the kernel's count of tasks (`/proc/loadavg`'s fourth
/// field, which counts a zombie until its parent reaps it) is back at what it was before the
/// orphans were made: every orphan exited and was reaped. That poll is a shell builtin reading
/// one small file (no fork, no scan of 10,000 `/proc` entries, which takes ~50 s under TCG),
/// so its grain is far below the figure. A full scan afterwards checks that no zombie is left.
const SCRIPT: &str = r#"
    up() { read u _ < /proc/uptime; echo ${u%.*}${u#*.}; }
    mkfifo /tmp/go
    read _ _ _ rt _ < /proc/loadavg; base=${rt#*/}
    (i=0; while [ $i -lt $N ]; do (read x < /tmp/go) & i=$((i+1)); done)
    count() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v me=$$ '$1 != me && $4 == 1 && $2 == "(sh)" { if ($3 == "Z") z++; else a++; if ($3 == "S") s++ } END { print a+0, z+0, s+0 }'; }
    while set -- $(count); [ "$3" -lt $N ]; do sleep 1; done
    echo blocked=$3
    t0=$(up)
    exec 3>/tmp/go; exec 3>&-
    polls=0; reaped=-1
    while :; do
        read _ _ _ rt _ < /proc/loadavg
        if [ "${rt#*/}" -le "$base" ]; then t=$(up); reaped=$((t - t0)); break; fi
        polls=$((polls+1))
        # A kernel thread started meanwhile would keep the count up: give up after 120 s.
        if [ $((polls % 512)) = 0 ] && [ $(($(up) - t0)) -gt 12000 ]; then break; fi
    done
    left=$((${rt#*/} - base))
    set -- $(count)
    echo reaped_cs=$reaped polls=$polls tasks_over_start=$left alive=$1 zombies=$2
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
    assert_eq!(get("alive="), 0, "stdout:\n{stdout}");
    let reaped = get("reaped_cs=");
    assert!(
        reaped >= 0,
        "the task count did not come back to its start within 120 s\nstdout:\n{stdout}"
    );
    // A figure, not a bound (the goal is 1 s under TCG; the closing note reports it).
    eprintln!(
        "orphan storm: {ORPHANS} orphans released at once -> all exited and reaped (the kernel's task count back to its start) in {:.2} s, {} polls of /proc/loadavg (guest /proc/uptime)",
        reaped as f64 / 100.0,
        get("polls="),
    );
}
