//! A real distribution: a Debian bookworm minbase root made by `scripts/debian-image`
//! (mmdebstrap from Debian's archive, cached outside the repository) is imported with
//! `vch import -` and runs its own tools.

use std::time::Duration;

use e2e::images::debian_tarball;
use e2e::Vch;

#[test]
fn debian_minbase_imports_and_runs_its_tools() {
    let vch = Vch::new();
    let tarball = debian_tarball("");
    let (code, out, err) = vch.cmd_with_file(
        &["import", "-", "debian:bookworm"],
        &tarball,
        Duration::from_secs(300),
    );
    assert_eq!(code, 0, "vch import: {err}");
    let id = out.trim().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{out}");
    assert!(vch.image_ids().contains(&id));

    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "none",
        "--timeout",
        "180",
        "debian:bookworm",
        "sh",
        "-c",
        "cat /etc/os-release; echo packages: $(dpkg -l | wc -l); apt-get --version | head -n 1",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("VERSION_CODENAME=bookworm"), "{out}");
    assert!(out.contains("ID=debian"), "{out}");
    let packages: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("packages: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no package count in:\n{out}"));
    // A minbase has about ninety packages (five lines of dpkg's header on top).
    assert!(
        (60..200).contains(&packages),
        "dpkg -l | wc -l = {packages}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("apt 2.6") && l.ends_with("(amd64)")),
        "{out}"
    );
}
