//! Files the tether owns inside the container: `/etc/hostname`, `/etc/hosts` and
//! `/etc/resolv.conf`. The working copies live in `/.tether/etc` and are bind-mounted over
//! the image's files, as the original did, so the image's disk is never edited and the
//! image's own `/etc/hosts` entries are kept.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors setting up `/etc` files.
#[derive(Debug, thiserror::Error)]
pub enum EtcError {
    /// a file operation failed
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    /// a mount or system call failed
    #[error("{what} {path}: {errno}")]
    Sys {
        what: &'static str,
        path: String,
        errno: nix::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EtcError + 'a {
    move |source| EtcError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The hostname of a container: `hostname[.domainname]`, else the first 12 characters of its ID.
pub fn hostname_for(id: &str, hostname: &str, domainname: &str) -> String {
    if !hostname.is_empty() {
        if domainname.is_empty() {
            hostname.to_owned()
        } else {
            format!("{hostname}.{domainname}")
        }
    } else {
        id.chars().take(12).collect()
    }
}

/// An `/etc/hosts` table that keeps lines in a stable order (the original's were random).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hosts {
    entries: Vec<(IpAddr, Vec<String>)>,
}

impl Hosts {
    /// Parses a hosts file, dropping comments, blank lines and malformed lines.
    pub fn parse(text: &str) -> Hosts {
        let mut h = Hosts::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut f = line.split_whitespace();
            let (Some(ip), Some(_)) = (f.next(), line.split_whitespace().nth(1)) else {
                continue;
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            for name in f {
                h.add(ip, name);
            }
        }
        h
    }

    /// Maps `name` to `ip`, keeping earlier names of that address.
    pub fn add(&mut self, ip: IpAddr, name: &str) {
        if name.is_empty() {
            return;
        }
        match self.entries.iter_mut().find(|(a, _)| *a == ip) {
            Some((_, names)) => {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            None => self.entries.push((ip, vec![name.to_owned()])),
        }
    }

    /// Maps `name` to `ip` alone: the name leaves the line of any other address (a line left
    /// without names goes). The original moved every name sharing the old line along with
    /// it; only the one name is meant, so only it moves.
    pub fn set(&mut self, ip: IpAddr, name: &str) {
        if name.is_empty() {
            return;
        }
        for (a, names) in &mut self.entries {
            if *a != ip {
                names.retain(|n| n != name);
            }
        }
        self.entries.retain(|(_, names)| !names.is_empty());
        self.add(ip, name);
    }

    /// The standard localhost set the original always added.
    pub fn add_localhost(&mut self) {
        let v4: IpAddr = [127, 0, 0, 1].into();
        for n in [
            "localhost",
            "localhost4",
            "localhost.localdomain",
            "localhost4.localdomain4",
        ] {
            self.add(v4, n);
        }
        let v6: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
        for n in [
            "ip6-localhost",
            "localhost",
            "localhost.localdomain",
            "localhost6.localdomain6",
            "ip6-loopback",
        ] {
            self.add(v6, n);
        }
        for (ip, n) in [
            ("fe00::", "ip6-localnet"),
            ("ff00::", "ip6-mcastprefix"),
            ("ff02::1", "ip6-allnodes"),
            ("ff02::2", "ip6-allrouters"),
        ] {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                self.add(ip, n);
            }
        }
    }

    /// File content: one line per address, single spaces.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(ip, names)| format!("{ip} {}\n", names.join(" ")))
            .collect()
    }
}

/// `/etc/resolv.conf` as the tether writes it (lifecycle §6.6): name servers in the order
/// they were added, without duplicates, then the original's fixed options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    nameservers: Vec<IpAddr>,
}

impl ResolvConf {
    pub fn add(&mut self, ip: IpAddr) {
        if !self.nameservers.contains(&ip) {
            self.nameservers.push(ip);
        }
    }

    pub fn nameservers(&self) -> &[IpAddr] {
        &self.nameservers
    }

    pub fn render(&self) -> String {
        let mut s: String = self
            .nameservers
            .iter()
            .map(|ip| format!("nameserver {ip}\n"))
            .collect();
        s.push_str("options timeout:15\noptions attempts:5\n");
        s
    }
}

