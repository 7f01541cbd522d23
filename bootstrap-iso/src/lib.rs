//! Boot media for container VMs.
//!
//! The initramfs holds the tether as `/init` (the kernel runs it as PID 1, no shell scripts in
//! between), a `/dev/console` node so the kernel can give PID 1 its standard streams, and, when
//! the kernel is modular, the kernel modules the tether must load before it can see its
//! devices, with a `lib/modules/load-order` file listing them dependencies first.
//!
//! The ISO is an isolinux El Torito image holding `boot/vmlinuz`, `boot/initrd.img` and the
//! kernel command line in `isolinux/isolinux.cfg`, as the original bootstrap ISO did (its
//! initramfs was gzipped; ours is not, see [`build_initramfs`]).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel command line of container VMs.
///
/// `console=ttyS1` as the original: ttyS0 is the back-channel on vSphere. `panic=-1` turns a
/// PID 1 death into an immediate reboot, which `-no-reboot` (QEMU) or the VM's power policy
/// turn into a power-off, so a broken VM never hangs. `rdinit=/init` runs the tether from the
/// initramfs. `pcie_ports=native` lets the kernel drive PCIe hot-plug itself (a NIC added to
/// or removed from a running container VM: `network connect`/`disconnect`): the firmware
/// grants that only to a kernel with ASPM, which the container kernel leaves out.
/// `ipv6.disable_ipv6=1` starts every interface without IPv6 (it sets `default`; the tether
/// sets `all`), as Docker runs a container whose networks have none (`disable_ipv6` is 1 for
/// `all`, `default`, `lo` and `eth0` there, Docker 20.10 on Debian 12): the tether's networks
/// are IPv4, and bringing `lo` up no longer has the kernel add `::1` and its routes on every
/// boot path. A workload can still turn it on (sysctl).
/// The rest trims boot time.
pub const DEFAULT_CMDLINE: &str = "console=ttyS1,115200n8 quiet loglevel=3 panic=-1 rdinit=/init \
     noreplace-smp cpu_init_udelay=0 rcupdate.rcu_expedited=1 tsc=reliable pcie_ports=native \
     ipv6.disable_ipv6=1";

/// Modules the tether needs from a modular kernel (Debian's cloud kernel), by module name.
/// Built-in kernels ignore the list.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio-rng",
    "virtio_net",
    "vmxnet3",
    "vmw_pvscsi",
    "sd_mod",
];

/// Errors building boot media.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// an I/O operation on a build input or output failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// a requested kernel module is not in modules.dep
    #[error("kernel module {0} is not in modules.dep of {1}")]
    UnknownModule(String, PathBuf),
    /// an external tool failed
    #[error("{0} failed: {1}")]
    Tool(&'static str, String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A kernel to boot: the image and, for a modular kernel, its module tree.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage.
    pub image: PathBuf,
    /// `lib/modules/<version>` holding `modules.dep`; `None` for a kernel with everything built in.
    pub modules: Option<PathBuf>,
}

impl Kernel {
    /// A kernel directory as laid out by `kernel-config/fetch-debian-kernel.sh` (`vmlinuz`,
    /// `abi`, `lib/modules/<abi>`) or `kernel-config/build-kernel.sh` (`vmlinuz` only).
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let image = dir.join("vmlinuz");
        fs::metadata(&image).map_err(io_err("kernel image", &image))?;
        let abi_file = dir.join("abi");
        let modules = match fs::read_to_string(&abi_file) {
            Ok(abi) => Some(dir.join("lib/modules").join(abi.trim())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Io {
                    what: "read",
                    path: abi_file,
                    source: e,
                })
            }
        };
        Ok(Self { image, modules })
    }
}

