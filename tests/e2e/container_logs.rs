//! Session output loses nothing: large mixed stdout/stderr arrives complete, in order and
//! tagged; a process that prints one line and exits at once always has it in the log;
//! damage to the stored log is detected, counted and skipped; `vch logs` reads it like
//! docker (`-t`, `-f`, `--tail`, `--since`, `--stdout`, `--stderr`).

use std::time::Duration;

use qemu_harness::logs::LogReader;

/// Every record of a VM's stored output log, in order.
fn records(dir: &std::path::Path) -> Vec<iolog::Record> {
    let bytes = std::fs::read(dir.join("output.log")).expect("output.log");
    let mut dec = iolog::Decoder::new();
    dec.push(&bytes);
    let mut out = Vec::new();
    while let Some(item) = dec.next_item() {
        match item {
            iolog::Item::Record(r) => out.push(r),
            iolog::Item::Damage(d) => panic!("undamaged log reported damage: {d:?}"),
        }
    }
    assert!(dec.finish().is_none(), "log ends in a partial record");
    out
}

#[test]
fn fifty_megabytes_of_mixed_output_arrive_complete_in_order_and_tagged() {
    // 50,000 numbered lines of ~1 KB, odd ones on stdout, even ones on stderr.
    let script = r#"BEGIN { pad = sprintf("%1000s", ""); for (i = 0; i < 50000; i++) { if (i % 2) print "out " i pad; else print "err " i pad > "/dev/stderr" } }"#;
    let r = e2e::run("busybox", &["awk", script]);
    r.assert_clean_power_off();
    assert_eq!(r.outcome.exit_code, 0);
    let check = |text: &str, parity: u64, tag: &str| {
        let mut n = 0u64;
        for line in text.lines() {
            let num: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            assert_eq!(
                num,
                2 * n + parity,
                "{tag} line {n} out of order or missing: {:.40}",
                line
            );
            assert!(
                line.starts_with(tag) && line.len() == tag.len() + 1 + num.to_string().len() + 1000,
                "{tag} line {n} damaged"
            );
            n += 1;
        }
        n
    };
    assert_eq!(check(&r.stdout, 1, "out"), 25_000);
    assert_eq!(check(&r.stderr, 0, "err"), 25_000);
    assert!(r.stdout.len() + r.stderr.len() > 50_000_000);
    // The stored log: per-stream sequence numbers without gaps, timestamps never backwards.
    let recs = records(&r.outcome.dir);
    let mut last_time = 0;
    let mut next_seq = std::collections::HashMap::new();
    for rec in &recs {
        assert!(rec.time_ns >= last_time, "timestamp went backwards");
        last_time = rec.time_ns;
        let seq = next_seq
            .entry((rec.session.clone(), rec.stream))
            .or_insert(0u64);
        assert_eq!(rec.seq, *seq, "sequence gap");
        *seq += 1;
    }
}

#[test]
fn one_line_and_exit_is_never_lost() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&["--name", "quick", "busybox", "sleep", "600"]);
    for i in 0..100 {
        let (code, out, err) = vch.cmd(&["exec", "quick", "echo", &format!("quick line {i}")]);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("quick line {i}\n").as_str()),
            "exec {i}: {err}"
        );
    }
    // Each exec's line is also in the stored log, under the exec's own session.
    let dir = vch.dir.path().join("vms").join(&id[..12]);
    let recs = records(&dir);
    for i in 0..100 {
        let line = format!("quick line {i}\n");
        let found = recs.iter().any(|r| {
            r.session != id && matches!(&r.body, iolog::Body::Data(d) if d == line.as_bytes())
        });
        assert!(found, "{line:?} missing from output.log");
    }
    // And a foreground run that prints and exits at once.
    for _ in 0..3 {
        let r = e2e::run("busybox", &["echo", "just one line"]);
        assert_eq!(r.stdout, "just one line\n");
    }
}