/// Edits the tether's hosts table (`<private>/hosts`, made by [`setup_names`]) and
/// publishes it over `<etc>/hosts`; `etc` = `None` only writes the working copy.
pub fn update_hosts(
    private: &Path,
    etc: Option<&Path>,
    edit: impl FnOnce(&mut Hosts),
) -> Result<(), EtcError> {
    let hp = private.join("hosts");
    let mut hosts = match fs::read_to_string(&hp) {
        Ok(text) => Hosts::parse(&text),
        Err(_) => {
            // setup_names has not run: start from the image's file, as it would have.
            let image = etc.map(|e| e.join("hosts"));
            let text = image.and_then(|p| fs::read_to_string(p).ok());
            let mut h = Hosts::parse(&text.unwrap_or_default());
            h.add_localhost();
            h
        }
    };
    edit(&mut hosts);
    fs::create_dir_all(private).map_err(io_err("mkdir", private))?;
    write_atomic(&hp, hosts.render().as_bytes(), 0o644)?;
    match etc {
        Some(etc) => bind_over(&hp, &etc.join("hosts")),
        None => Ok(()),
    }
}

/// Writes `<private>/resolv.conf` and publishes it over `<etc>/resolv.conf` (creating the
/// image's file if missing); `etc` = `None` only writes the working copy. The image's own
/// resolv.conf is not merged, as in the original.
pub fn publish_resolv(
    private: &Path,
    etc: Option<&Path>,
    conf: &ResolvConf,
) -> Result<(), EtcError> {
    fs::create_dir_all(private).map_err(io_err("mkdir", private))?;
    let rp = private.join("resolv.conf");
    write_atomic(&rp, conf.render().as_bytes(), 0o644)?;
    match etc {
        Some(etc) => bind_over(&rp, &etc.join("resolv.conf")),
        None => Ok(()),
    }
}

/// Writes `content` to `path` atomically (temp file + rename in the same directory).
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), EtcError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).map_err(io_err("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

/// Bind-mounts the tether's copy `src` over the image's `target`, creating the target (and
/// its directory) if the image lacks it.
pub fn bind_over(src: &Path, target: &Path) -> Result<(), EtcError> {
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(io_err("mkdir", dir))?;
    }
    // A dangling symlink (Debian images link /etc/resolv.conf into /run) cannot be a mount
    // target; replace it with a file, which only affects this container's disk.
    if fs::symlink_metadata(target)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
        && !target.exists()
    {
        let _ = fs::remove_file(target);
    }
    if !target.exists() {
        fs::write(target, b"").map_err(io_err("create", target))?;
    }
    // Replace an earlier bind so repeated updates do not stack mounts.
    let _ = umount2(target, MntFlags::MNT_DETACH);
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| EtcError::Sys {
        what: "bind mount onto",
        path: target.display().to_string(),
        errno,
    })
}

/// Sets the kernel hostname and publishes `/etc/hostname` and `/etc/hosts` in the container.
/// `private` is the tether's directory (`/.tether/etc`).
pub fn setup_names(private: &Path, hostname: &str, name: &str) -> Result<(), EtcError> {
    fs::create_dir_all(private).map_err(io_err("mkdir", private))?;
    nix::unistd::sethostname(hostname).map_err(|errno| EtcError::Sys {
        what: "sethostname",
        path: hostname.into(),
        errno,
    })?;

    let hn = private.join("hostname");
    // No trailing newline, as the original wrote it.
    write_new(&hn, hostname.as_bytes(), 0o644)?;
    bind_over(&hn, Path::new("/etc/hostname"))?;

    let mut hosts = Hosts::parse(&fs::read_to_string("/etc/hosts").unwrap_or_default());
    hosts.add_localhost();
    for ip in [
        IpAddr::from([127, 0, 1, 1]),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ] {
        hosts.add(ip, hostname);
        hosts.add(ip, name);
    }
    let hp = private.join("hosts");
    write_new(&hp, hosts.render().as_bytes(), 0o644)?;
    bind_over(&hp, Path::new("/etc/hosts"))
}

