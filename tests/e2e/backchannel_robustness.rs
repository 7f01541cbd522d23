//! The back-channel survives line noise before the handshake, and works over the emulated
//! 16550 UART (`/dev/ttyS0`), the path a vSphere VM uses, with the original port layer's
//! 512-bit RSA host key and `none` authentication.

#[test]
fn garbage_before_the_handshake() {
    let vch = e2e::Vch::new();
    vch.run_detached(&[
        "--name",
        "noisy",
        "--vch",
        "virtio+noise",
        "busybox",
        "sleep",
        "600",
    ]);
    let (code, out, err) = vch.cmd(&["exec", "noisy", "echo", "through the noise"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "through the noise\n"),
        "stderr: {err}"
    );
}

#[test]
fn exec_over_the_16550_uart() {
    let vch = e2e::Vch::new();
    vch.run_detached(&[
        "--name",
        "uart",
        "--vch",
        "uart",
        "--vic-compat",
        "busybox",
        "sleep",
        "600",
    ]);
    let (code, out, err) = vch.cmd(&["exec", "uart", "sh", "-c", "echo over ttyS0; exit 7"]);
    assert_eq!((code, out.as_str()), (7, "over ttyS0\n"), "stderr: {err}");
    let (code, out, _) = vch.cmd_with_input(&["exec", "-i", "uart", "cat"], b"uart stdin\n");
    assert_eq!((code, out.as_str()), (0, "uart stdin\n"));
}
