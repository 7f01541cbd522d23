//! `-u user` runs the process with the image's uid, gid and supplementary groups.

use e2e::RunOptions;

#[test]
fn unprivileged_user_shows_in_id() {
    let mut opts = RunOptions::new("busybox", &["sh", "-c", "id; echo HOME=$HOME; if touch /root/x 2>/dev/null; then echo allowed; else echo denied; fi"]);
    opts.spec.user = "user".into();
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    let first = r.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with("uid=1000(user) gid=1000(user)"),
        "id said: {first}"
    );
    assert!(
        first.contains("10(wheel)"),
        "supplementary group missing: {first}"
    );
    assert!(r.stdout.contains("HOME=/home/user"));
    assert!(
        r.stdout.contains("denied"),
        "an unprivileged user could write /root:\n{}",
        r.stdout
    );
}

#[test]
fn numeric_uid_and_group_name() {
    let mut opts = RunOptions::new("busybox", &["id"]);
    opts.spec.user = "1000:wheel".into();
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    assert!(
        r.stdout.starts_with("uid=1000(user) gid=10(wheel)"),
        "id said: {}",
        r.stdout
    );
}

/// An unknown user or group is a start failure, not a command that cannot run: 125, as
/// `docker run -u nosuchuser` exits (126 is docker's "permission denied", 127 its "not
/// found"; the original wrote no status at all).
#[test]
fn unknown_user_fails_to_start() {
    let mut opts = RunOptions::new("busybox", &["id"]);
    opts.spec.user = "nosuchuser".into();
    let r = e2e::run_with(opts);
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.outcome.started,
        "unable to find user nosuchuser: no matching entries in passwd file"
    );
    assert_eq!(r.outcome.exit_code, 125);

    // What the user sees from vch: the reason and docker's code.
    let vch = e2e::Vch::new();
    for (user, why) in [
        (
            "nosuchuser",
            "unable to find user nosuchuser: no matching entries in passwd file",
        ),
        (
            "user:nosuchgroup",
            "unable to find group nosuchgroup: no matching entries in group file",
        ),
    ] {
        let (code, out, err) = vch.cmd(&[
            "run",
            "--timeout",
            "120",
            "--network",
            "none",
            "-u",
            user,
            "busybox",
            "id",
        ]);
        assert_eq!((code, out.as_str()), (125, ""), "-u {user}: {err}");
        assert!(err.contains(&format!("failed to start: {why}")), "{err}");
    }
    let (_, ps, _) = vch.cmd(&["ps", "-a"]);
    assert_eq!(ps.matches("Failed (125)").count(), 2, "{ps}");
}
