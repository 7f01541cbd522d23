//! The kernel's OOM killer in a container VM: the tether is never its victim (it keeps
//! running, reports, and powers the VM off cleanly), and the container shows `OOMKilled`,
//! whether the killed process was the container's process (exit 137) or one of its
//! children (the exit code is then the process's own).

use e2e::Vch;

/// Doubles a string until memory runs out.
const HOG: &str = "BEGIN { s = \"x\"; while (1) s = s s }";

#[test]
fn oom_kills_are_reported_and_the_tether_survives() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&[
        "run", "--name", "victim", "--memory", "160", "busybox", "awk", HOG,
    ]);
    assert_eq!(code, 137, "killed by SIGKILL: {err}");
    let doc = vch.inspect("victim");
    assert_eq!(doc["OOMKilled"], true, "{doc}");
    assert_eq!(doc["State"], "Exited (137)", "{doc}");
    let logs = &doc["Config"]["sessions"];
    assert!(
        logs.to_string().contains("out of memory"),
        "the exit record says why: {logs}"
    );
    let dir = std::fs::read_dir(vch.dir.path().join("vms"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let debug = std::fs::read_to_string(dir.join("tether.debug")).unwrap_or_default();
    assert!(!debug.contains("PANIC"), "{debug}");
    assert!(debug.contains("OOM killer"), "the tether noticed:\n{debug}");
    assert!(
        debug.contains("powering off"),
        "the tether outlived it:\n{debug}"
    );
    assert!(
        debug.contains("(awk)"),
        "the kernel killed awk, not the tether:\n{debug}"
    );

    // A child is the victim; the container's shell goes on and exits with its own code.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--name",
        "parent",
        "--memory",
        "160",
        "busybox",
        "sh",
        "-c",
        &format!("awk '{HOG}'; echo child=$?; exit 3"),
    ]);
    assert_eq!((code, out.trim()), (3, "child=137"), "{err}");
    assert_eq!(vch.inspect("parent")["OOMKilled"], true);

    // A container without an OOM kill is not marked, also after one that had it.
    let (code, _, err) = vch.cmd(&["run", "--name", "calm", "busybox", "true"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(vch.inspect("calm")["OOMKilled"], false);
}
