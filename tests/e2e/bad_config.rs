//! A malformed or missing config key gives a clear error in `started` and a clean power-off.

use e2e::RunOptions;

fn with_extra(key_suffix: &str, value: &str) -> e2e::Finished {
    let id = "badc0ffee0000000000000000000000000000000000000000000000000000001";
    let mut opts = RunOptions::new("busybox", &["echo", "never"]);
    opts.spec.id = id.into();
    opts.extra_config = vec![(
        format!("guestinfo.vice./sessions|{id}/{key_suffix}"),
        value.into(),
    )];
    e2e::run_with(opts)
}

#[test]
fn malformed_key_names_the_key_and_powers_off() {
    let r = with_extra("cmd/Args", "not-a-number");
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "");
    assert!(
        r.outcome.started.starts_with("invalid container config:"),
        "started = {:?}",
        r.outcome.started
    );
    assert!(
        r.outcome.started.contains("cmd/Args"),
        "the key is not named: {:?}",
        r.outcome.started
    );
    // A container that could not be started: docker's 125 (README).
    assert_eq!(r.outcome.exit_code, 125);
}

#[test]
fn missing_command_is_reported() {
    let r = with_extra("cmd/Path", "");
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.outcome.started,
        "invalid container config: no command \
         (guestinfo.vice./sessions|badc0ffee0000000000000000000000000000000000000000000000000000001/cmd/Path)"
    );
    assert_eq!(r.outcome.exit_code, 125);
}
