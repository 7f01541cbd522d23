//! `vch` behaves like a good Unix tool: output into a closed pipe ends quietly, tables stay
//! aligned, usage errors exit 125 as docker's do, `--debug` shows what vch does (that an
//! interactive session returns when its process exits is `terminal_session_end`).

use std::process::{Command, Stdio};

#[test]
fn pipes_tables_usage_errors_and_debug() {
    let vch = e2e::Vch::new();
    let long = "echo a-rather-long-command-line-that-runs-past-any-fixed-column-width; true";
    let (code, _, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "with-a-long-name",
        "busybox",
        "sh",
        "-c",
        long,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = vch.cmd(&[
        "run",
        "--timeout",
        "120",
        "--name",
        "short",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 0, "{err}");

    // `vch inspect | head -1`: the reader leaves early; vch ends quietly, no panic.
    let mut child = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(vch.dir.path())
        .args(["inspect", "with-a-long-name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vch inspect");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    // Every row's STATUS starts where the header's does.
    let (code, ps, _) = vch.cmd(&["ps", "-a"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(lines.len(), 3, "{ps}");
    let col = lines[0].find("STATUS").expect("STATUS header");
    for l in &lines[1..] {
        assert!(
            l.get(col..).is_some_and(|s| s.starts_with("Exited (0)")),
            "misaligned:\n{ps}"
        );
    }

    // Usage errors exit 125 (clap's default is 2); help is no error.
    assert_eq!(vch.cmd(&["run"]).0, 125);
    assert_eq!(vch.cmd(&["no-such-command"]).0, 125);
    assert_eq!(vch.cmd(&["--help"]).0, 0);

    // --debug: the engine's log on stderr.
    let (code, _, err) = vch.cmd(&[
        "--debug",
        "run",
        "--timeout",
        "120",
        "--rm",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEBUG") && err.contains("event"), "{err}");
}
