//! `vch` behaves like a good Unix tool: an interactive session returns as soon as the
//! process in it exits, output into a closed pipe ends quietly, tables stay aligned, usage
//! errors exit 125 as docker's do, `--debug` shows what vch does.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::pty::Pty;

fn vch_on_pty(state: &std::path::Path, args: &[&str]) -> Pty {
    let mut c = Command::new(e2e::vch_binary());
    c.arg("--state").arg(state).args(args).env("TERM", "xterm");
    Pty::spawn(c, 24, 80)
}

#[test]
fn run_it_and_exec_it_return_when_the_process_exits() {
    let vch = e2e::Vch::new();
    let mut run = vch_on_pty(
        vch.dir.path(),
        &[
            "run",
            "-it",
            "--timeout",
            "300",
            "--name",
            "term",
            "busybox",
            "sh",
        ],
    );
    assert!(
        run.expect("/ #", Duration::from_secs(120)),
        "{:?}",
        run.text()
    );
    run.send(b"exit 5\r");
    let typed = Instant::now();
    // Before the fix vch waited for one more keystroke after the session ended.
    assert_eq!(
        run.wait(Duration::from_secs(15)),
        Some(5),
        "{:?}",
        run.text()
    );
    assert!(typed.elapsed() < Duration::from_secs(15));

    vch.run_detached(&["--name", "svc", "busybox", "sleep", "600"]);
    let mut exec = vch_on_pty(vch.dir.path(), &["exec", "-it", "svc", "sh"]);
    assert!(
        exec.expect("/ #", Duration::from_secs(60)),
        "{:?}",
        exec.text()
    );
    exec.send(b"exit 3\r");
    assert_eq!(
        exec.wait(Duration::from_secs(15)),
        Some(3),
        "{:?}",
        exec.text()
    );
}

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
