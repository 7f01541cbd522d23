//! A network the VM cannot have — its NIC is missing, its address is invalid — gives a
//! clear error in `started`, no launch, and a clean power-off.

use std::time::Duration;

use e2e::RunOptions;
use qemu_harness::network::NetworkRequest;

fn opts(id: &str) -> RunOptions {
    let mut o = RunOptions::new("busybox", &["echo", "must-not-run"]);
    o.spec.id = id.into();
    o.timeout = Duration::from_secs(90);
    o
}

#[test]
fn missing_nic_is_reported() {
    // The config names a network on PCI slot 1216, but the VM has no NIC at all.
    let mut o = opts("badde7000000000000000000000000000000000000000000000000000000001");
    let n = "guestinfo.vice./networks|ghost";
    o.extra_config = vec![
        ("guestinfo.vice./networks".into(), "ghost".into()),
        (format!("{n}/Common/id"), "1216".into()),
        (format!("{n}/network/Common/name"), "ghost".into()),
        (format!("{n}/network/default"), "true".into()),
    ];
    let r = e2e::run_with(o);
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.outcome.started,
        "network ghost: no NIC at PCI slot 1216 \
         (/sys/bus/pci/devices/0000:00:16.1/0000:*:00.0)"
    );
    assert_eq!(r.outcome.exit_code, 125);
}

#[test]
fn invalid_static_address_is_reported() {
    let mut o = opts("badde7000000000000000000000000000000000000000000000000000000002");
    o.network = NetworkRequest {
        networks: vec!["bridge".into()],
        ..Default::default()
    };
    // A non-contiguous netmask cannot be configured.
    let n = "guestinfo.vice./networks|bridge";
    o.extra_config = vec![
        (format!("{n}/static"), "true".into()),
        (format!("{n}/ip/IP"), "CgAABQ==".into()), // 10.0.0.5
        (format!("{n}/ip/Mask"), "/wD/AA==".into()), // 255.0.255.0
    ];
    let r = e2e::run_with(o);
    r.assert_clean_power_off();
    assert_eq!(r.stdout, "");
    // The error names the network, the address and the mask at fault.
    assert_eq!(
        r.outcome.started,
        "network bridge: static address 10.0.0.5 has an invalid netmask 255.0.255.0"
    );
    assert_eq!(r.outcome.exit_code, 125);
}
