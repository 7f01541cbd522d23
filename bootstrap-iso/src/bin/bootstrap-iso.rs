//! `bootstrap-iso --kernel DIR --tether BIN --out ISO [--cmdline LINE] [--initramfs-out FILE]`
//!
//! Builds the container VM boot ISO around a kernel directory (see `Kernel::from_dir`) and a
//! static tether binary.

use anyhow::{bail, Context, Result};
use bootstrap_iso::{
    build_initramfs, build_iso, InitramfsSpec, Kernel, DEFAULT_CMDLINE, DEFAULT_MODULES,
};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut kernel = None;
    let mut tether = None;
    let mut out = None;
    let mut initramfs_out = None;
    let mut cmdline = DEFAULT_CMDLINE.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val()?)),
            "--tether" => tether = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--initramfs-out" => initramfs_out = Some(PathBuf::from(val()?)),
            "--cmdline" => cmdline = val()?,
            "-h" | "--help" => {
                println!("usage: bootstrap-iso --kernel DIR --tether BIN --out ISO [--cmdline LINE] [--initramfs-out FILE]");
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    let (Some(kernel), Some(tether), Some(out)) = (kernel, tether, out) else {
        bail!("--kernel, --tether and --out are required (see --help)");
    };
    let kernel = Kernel::from_dir(&kernel)?;
    let initramfs = build_initramfs(&InitramfsSpec {
        tether: &tether,
        kernel: &kernel,
        modules: DEFAULT_MODULES,
    })?;
    if let Some(p) = initramfs_out {
        std::fs::write(&p, &initramfs).with_context(|| format!("write {}", p.display()))?;
    }
    build_iso(&kernel.image, &initramfs, &cmdline, &out)?;
    println!("{}", out.display());
    Ok(())
}
