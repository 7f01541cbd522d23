//! Writing layers into an ext4 image with `debugfs -w`, with no mount and no root.
//!
//! Every inode the image holds is made by debugfs commands: `mkdir`, `write` (content from a
//! host file), `symlink`, `ln`, `mknod`, then `sif` for the mode (type, permissions,
//! setuid/setgid/sticky), owner and time, and `ea_set` for extended attributes. debugfs
//! writes the inode fields as given whoever runs it, so owners, device nodes and
//! `security.capability` come out the same as root and as an ordinary user: there is one
//! code path, and the host files it reads are plain private files.
//!
//! debugfs quirks this relies on or avoids (e2fsprogs 1.47.0):
//! - `write`, `mknod`, `mkdir`, `symlink` and `ln` create in the current directory: paths are
//!   given as `cd <parent>` plus a plain name (a path with a slash as the new name is not
//!   reliably split).
//! - Arguments are quoted `"..."` with `""` for a quote; a line ends at `\n` or `\r`, so names
//!   holding those are refused; lines are read into an 8 KiB buffer.
//! - `ln` does not count links: `sif <target> links_count N` follows it.
//! - debugfs exits 0 even when a command fails; any message on stderr is an error.
//!
//! The commands go to a running `debugfs -f -` through a pipe as they are made, so debugfs
//! writes the disk while the applier unpacks the next files.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use super::error::{io_err, StoreError};
use super::layer::{Kind, Meta, Sink, Special, S_IFLNK};

/// Where e2fsprogs and qemu tools are: `$PATH`, then the sbin directories that an ordinary
/// user's `$PATH` lacks on Debian.
pub(crate) fn tool(name: &str) -> PathBuf {
    crate::image::sbin_tool(name)
}

const MAX_LINE: usize = 8000;

/// A running `debugfs -w -f -` on one disk, fed commands as the layer is applied, with the
/// host files its `write` and `ea_set` commands read.
#[derive(Debug)]
pub(crate) struct Script {
    child: Option<Child>,
    out: Option<BufWriter<ChildStdin>>,
    errors: Option<JoinHandle<String>>,
    files: PathBuf,
    n: u64,
    cwd: Option<Vec<u8>>,
    /// Commands sent.
    pub commands: u64,
}

