//! Shell pipelines and values with `|` reach the container whole: `vch run` and `vch exec`
//! with `sh -c 'a | b'`, and an environment variable holding a `|`. The original's config
//! format split such arguments (vmware/vic#3510); ours carries them exactly beside it.

#[test]
fn run_with_a_pipeline_and_a_separator_in_the_environment() {
    let vch = e2e::Vch::new();
    let (code, out, err) = vch.cmd(&[
        "run",
        "--timeout",
        "90",
        "-e",
        "ROUTE=PoolRoute|A",
        "busybox",
        "sh",
        "-c",
        "echo hello | tr a-z A-Z; echo \"$ROUTE\" | wc -c; printf '%s\\n' \"$ROUTE\"",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "HELLO\n12\nPoolRoute|A\n", "stderr: {err}");
}

#[test]
fn exec_a_pipeline_in_a_running_container() {
    let vch = e2e::Vch::new();
    vch.run_detached(&["--name", "pipes", "busybox", "sleep", "600"]);
    let (code, out, err) = vch.cmd(&[
        "exec",
        "pipes",
        "sh",
        "-c",
        "seq 1 5 | grep -v 3 | tr '\\n' '|'; exit 4",
    ]);
    assert_eq!((code, out.as_str()), (4, "1|2|4|5|"), "stderr: {err}");
    // An exec without one afterwards is not confused by the earlier exact arguments.
    let (code, out, err) = vch.cmd(&["exec", "pipes", "echo", "plain"]);
    assert_eq!((code, out.as_str()), (0, "plain\n"), "stderr: {err}");
}
