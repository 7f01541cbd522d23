//! `-e` and `-w` reach the process; HOME comes from the image's passwd; nothing else leaks in.

use e2e::RunOptions;

#[test]
fn env_workdir_and_home() {
    let mut opts = RunOptions::new(
        "busybox",
        &["sh", "-c", "echo FOO=$FOO; pwd; echo HOME=$HOME; env"],
    );
    opts.spec.env = vec!["FOO=bar baz".into()];
    opts.spec.workdir = "/tmp".into();
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        &lines[..3],
        ["FOO=bar baz", "/tmp", "HOME=/root"],
        "stdout:\n{}",
        r.stdout
    );
    // The environment is exactly the configured one plus HOME (and what sh itself sets).
    let mut env: Vec<&str> = lines[3..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    env.sort();
    assert_eq!(
        env,
        [
            "FOO=bar baz",
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn missing_workdir_is_a_launch_error() {
    let mut opts = RunOptions::new("busybox", &["true"]);
    opts.spec.workdir = "/no/such/dir".into();
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    assert!(
        r.outcome.started.starts_with("chdir /no/such/dir:"),
        "started = {:?}",
        r.outcome.started
    );
    assert_ne!(r.outcome.exit_code, 0);
}
