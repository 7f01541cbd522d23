//! The `guestinfo` inspect command end to end.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = match Command::new(env!("CARGO_BIN_EXE_guestinfo"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("spawn: {e}"),
    };
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("wait: {e}"),
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const FIXTURE: &str = include_str!("../testdata/pl_container.json");

fn json(s: &str) -> serde_json::Value {
    match serde_json::from_str(s) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {s}"),
    }
}

#[test]
fn decode_then_encode_reproduces_the_map() {
    let decoded = run(&["decode"], FIXTURE);
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let cfg = text(&decoded);
    assert!(cfg.contains("\"hostname\": \"web\""));
    let encoded = run(&["encode"], &cfg);
    assert!(
        encoded.status.success(),
        "{}",
        String::from_utf8_lossy(&encoded.stderr)
    );
    assert_eq!(json(&text(&encoded)), json(FIXTURE));
}

#[test]
fn vmx_lines_and_wire_values() {
    let map: std::collections::BTreeMap<String, String> = match serde_json::from_str(FIXTURE) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let vmx = guestinfo::store::format_vmx(
        map.iter()
            .map(|(k, v)| (k.as_str(), guestinfo::transport::to_wire(v))),
    );
    let vmx = format!(".encoding = \"UTF-8\"\nmemsize = \"512\"\n{vmx}");
    let decoded = run(&["decode"], &vmx);
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let encoded = run(&["encode", "--wire"], &text(&decoded));
    let wire = json(&text(&encoded));
    assert_eq!(wire["common/notes"], "<nil>");
    assert_eq!(wire["guestinfo.vice./hostname"], "web");
}

#[test]
fn tether_view_and_keys() {
    let decoded = run(&["decode", "--tether"], FIXTURE);
    assert!(decoded.status.success());
    assert!(!text(&decoded).contains("\"started\": \"true\""));
    let keys = run(&["keys"], FIXTURE);
    assert!(keys.status.success());
    let out = text(&keys);
    assert!(out.lines().all(|l| l.starts_with("guestinfo.vice..")));
    assert!(out.contains(".started = \"true\""));
}

#[test]
fn errors_go_to_stderr_with_a_failure_status() {
    for (args, input) in [
        (&["decode"][..], "{ not json"),
        (
            &["decode"][..],
            "{\"guestinfo.vice./diagnostics/debug\": \"loud\"}",
        ),
        (&["encode"][..], "\"nope\""),
        (&["frobnicate"][..], ""),
        (&["encode"][..], "{\"sessions\": {\"a|b\": {}}}"),
    ] {
        let o = run(args, input);
        assert!(!o.status.success(), "{args:?} {input}");
        assert!(o.stdout.is_empty());
        assert!(String::from_utf8_lossy(&o.stderr).starts_with("guestinfo: "));
    }
    let o = run(
        &["decode"],
        "{\"guestinfo.vice./diagnostics/debug\": \"loud\"}",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("guestinfo.vice./diagnostics/debug"));
}
