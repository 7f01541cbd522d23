//! PID 1 reaps orphans: 500 background sleepers whose parent exited are re-parented to the
//! tether, and none is left as a zombie after they end.

#[test]
fn five_hundred_orphans_are_reaped() {
    // The subshell starts the sleepers and exits at once, orphaning them. Count them while
    // they run (state not Z), wait until none runs, then count zombies (state Z). If the
    // tether did not reap, the zombies stay and the count says so.
    let script = r#"
        count() {
            n=0
            for f in /proc/[0-9]*/stat; do
                if ! read -r p c s r 2>/dev/null < $f; then continue; fi
                if [ "$c" != "(sleep)" ]; then continue; fi
                if [ "$1" = Z ]; then [ "$s" = Z ] && n=$((n+1)); else [ "$s" != Z ] && n=$((n+1)); fi
            done
            echo $n
        }
        (for i in $(seq 500); do sleep 15 & done)
        echo running=$(count R)
        while [ "$(count R)" -gt 0 ]; do sleep 1; done
        sleep 1
        echo zombies=$(count Z)
    "#;
    let r = e2e::run("busybox", &["sh", "-c", script]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 0, "stderr: {}", r.stderr);
    let get = |k: &str| -> i64 {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    assert_eq!(get("running="), 500, "stdout:\n{}", r.stdout);
    assert_eq!(get("zombies="), 0, "stdout:\n{}", r.stdout);
}
