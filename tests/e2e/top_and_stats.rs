//! `vch top` lists the guest's processes as `ps` does (`-ef` by default, `aux`), and `vch
//! stats --no-stream` shows the VM's memory in use, which grows by what the workload
//! allocates.

use std::time::Duration;

use e2e::Vch;

/// The MEM USAGE column of `vch stats --no-stream`, in MiB.
fn mem_usage_mib(vch: &Vch, name: &str) -> f64 {
    let (code, out, err) = vch.cmd(&["stats", "--no-stream", name]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no row: {out}"));
    let usage = row
        .split("   ")
        .map(str::trim)
        .find(|c| c.contains(" / "))
        .unwrap_or_else(|| panic!("no MEM USAGE column: {out}"));
    let first = usage.split(" / ").next().unwrap();
    let (num, unit) = first.split_at(first.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let v: f64 = num.parse().unwrap();
    match unit {
        "B" => v / 1048576.0,
        "KiB" => v / 1024.0,
        "MiB" => v,
        "GiB" => v * 1024.0,
        _ => panic!("unit {unit} in {out}"),
    }
}

#[test]
fn top_lists_processes_and_stats_show_memory_growing() {
    let vch = Vch::new();
    vch.run_detached(&[
        "--name",
        "svc",
        "--memory",
        "512",
        "busybox",
        "sh",
        "-c",
        "sleep 600",
    ]);
    assert!(vch.wait_until(Duration::from_secs(60), || {
        vch.cmd(&["exec", "svc", "true"]).0 == 0
    }));
    let (code, out, err) = vch.cmd(&["top", "svc"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap_or_default();
    for col in ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"] {
        assert!(header.contains(col), "{out}");
    }
    let sleeper = out
        .lines()
        .find(|l| l.ends_with("sleep 600"))
        .unwrap_or_else(|| panic!("no sleep 600 in:\n{out}"));
    assert!(sleeper.starts_with("root"), "{sleeper}");
    assert!(
        !out.contains("[kthreadd]"),
        "kernel threads are not listed:\n{out}"
    );
    let (code, out, err) = vch.cmd(&["top", "svc", "aux"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().next().unwrap_or_default().contains("%MEM"),
        "{out}"
    );
    assert!(out.contains("sleep 600"), "{out}");
    let (code, _, err) = vch.cmd(&["top", "svc", "-o", "pid"]);
    assert_ne!(code, 0);
    assert!(err.contains("not supported"), "{err}");

    // Stats: the limit is the VM's memory; 128 MiB held by a process shows.
    let (code, out, err) = vch.cmd(&["stats", "--no-stream", "svc"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/ 512MiB"), "{out}");
    assert!(
        out.lines().next().unwrap_or_default().contains("NET I/O"),
        "{out}"
    );
    let before = mem_usage_mib(&vch, "svc");
    let hold = "awk 'BEGIN { s = \"x\"; for (i = 0; i < 27; i++) s = s s; \
                print length(s) > \"/tmp/held\"; close(\"/tmp/held\"); system(\"sleep 600\") }' \
                >/dev/null 2>&1 &";
    let (code, _, err) = vch.cmd(&["exec", "svc", "sh", "-c", hold]);
    assert_eq!(code, 0, "{err}");
    assert!(vch.wait_until(Duration::from_secs(60), || {
        vch.cmd(&["exec", "svc", "cat", "/tmp/held"]).1.trim() == "134217728"
    }));
    let after = mem_usage_mib(&vch, "svc");
    assert!(
        after - before >= 100.0,
        "memory in use went from {before} MiB to {after} MiB"
    );
    // A stopped container has no processes to list.
    vch.cmd(&["stop", "-t", "1", "svc"]);
    let (code, _, err) = vch.cmd(&["top", "svc"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not running"), "{err}");
}
