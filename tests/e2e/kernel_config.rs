//! The kernel the suite boots is ours, and its configuration carries the VMware drivers, so
//! the same ISO boots on vSphere.

#[test]
fn built_kernel_has_the_vmware_drivers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::fs::read_to_string(root.join("target/bootstrap/kernel-dir"))
        .expect("scripts/build-iso records the kernel it used");
    let config = std::fs::read_to_string(std::path::Path::new(dir.trim()).join("config"))
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the suite runs on our kernel (kernel-config/), not TETHER_KERNEL=debian",
                dir.trim()
            )
        });
    for option in [
        "CONFIG_VMXNET3=y",
        "CONFIG_VMWARE_PVSCSI=y",
        "CONFIG_BLK_DEV_SD=y",
        "CONFIG_VMWARE_VMCI=y",
        "CONFIG_VMWARE_VMCI_VSOCKETS=y",
        "CONFIG_VIRTIO_CONSOLE=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_EXT4_FS=y",
        "CONFIG_KERNEL_LZ4=y",
    ] {
        assert!(
            config.lines().any(|l| l == option),
            "{option} missing from {}",
            dir.trim()
        );
    }
    assert!(
        !config.lines().any(|l| l == "CONFIG_MODULES=y"),
        "everything is built in"
    );
}