/// Writes a file of the tether's that nothing reads yet (boot, before the first launch): in
/// place, without [`write_atomic`]'s rename and chmod, kernel paths the boot otherwise runs
/// for nothing under TCG. One that exists already (a boot that retried) is replaced
/// atomically.
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), EtcError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path);
    match created {
        Ok(mut f) => {
            f.write_all(content).map_err(io_err("write", path))?;
            // The umask may have taken bits off `mode`; PID 1's is 022, which leaves 0644.
            match f.metadata() {
                Ok(m) if m.permissions().mode() & 0o7777 == mode => Ok(()),
                _ => fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", path)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            write_atomic(path, content, mode)
        }
        Err(e) => Err(io_err("create", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_rules() {
        assert_eq!(hostname_for("0123456789abcdef", "", ""), "0123456789ab");
        assert_eq!(hostname_for("0123456789abcdef", "web", ""), "web");
        assert_eq!(
            hostname_for("0123456789abcdef", "web", "example.com"),
            "web.example.com"
        );
    }

    #[test]
    fn hosts_keeps_image_entries_and_adds_ours() {
        let mut h =
            Hosts::parse("# c\n10.1.1.1 foo bar\nbad\n999.1.1.1 x\n\n127.0.0.1 localhost\n");
        h.add_localhost();
        h.add([127, 0, 1, 1].into(), "myhost");
        h.add([127, 0, 1, 1].into(), "");
        let text = h.render();
        assert!(text.starts_with("10.1.1.1 foo bar\n127.0.0.1 localhost localhost4 localhost.localdomain localhost4.localdomain4\n"));
        assert!(text.contains("::1 ip6-localhost localhost localhost.localdomain localhost6.localdomain6 ip6-loopback\n"));
        assert!(text.ends_with("127.0.1.1 myhost\n"));
        assert!(!text.contains("bad"));
        assert!(!text.contains("999"));
        assert_eq!(Hosts::parse(&text), h);
    }

    #[test]
    fn set_moves_only_that_name() {
        let mut h = Hosts::parse("192.0.2.10 bridge.localhost\n192.0.2.11 other keep\n");
        h.set("192.0.2.11".parse().unwrap(), "bridge.localhost");
        assert_eq!(h.render(), "192.0.2.11 other keep bridge.localhost\n");
        h.set("192.0.2.12".parse().unwrap(), "other");
        assert_eq!(
            h.render(),
            "192.0.2.11 keep bridge.localhost\n192.0.2.12 other\n"
        );
        h.set("192.0.2.12".parse().unwrap(), "");
        assert_eq!(h.entries.len(), 2);
    }

    #[test]
    fn resolv_conf_content() {
        let mut r = ResolvConf::default();
        assert_eq!(r.render(), "options timeout:15\noptions attempts:5\n");
        for ip in ["172.16.0.1", "8.8.8.8", "172.16.0.1"] {
            r.add(ip.parse().unwrap());
        }
        assert_eq!(
            r.render(),
            "nameserver 172.16.0.1\nnameserver 8.8.8.8\noptions timeout:15\noptions attempts:5\n"
        );
    }

    #[test]
    fn new_files_are_written_in_place_then_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("tether-etc-new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let f = d.join("hostname");
        write_new(&f, b"first", 0o644).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"first");
        // A mode the umask would trim is still what the file gets.
        let g = d.join("shared");
        write_new(&g, b"x", 0o666).unwrap();
        assert_eq!(
            fs::metadata(&g).unwrap().permissions().mode() & 0o7777,
            0o666
        );
        // Written again (a retried boot): replaced whole, no leftover temporary file.
        write_new(&f, b"second", 0o644).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert!(!d.join("hostname.tmp").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn working_copies_without_publishing() {
        let d = std::env::temp_dir().join(format!("tether-etc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let private = d.join("private");
        let image = d.join("etc");
        fs::create_dir_all(&image).unwrap();
        fs::write(image.join("hosts"), "10.1.1.1 foo\n").unwrap();
        // Without a working copy, the image's table plus localhost is the start.
        update_hosts(&private, None, |h| {
            h.set("192.0.2.10".parse().unwrap(), "bridge.localhost")
        })
        .unwrap();
        let text = fs::read_to_string(private.join("hosts")).unwrap();
        assert!(text.ends_with("192.0.2.10 bridge.localhost\n"), "{text}");
        assert!(text.contains("127.0.0.1 localhost"), "{text}");
        update_hosts(&private, None, |h| {
            h.set("192.0.2.11".parse().unwrap(), "bridge.localhost")
        })
        .unwrap();
        let text = fs::read_to_string(private.join("hosts")).unwrap();
        assert!(!text.contains("192.0.2.10"), "{text}");
        assert!(text.ends_with("192.0.2.11 bridge.localhost\n"), "{text}");

        let mut r = ResolvConf::default();
        r.add("192.0.2.1".parse().unwrap());
        publish_resolv(&private, None, &r).unwrap();
        assert_eq!(
            fs::read_to_string(private.join("resolv.conf")).unwrap(),
            r.render()
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