#[test]
fn damaged_log_records_are_counted_and_skipped() {
    let vch = e2e::Vch::new();
    let (code, _, err) = vch.cmd(&[
        "run",
        "--name",
        "dmg",
        "--timeout",
        "90",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.1; done",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = vch.inspect("dmg")["Id"].as_str().unwrap().to_owned();
    let path = vch
        .dir
        .path()
        .join("vms")
        .join(&id[..12])
        .join("output.log");
    let (_, clean, _) = vch.cmd(&["logs", "dmg"]);
    assert_eq!(clean.lines().count(), 10, "{clean}");
    // Flip a byte inside the 3rd and the 7th line's records.
    let mut bytes = std::fs::read(&path).unwrap();
    for needle in [&b"line 3\n"[..], b"line 7\n"] {
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("record in log");
        bytes[at + 2] ^= 0x20;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, err) = vch.cmd(&["logs", "dmg"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().count(),
        8,
        "damaged lines must be skipped, the rest kept:\n{out}"
    );
    assert!(
        !out.contains("line 3") && !out.contains("line 7") && out.contains("line 8"),
        "{out}"
    );
    assert!(
        err.contains("2 damaged stretches") && err.contains("2 records were lost"),
        "stderr: {err}"
    );
    // The library reader agrees and never panics on it.
    let mut r = LogReader::open(&path, &id).unwrap();
    let n = r.poll().unwrap().len() + r.finish().len();
    assert_eq!((n, r.damaged, r.lost), (8, 2, 2));
}

#[test]
fn logs_follow_filters_and_timestamps() {
    let vch = e2e::Vch::new();
    vch.run_detached(&[
        "--name",
        "lf",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; sleep 1; done",
    ]);
    let mut follow = vch.spawn(&["logs", "-f", "--stdout", "lf"]);
    assert!(follow
        .expect_line("out1", Duration::from_secs(60))
        .is_some());
    assert!(
        follow
            .expect_line("out6", Duration::from_secs(60))
            .is_some(),
        "seen: {:?}",
        follow.seen
    );
    assert_eq!(
        follow.wait(Duration::from_secs(60)),
        Some(0),
        "logs -f must end when the container stops"
    );
    assert!(
        follow.seen.iter().all(|l| l.starts_with("out")),
        "--stdout leaked stderr: {:?}",
        follow.seen
    );

    let (_, err_only, stderr) = vch.cmd(&["logs", "--stderr", "lf"]);
    assert_eq!(err_only, "", "--stderr output goes to stderr");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["err1", "err2", "err3", "err4", "err5", "err6"]
    );
    let (code, tail, err) = vch.cmd(&["logs", "--stdout", "--tail", "2", "lf"]);
    assert_eq!((code, tail.as_str()), (0, "out5\nout6\n"), "{err}");
    // A time after every line: nothing, and no error either.
    let (code, future, err) = vch.cmd(&["logs", "--since", "2999-01-01T00:00:00Z", "lf"]);
    assert_eq!((code, future.as_str(), err.as_str()), (0, "", ""));
    // A --since that is no time is an error, not an empty log.
    let (code, out, err) = vch.cmd(&["logs", "--since", "yesterday-ish", "lf"]);
    assert_ne!(code, 0, "a bad --since was accepted: {out}");
    assert!(err.contains("invalid --since"), "{err}");
    let (code, stamped, err) = vch.cmd(&["logs", "-t", "--stdout", "lf"]);
    assert_eq!(code, 0, "{err}");
    let mut texts = Vec::new();
    let mut last = String::new();
    for line in stamped.lines() {
        let (ts, text) = line.split_once(' ').expect("timestamp prefix");
        assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts:?}");
        assert!(
            ts >= last.as_str(),
            "timestamps went backwards: {last} then {ts}"
        );
        texts.push(text);
        last = ts.to_owned();
    }
    assert_eq!(texts, ["out1", "out2", "out3", "out4", "out5", "out6"]);
}

/// Seconds since the Unix epoch of a `-t` timestamp (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`),
/// computed here rather than by the code under test.
fn unix_seconds(ts: &str) -> f64 {
    let num = |r: std::ops::Range<usize>| -> i64 {
        ts.get(r)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("timestamp {ts:?}"))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    secs as f64 + num(20..29) as f64 / 1e9
}

#[test]
fn timestamp_arithmetic() {
    assert_eq!(unix_seconds("1970-01-01T00:00:00.000000000Z"), 0.0);
    assert_eq!(
        unix_seconds("2000-03-01T00:00:01.500000000Z"),
        951_868_801.5
    );
    assert_eq!(
        unix_seconds("2026-12-06T12:00:00.000000000Z"),
        1_796_558_400.0
    );
}

/// `--since` a time between two lines keeps the later and drops the earlier; `rm -f` of the
/// running container then removes the VM and everything vch kept of it.
#[test]
fn since_a_time_between_two_lines_then_rm_f() {
    let vch = e2e::Vch::new();
    let id = vch.run_detached(&[
        "--name",
        "two",
        "busybox",
        "sh",
        "-c",
        "echo early; sleep 3; echo late; exec sleep 600",
    ]);
    assert!(
        vch.wait_until(Duration::from_secs(60), || vch
            .cmd(&["logs", "two"])
            .1
            .contains("late")),
        "no second line: {:?}",
        vch.cmd(&["logs", "two"])
    );
    let (code, stamped, err) = vch.cmd(&["logs", "-t", "two"]);
    assert_eq!(code, 0, "{err}");
    let at: Vec<f64> = stamped
        .lines()
        .map(|l| unix_seconds(l.split_once(' ').map_or(l, |(ts, _)| ts)))
        .collect();
    assert_eq!(at.len(), 2, "{stamped}");
    assert!(at[1] - at[0] >= 2.5, "the lines are 3 s apart: {stamped}");
    let between = format!("{:.3}", (at[0] + at[1]) / 2.0);
    let (code, out, err) = vch.cmd(&["logs", "--since", &between, "two"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "late\n"),
        "--since {between}: {err}"
    );
    let (code, out, err) = vch.cmd(&["logs", "--since", "1h", "two"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "early\nlate\n"),
        "--since 1h: {err}"
    );

    let meta_path = vch.dir.path().join("vms").join(&id[..12]).join("meta.json");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&meta_path).unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
    )
    .expect("meta.json");
    let pid = meta["qemu_pid"]
        .as_u64()
        .expect("a running VM has a QEMU pid");
    let (code, out, err) = vch.cmd(&["rm", "-f", "two"]);
    assert_eq!((code, out.as_str()), (0, "two\n"), "{err}");
    // The VM is gone (not a zombie either: its parent, the keeper, reaped it)...
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(
        vch.wait_until(Duration::from_secs(10), || !proc_dir.exists()),
        "QEMU {pid} still exists after rm -f"
    );
    // ... and so is the state: no folder, no listing, no inspect.
    assert!(!vch.dir.path().join("vms").join(&id[..12]).exists());
    assert!(!vch.cmd(&["ps", "-a", "-q"]).1.contains(&id));
    let (code, _, err) = vch.cmd(&["inspect", "two"]);
    assert_ne!(code, 0, "inspect of a removed container");
    assert!(err.contains("two"), "{err}");
}