/// Resolves `wanted` module names against a `modules.dep` file's text, returning module paths
/// (relative to the module tree) in an order where every module follows its dependencies.
pub fn module_load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(path);
        deps.insert(
            name,
            (
                path.to_owned(),
                rest.split_whitespace().map(module_name).collect(),
            ),
        );
    }
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let (path, needs) = deps.get(name).ok_or_else(|| name.to_owned())?;
        // modules.dep lists a module's dependencies with the deepest last; loading them in
        // reverse order satisfies each before its users (what modprobe does).
        for dep in needs.iter().rev() {
            visit(dep, deps, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Module name from a module path: basename without `.ko`, `-` folded to `_` as the kernel does.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// What goes into the initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsSpec<'a> {
    /// The tether binary, installed as `/init`.
    pub tether: &'a Path,
    /// Kernel whose modules are included.
    pub kernel: &'a Kernel,
    /// Module names to include (with their dependencies).
    pub modules: &'a [&'a str],
}

/// Builds the newc initramfs, uncompressed. Under QEMU TCG the kernel's gunzip runs emulated
/// and cost the tether's initramfs (2 MB) about 50 ms before PID 1 started, while isolinux
/// loads the larger file from the ISO in next to no time (see `kernel-config/README.md`);
/// with hardware virtualisation either way costs a few milliseconds.
pub fn build_initramfs(spec: &InitramfsSpec<'_>) -> Result<Vec<u8>, Error> {
    let mut entries: Vec<(cpio::NewcBuilder, Vec<u8>)> = Vec::new();
    let dir = |name: &str| {
        (
            cpio::NewcBuilder::new(name).mode(0o040755).nlink(2),
            Vec::new(),
        )
    };
    for d in [
        "dev",
        "proc",
        "sys",
        "mnt",
        "root",
        "tmp",
        "lib",
        "lib/modules",
    ] {
        entries.push(dir(d));
    }
    // The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
    entries.push((
        cpio::NewcBuilder::new("dev/console")
            .mode(0o020600)
            .rdev_major(5)
            .rdev_minor(1),
        Vec::new(),
    ));
    let tether = fs::read(spec.tether).map_err(io_err("read tether", spec.tether))?;
    entries.push((cpio::NewcBuilder::new("init").mode(0o100755), tether));

    if let Some(tree) = &spec.kernel.modules {
        let dep_path = tree.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).map_err(io_err("read", &dep_path))?;
        let order = module_load_order(&dep, spec.modules)
            .map_err(|m| Error::UnknownModule(m, dep_path.clone()))?;
        let mut list = String::new();
        for rel in &order {
            let src = tree.join(rel);
            let bytes = fs::read(&src).map_err(io_err("read module", &src))?;
            let file = rel.rsplit('/').next().unwrap_or(rel);
            list.push_str(file);
            list.push('\n');
            entries.push((
                cpio::NewcBuilder::new(&format!("lib/modules/{file}")).mode(0o100644),
                bytes,
            ));
        }
        entries.push((
            cpio::NewcBuilder::new("lib/modules/load-order").mode(0o100644),
            list.into_bytes(),
        ));
    }

    let mut out = Vec::new();
    for (ino, (builder, data)) in entries.into_iter().enumerate() {
        let size =
            u32::try_from(data.len()).map_err(|_| Error::Tool("cpio", "file over 4 GiB".into()))?;
        // Directories and nodes get distinct inode numbers so the kernel does not hard-link them.
        let mut w = builder.ino(ino as u32 + 1).write(&mut out, size);
        w.write_all(&data)
            .map_err(io_err("write", Path::new("initramfs")))?;
        w.finish()
            .map_err(io_err("write", Path::new("initramfs")))?;
    }
    cpio::newc::trailer(out).map_err(io_err("write", Path::new("initramfs")))
}

/// Where Debian's isolinux and syslinux packages put the files an isolinux ISO needs.
const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX_BIN: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// Volume ID of our ISOs.
pub const VOLUME_ID: &str = "TETHER_BOOT";