enum Arg<'a> {
    Word(&'a str),
    Quoted(&'a [u8]),
}

impl Script {
    /// Starts debugfs on `disk`; host files go into `files` (a private directory).
    pub fn start(files: &Path, disk: &Path) -> Result<Script, StoreError> {
        let files = files.to_owned();
        let mut child = Command::new(tool("debugfs"))
            .arg("-w")
            .arg("-f")
            .arg("-")
            .arg(disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StoreError::Tool {
                tool: "debugfs",
                message: format!("{e} (apt-get install e2fsprogs)"),
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        // Read stderr as it comes, so that a flood of messages cannot block debugfs.
        let errors = stderr.map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = e.read_to_string(&mut text);
                text
            })
        });
        Ok(Script {
            child: Some(child),
            out: stdin.map(|i| BufWriter::with_capacity(1 << 16, i)),
            errors,
            files,
            n: 0,
            cwd: None,
            commands: 0,
        })
    }

    fn cmd(&mut self, args: &[Arg<'_>]) -> Result<(), StoreError> {
        let mut line = Vec::with_capacity(128);
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                line.push(b' ');
            }
            match a {
                Arg::Word(w) => line.extend_from_slice(w.as_bytes()),
                Arg::Quoted(q) => quote(&mut line, q)?,
            }
        }
        if line.len() > MAX_LINE {
            return Err(name_err(&line, "the path is too long for debugfs"));
        }
        line.push(b'\n');
        self.commands += 1;
        let out = self.out.as_mut().ok_or_else(|| StoreError::Tool {
            tool: "debugfs",
            message: "its input is closed".into(),
        })?;
        if out.write_all(&line).is_err() {
            // debugfs is gone: its own words say why.
            return Err(self.fail());
        }
        Ok(())
    }

    fn abs(path: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(path.len() + 1);
        a.push(b'/');
        a.extend_from_slice(path);
        a
    }

    /// `cd` to the parent of `path` (if not there) and return the plain name.
    fn enter<'p>(&mut self, path: &'p [u8]) -> Result<&'p [u8], StoreError> {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        if self.cwd.as_deref() != Some(parent) {
            self.cmd(&[Arg::Word("cd"), Arg::Quoted(&Script::abs(parent))])?;
            self.cwd = Some(parent.to_vec());
        }
        Ok(name)
    }

    fn host_file(&mut self, data: &mut dyn Read, size: u64) -> Result<PathBuf, StoreError> {
        self.n += 1;
        let p = self.files.join(self.n.to_string());
        let mut f = File::create(&p).map_err(io_err("create", &p))?;
        let copied = io::copy(&mut data.take(size), &mut f).map_err(|source| StoreError::Tar {
            what: "reading a file of the layer".into(),
            source,
        })?;
        if copied != size {
            return Err(StoreError::Tar {
                what: "reading a file of the layer".into(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("truncated: {copied} of {size} bytes"),
                ),
            });
        }
        Ok(p)
    }

    /// Ends the input, waits for debugfs and checks that every command succeeded.
    pub fn finish(mut self) -> Result<(), StoreError> {
        let flushed = self.out.take().map(|mut o| o.flush());
        let status = self.child.take().map(|mut c| c.wait());
        let errors = self.stderr_text();
        let errors: Vec<&str> = errors
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
            .take(5)
            .collect();
        if !errors.is_empty() {
            return Err(StoreError::Tool {
                tool: "debugfs",
                message: errors.join("; "),
            });
        }
        match (flushed, status) {
            (Some(Ok(())), Some(Ok(st))) if st.success() => Ok(()),
            (_, Some(Ok(st))) => Err(StoreError::Tool {
                tool: "debugfs",
                message: format!("exit status {st}"),
            }),
            _ => Err(StoreError::Tool {
                tool: "debugfs",
                message: "it could not be waited for".into(),
            }),
        }
    }

    fn stderr_text(&mut self) -> String {
        self.errors
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// The error of a debugfs that stopped reading.
    fn fail(&mut self) -> StoreError {
        self.out = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let text = self.stderr_text();
        let first: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("debugfs "))
            .take(5)
            .collect();
        StoreError::Tool {
            tool: "debugfs",
            message: if first.is_empty() {
                "it stopped reading commands".into()
            } else {
                first.join("; ")
            },
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // An abandoned build (a bad entry): stop debugfs; its disk is thrown away.
        self.out = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn name_err(name: &[u8], why: &str) -> StoreError {
    StoreError::Unsupported(format!(
        "{:?}: {why}",
        String::from_utf8_lossy(&name[..name.len().min(200)])
    ))
}

fn quote(out: &mut Vec<u8>, s: &[u8]) -> Result<(), StoreError> {
    if s.iter().any(|&b| b == b'\n' || b == b'\r' || b == 0) {
        return Err(name_err(
            s,
            "names with a newline, carriage return or NUL cannot be written by debugfs",
        ));
    }
    out.push(b'"');
    for &b in s {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    Ok(())
}

fn host(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

impl Sink for Script {
    fn remove(&mut self, path: &[u8], kind: Kind) -> Result<(), StoreError> {
        let verb = if kind == Kind::Dir { "rmdir" } else { "rm" };
        self.cmd(&[Arg::Word(verb), Arg::Quoted(&Script::abs(path))])
    }

    fn mkdir(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let name = self.enter(path)?;
        self.cmd(&[Arg::Word("mkdir"), Arg::Quoted(name)])
    }

    fn write_file(
        &mut self,
        path: &[u8],
        data: &mut dyn Read,
        size: u64,
    ) -> Result<(), StoreError> {
        let file = self.host_file(data, size)?;
        let name = self.enter(path)?;
        self.cmd(&[
            Arg::Word("write"),
            Arg::Quoted(host(&file)),
            Arg::Quoted(name),
        ])
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), StoreError> {
        if target.len() >= 4096 {
            return Err(name_err(target, "symlink target longer than 4095 bytes"));
        }
        let name = self.enter(path)?;
        self.cmd(&[Arg::Word("symlink"), Arg::Quoted(name), Arg::Quoted(target)])
    }

    fn hardlink(&mut self, path: &[u8], target: &[u8], links: u32) -> Result<(), StoreError> {
        let target = Script::abs(target);
        let name = self.enter(path)?;
        self.cmd(&[Arg::Word("ln"), Arg::Quoted(&target), Arg::Quoted(name)])?;
        let links = links.to_string();
        self.cmd(&[
            Arg::Word("sif"),
            Arg::Quoted(&target),
            Arg::Word("links_count"),
            Arg::Word(&links),
        ])
    }

    fn special(&mut self, path: &[u8], special: Special) -> Result<(), StoreError> {
        let name = self.enter(path)?;
        let (kind, major, minor) = match special {
            Special::Char(a, b) => ("c", a, b),
            Special::Block(a, b) => ("b", a, b),
            Special::Fifo => {
                return self.cmd(&[Arg::Word("mknod"), Arg::Quoted(name), Arg::Word("p")]);
            }
        };
        let (major, minor) = (major.to_string(), minor.to_string());
        self.cmd(&[
            Arg::Word("mknod"),
            Arg::Quoted(name),
            Arg::Word(kind),
            Arg::Word(&major),
            Arg::Word(&minor),
        ])
    }

    fn meta(&mut self, path: &[u8], meta: &Meta) -> Result<(), StoreError> {
        let p = Script::abs(path);
        let mode = format!("0{:o}", meta.mode);
        let uid = meta.uid.to_string();
        let gid = meta.gid.to_string();
        let mtime = format!("@{}", meta.mtime);
        let mut fields = vec![
            ("uid", uid.as_str()),
            ("gid", gid.as_str()),
            ("mtime", mtime.as_str()),
        ];
        if meta.mode & 0o170000 != S_IFLNK {
            fields.insert(0, ("mode", mode.as_str()));
        }
        for (field, value) in fields {
            self.cmd(&[
                Arg::Word("sif"),
                Arg::Quoted(&p),
                Arg::Word(field),
                Arg::Word(value),
            ])?;
        }
        Ok(())
    }

    fn xattr(&mut self, path: &[u8], name: &str, value: &[u8]) -> Result<(), StoreError> {
        let file = self.host_file(&mut &value[..], value.len() as u64)?;
        self.cmd(&[
            Arg::Word("ea_set"),
            Arg::Word("-f"),
            Arg::Quoted(host(&file)),
            Arg::Quoted(&Script::abs(path)),
            Arg::Quoted(name.as_bytes()),
        ])
    }
}

/// Runs one debugfs request (`-R`) read-only and returns its output (tests, inspection).
pub fn request(disk: &Path, request: &str) -> Result<String, StoreError> {
    let out = Command::new(tool("debugfs"))
        .arg("-R")
        .arg(request)
        .arg(disk)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StoreError::Tool {
            tool: "debugfs",
            message: e.to_string(),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