#[test]
fn original_vic_log_format_on_request() {
    let vch = e2e::Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--name",
        "vic",
        "--log-format",
        "vic",
        "--timeout",
        "90",
        "busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; printf partial",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "to-out\npartial");
    assert_eq!(err, "to-err\n");
    let id = vch.inspect("vic")["Id"].as_str().unwrap().to_owned();
    let bytes = std::fs::read(
        vch.dir
            .path()
            .join("vms")
            .join(&id[..12])
            .join("output.log"),
    )
    .unwrap();
    // What a VIC port layer's reader sees: 16-byte base64 headers, lines, stderr tagged.
    let (entries, skipped) = iolog::vic::decode_all(&bytes);
    assert_eq!(skipped, 0);
    let got: Vec<(iolog::Stream, &[u8])> = entries
        .iter()
        .map(|e| (e.stream, e.payload.as_slice()))
        .collect();
    assert!(
        got.contains(&(iolog::Stream::Stdout, &b"to-out\n"[..])),
        "{got:?}"
    );
    assert!(
        got.contains(&(iolog::Stream::Stderr, &b"to-err\n"[..])),
        "{got:?}"
    );
    assert!(
        got.contains(&(iolog::Stream::Stdout, &b"partial"[..])),
        "{got:?}"
    );
    let (_, logs, _) = vch.cmd(&["logs", "--stdout", "vic"]);
    assert_eq!(logs, "to-out\npartial");
}