/// Builds a bootable ISO at `out` from a kernel image, an initramfs and a command line.
pub fn build_iso(
    kernel_image: &Path,
    initramfs: &[u8],
    cmdline: &str,
    out: &Path,
) -> Result<(), Error> {
    let parent = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let tree = parent.join(format!(".iso-tree-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_dir_all(&tree);
        let iso = tree.join("isolinux");
        let boot = tree.join("boot");
        fs::create_dir_all(&iso).map_err(io_err("create", &iso))?;
        fs::create_dir_all(&boot).map_err(io_err("create", &boot))?;
        for (src, name) in [(ISOLINUX_BIN, "isolinux.bin"), (LDLINUX_C32, "ldlinux.c32")] {
            fs::copy(src, iso.join(name)).map_err(io_err(
                "copy (apt-get install isolinux syslinux-common)",
                Path::new(src),
            ))?;
        }
        fs::copy(kernel_image, boot.join("vmlinuz")).map_err(io_err("copy", kernel_image))?;
        fs::write(boot.join("initrd.img"), initramfs).map_err(io_err("write", &boot))?;
        let cfg = format!(
            "DEFAULT tether\nPROMPT 0\nTIMEOUT 0\nLABEL tether\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND {cmdline}\n"
        );
        fs::write(iso.join("isolinux.cfg"), cfg).map_err(io_err("write", &iso))?;
        let tmp_out = out.with_extension("iso.tmp");
        let status = Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&tmp_out)
            .args(["-V", VOLUME_ID, "-J", "-R", "-isohybrid-mbr", ISOHDPFX_BIN])
            .args([
                "-c",
                "isolinux/boot.cat",
                "-b",
                "isolinux/isolinux.bin",
                "-no-emul-boot",
            ])
            .args(["-boot-load-size", "4", "-boot-info-table"])
            .arg(&tree)
            .output()
            .map_err(|e| Error::Tool("xorriso (apt-get install xorriso)", e.to_string()))?;
        if !status.status.success() {
            return Err(Error::Tool(
                "xorriso",
                String::from_utf8_lossy(&status.stderr).into_owned(),
            ));
        }
        fs::rename(&tmp_out, out).map_err(io_err("rename", out))
    })();
    let _ = fs::remove_dir_all(&tree);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let order =
            module_load_order(DEP, &["virtio_pci", "virtio_console", "virtio-rng"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_console",
                "virtio_rng"
            ]
        );
    }

    #[test]
    fn unknown_module_is_named() {
        assert_eq!(module_load_order(DEP, &["nope"]), Err("nope".to_owned()));
    }

    #[test]
    fn initramfs_lists_init_console_and_modules() {
        let dir = std::env::temp_dir().join(format!("biso-test-{}", std::process::id()));
        let tree = dir.join("lib/modules/1.0");
        fs::create_dir_all(tree.join("kernel/drivers/virtio")).unwrap();
        fs::create_dir_all(tree.join("kernel/drivers/char/hw_random")).unwrap();
        fs::create_dir_all(tree.join("kernel/drivers/char")).unwrap();
        fs::write(tree.join("modules.dep"), DEP).unwrap();
        for l in DEP.lines() {
            let p = l.split(':').next().unwrap();
            fs::write(tree.join(p), b"\x7fELF").unwrap();
        }
        fs::write(dir.join("vmlinuz"), b"k").unwrap();
        fs::write(dir.join("abi"), "1.0\n").unwrap();
        let tether = dir.join("tether");
        fs::write(&tether, b"binary").unwrap();
        let kernel = Kernel::from_dir(&dir).unwrap();
        let raw = build_initramfs(&InitramfsSpec {
            tether: &tether,
            kernel: &kernel,
            modules: &["virtio_console"],
        })
        .unwrap();
        // Uncompressed: a newc archive from the first byte.
        assert!(raw.starts_with(b"070701"));
        let mut names = Vec::new();
        let mut rest = &raw[..];
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            let name = r.entry().name().to_owned();
            if r.entry().is_trailer() {
                break;
            }
            if name == "lib/modules/load-order" {
                let mut s = String::new();
                io::Read::read_to_string(&mut r, &mut s).unwrap();
                assert_eq!(s, "virtio_ring.ko\nvirtio.ko\nvirtio_console.ko\n");
            }
            if name == "dev/console" {
                assert_eq!(r.entry().mode() & 0o170000, 0o020000);
                assert_eq!((r.entry().rdev_major(), r.entry().rdev_minor()), (5, 1));
            }
            names.push(name);
            rest = r.finish().unwrap();
        }
        assert!(names.contains(&"init".to_owned()));
        assert!(names.contains(&"lib/modules/virtio_console.ko".to_owned()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
