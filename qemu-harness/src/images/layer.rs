//! Applying layer tarballs as the OCI image spec says (`layer.md`), onto a model of the
//! filesystem being built.
//!
//! The applier never touches the host's filesystem: it decides, entry by entry, what the
//! result must hold and tells a [`Sink`] (the debugfs script writer, or nothing when only the
//! model of a lower layer is wanted). Because it keeps its own model of the tree, it knows
//! without following anything whether a parent is a directory, a symlink or missing:
//! - a path that leaves the root (`..` past it) or whose parent is a symlink is refused;
//! - `.wh.NAME` removes NAME (and everything under it) of the layers below;
//! - `.wh..wh..opq` removes everything of the layers below inside its directory;
//! - an entry replaces what is at its path, except that a directory over a directory merges;
//! - a hard link may name a file of this layer or of any layer below.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use super::error::{tar_err, StoreError};
use super::fsutil::EofAware;

/// A path inside the image: no leading `/`, components joined by `/`, `""` is the root.
pub(crate) type RelPath = Vec<u8>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Special,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// Identity for hard links; directories have their own too.
    ino: u32,
}

/// The namespace of the filesystem as built so far.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    nodes: BTreeMap<RelPath, Node>,
    nlink: HashMap<u32, u32>,
    next_ino: u32,
}

impl Tree {
    /// The tree of a freshly made ext4 filesystem: the root and `lost+found`.
    pub fn new_fs() -> Tree {
        let mut t = Tree {
            nodes: BTreeMap::new(),
            nlink: HashMap::new(),
            next_ino: 1,
        };
        t.insert(b"lost+found".to_vec(), Kind::Dir);
        t
    }

    fn insert(&mut self, path: RelPath, kind: Kind) {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nlink.insert(ino, 1);
        self.nodes.insert(path, Node { kind, ino });
    }

    fn kind(&self, path: &[u8]) -> Option<Kind> {
        if path.is_empty() {
            return Some(Kind::Dir);
        }
        self.nodes.get(path).map(|n| n.kind)
    }

    /// Everything strictly under `dir`, deepest first (a path sorts before its descendants).
    fn descendants(&self, dir: &[u8]) -> Vec<(RelPath, Kind)> {
        let mut lo = dir.to_vec();
        if !lo.is_empty() {
            lo.push(b'/');
        }
        let mut hi = lo.clone();
        if let Some(last) = hi.last_mut() {
            *last += 1; // '/' + 1 = '0': the first key past every "dir/..."
        }
        let range: Vec<_> = if dir.is_empty() {
            self.nodes
                .iter()
                .map(|(p, n)| (p.clone(), n.kind))
                .collect()
        } else {
            self.nodes
                .range(lo..hi)
                .map(|(p, n)| (p.clone(), n.kind))
                .collect()
        };
        range.into_iter().rev().collect()
    }
}

/// An inode's metadata as the tar header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// File type bits and permissions (incl. setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
}

pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFLNK: u32 = 0o120000;
pub(crate) const S_IFCHR: u32 = 0o020000;
pub(crate) const S_IFBLK: u32 = 0o060000;
pub(crate) const S_IFIFO: u32 = 0o010000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// Receives the filesystem operations a layer amounts to, in order. Paths are [`RelPath`]s.
pub(crate) trait Sink {
    /// Removes a non-directory, or an empty directory.
    fn remove(&mut self, path: &[u8], kind: Kind) -> Result<(), StoreError>;
    fn mkdir(&mut self, path: &[u8]) -> Result<(), StoreError>;
    /// Creates a regular file holding exactly `size` bytes of `data`.
    fn write_file(&mut self, path: &[u8], data: &mut dyn Read, size: u64)
        -> Result<(), StoreError>;
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), StoreError>;
    /// Adds a name for `target`'s inode, which then has `links` names.
    fn hardlink(&mut self, path: &[u8], target: &[u8], links: u32) -> Result<(), StoreError>;
    fn special(&mut self, path: &[u8], special: Special) -> Result<(), StoreError>;
    fn meta(&mut self, path: &[u8], meta: &Meta) -> Result<(), StoreError>;
    fn xattr(&mut self, path: &[u8], name: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// A sink that does nothing: replaying a lower layer only to learn its tree.
#[derive(Debug, Default)]
pub(crate) struct ModelOnly;

impl Sink for ModelOnly {
    fn remove(&mut self, _: &[u8], _: Kind) -> Result<(), StoreError> {
        Ok(())
    }
    fn mkdir(&mut self, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn write_file(&mut self, _: &[u8], _: &mut dyn Read, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn symlink(&mut self, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn hardlink(&mut self, _: &[u8], _: &[u8], _: u32) -> Result<(), StoreError> {
        Ok(())
    }
    fn special(&mut self, _: &[u8], _: Special) -> Result<(), StoreError> {
        Ok(())
    }
    fn meta(&mut self, _: &[u8], _: &Meta) -> Result<(), StoreError> {
        Ok(())
    }
    fn xattr(&mut self, _: &[u8], _: &str, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_META: &[u8] = b".wh..wh.";

/// Extended attributes ext4 stores and the guest kernel honours; others (e.g. NFSv4 ACLs
/// from some build hosts) are skipped, as docker skips what the backing filesystem refuses.
fn xattr_supported(name: &str) -> bool {
    ["user.", "trusted.", "security."]
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

/// Lexically cleans an entry path: strips `/` and `.`, resolves `..`; `None` when it leaves
/// the root.
pub(crate) fn clean(path: &[u8]) -> Option<RelPath> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    }
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Applies one layer (an uncompressed tar stream) to `tree`, telling `sink` what to do.
/// `layer` names the layer in errors.
pub(crate) fn apply(
    tree: &mut Tree,
    reader: impl Read,
    sink: &mut dyn Sink,
    layer: &str,
) -> Result<(), StoreError> {
    let mut input = EofAware {
        inner: reader,
        hit_eof: false,
    };
    let mut archive = tar::Archive::new(&mut input);
    let entries = archive
        .entries()
        .map_err(tar_err(format!("layer {layer}")))?;
    let mut applier = Applier {
        tree,
        sink,
        layer,
        here: HashSet::new(),
        dir_meta: Vec::new(),
    };
    for entry in entries {
        let mut entry = entry.map_err(tar_err(format!("layer {layer}")))?;
        applier.entry(&mut entry)?;
    }
    let _ = archive.into_inner();
    if input.hit_eof {
        return Err(StoreError::Tar {
            what: format!("layer {layer}"),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated: the tar stream ends without its end-of-archive blocks",
            ),
        });
    }
    applier.finish()
}

/// Extended attributes of an entry: name and value.
type Xattrs = Vec<(String, Vec<u8>)>;

struct Applier<'a> {
    tree: &'a mut Tree,
    sink: &'a mut dyn Sink,
    layer: &'a str,
    /// Paths this layer made, and their parents: what an opaque directory keeps.
    here: HashSet<RelPath>,
    /// Directory metadata, applied at the end so that adding entries cannot disturb it.
    dir_meta: Vec<(RelPath, Meta, Xattrs)>,
}

impl Applier<'_> {
    fn bad(&self, entry: &[u8], why: impl Into<String>) -> StoreError {
        StoreError::BadEntry {
            layer: self.layer.to_owned(),
            entry: show(entry),
            why: why.into(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), StoreError> {
        let raw = entry.path_bytes().into_owned();
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        let path = clean(&raw).ok_or_else(|| self.bad(&raw, "the path escapes the root"))?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(tar_err(format!("layer {}", self.layer)))?
        {
            for ext in exts {
                let ext = ext.map_err(tar_err(format!("layer {}", self.layer)))?;
                if let Ok(key) = ext.key() {
                    pax.push((key.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        let pax_num = |key: &str| {
            pax.iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
        };
        let uid = pax_num("uid").map(|v| v as u64).or_else(|| h.uid().ok());
        let gid = pax_num("gid").map(|v| v as u64).or_else(|| h.gid().ok());
        let mtime = pax_num("mtime").or_else(|| h.mtime().ok().map(|m| m as i64));
        let perm = h
            .mode()
            .map_err(|e| self.bad(&raw, format!("bad mode: {e}")))?
            & 0o7777;
        let (Some(uid), Some(gid), Some(mtime)) = (uid, gid, mtime) else {
            return Err(self.bad(&raw, "unreadable owner or time in the header"));
        };
        let xattrs: Vec<(String, Vec<u8>)> = pax
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("SCHILY.xattr.")?;
                if xattr_supported(name) {
                    Some((name.to_owned(), v.clone()))
                } else {
                    tracing::warn!(layer = self.layer, entry = %show(&raw), xattr = name, "extended attribute skipped");
                    None
                }
            })
            .collect();
        let meta = |type_bits: u32| Meta {
            mode: type_bits | perm,
            uid,
            gid,
            mtime,
        };

        let (parent, base) = split(&path);
        if base.starts_with(WHITEOUT) {
            return self.whiteout(&raw, parent, base);
        }
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let link_target = entry.link_name_bytes().map(|c| c.into_owned());
        let size = entry.size();

        if path.is_empty() {
            if !etype.is_dir() {
                return Err(self.bad(&raw, "only a directory can be the root"));
            }
            self.dir_meta.push((path, meta(S_IFDIR), xattrs));
            return Ok(());
        }
        self.parents(&raw, &path, mtime)?;
        use tar::EntryType as T;
        match etype {
            T::Directory => {
                match self.tree.kind(&path) {
                    Some(Kind::Dir) => {}
                    Some(_) => {
                        self.remove_tree(&path)?;
                        self.mkdir(&path)?;
                    }
                    None => self.mkdir(&path)?,
                }
                self.dir_meta.push((path.clone(), meta(S_IFDIR), xattrs));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.replace(&path)?;
                self.sink.write_file(&path, entry, size)?;
                self.tree.insert(path.clone(), Kind::File);
                self.finish_node(&path, meta(S_IFREG), &xattrs)?;
            }
            T::Symlink => {
                let target = link_target.ok_or_else(|| self.bad(&raw, "symlink without target"))?;
                if target.is_empty() {
                    return Err(self.bad(&raw, "symlink with an empty target"));
                }
                self.replace(&path)?;
                self.sink.symlink(&path, &target)?;
                self.tree.insert(path.clone(), Kind::Symlink);
                let m = Meta {
                    mode: S_IFLNK | 0o777,
                    ..meta(0)
                };
                self.finish_node(&path, m, &xattrs)?;
            }
            T::Link => {
                let raw_target =
                    link_target.ok_or_else(|| self.bad(&raw, "hard link without target"))?;
                self.hardlink(&raw, &path, &raw_target)?;
            }
            T::Char | T::Block | T::Fifo => {
                let (special, bits) = match etype {
                    T::Char => (Special::Char(major, minor), S_IFCHR),
                    T::Block => (Special::Block(major, minor), S_IFBLK),
                    _ => (Special::Fifo, S_IFIFO),
                };
                self.replace(&path)?;
                self.sink.special(&path, special)?;
                self.tree.insert(path.clone(), Kind::Special);
                self.finish_node(&path, meta(bits), &xattrs)?;
            }
            other => {
                return Err(self.bad(&raw, format!("unsupported tar entry type {other:?}")));
            }
        }
        self.mark_here(&path);
        Ok(())
    }

    fn mark_here(&mut self, path: &[u8]) {
        let mut p = path;
        loop {
            if !self.here.insert(p.to_vec()) {
                break; // its parents are in already
            }
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p = &p[..i],
                None => break,
            }
        }
    }

    fn finish_node(
        &mut self,
        path: &[u8],
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.sink.meta(path, &meta)?;
        for (name, value) in xattrs {
            self.sink.xattr(path, name, value)?;
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &[u8]) -> Result<(), StoreError> {
        self.sink.mkdir(path)?;
        self.tree.insert(path.to_vec(), Kind::Dir);
        Ok(())
    }

    /// Checks the parents of `path`: each must be a directory; missing ones are made (mode
    /// 0755, root's), as docker's applier does. A symlink parent is refused: following it
    /// could lead anywhere, and the spec's layers never need it.
    fn parents(&mut self, raw: &[u8], path: &[u8], mtime: i64) -> Result<(), StoreError> {
        let mut end = 0;
        while let Some(i) = path[end..].iter().position(|&b| b == b'/') {
            let dir = &path[..end + i];
            match self.tree.kind(dir) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(self.bad(
                        raw,
                        format!("its parent {} is a symlink (not followed)", show(dir)),
                    ))
                }
                Some(_) => {
                    return Err(
                        self.bad(raw, format!("its parent {} is not a directory", show(dir)))
                    )
                }
                None => {
                    self.mkdir(dir)?;
                    let m = Meta {
                        mode: S_IFDIR | 0o755,
                        uid: 0,
                        gid: 0,
                        mtime,
                    };
                    self.dir_meta.push((dir.to_vec(), m, Vec::new()));
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Whether every parent of an existing path is a directory (for whiteouts and hard
    /// link targets, which must not create anything).
    fn parents_are_dirs(&self, raw: &[u8], path: &[u8]) -> Result<bool, StoreError> {
        let mut end = 0;
        while let Some(i) = path[end..].iter().position(|&b| b == b'/') {
            let dir = &path[..end + i];
            match self.tree.kind(dir) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(self.bad(
                        raw,
                        format!("it goes through the symlink {} (not followed)", show(dir)),
                    ))
                }
                _ => return Ok(false),
            }
            end += i + 1;
        }
        Ok(true)
    }

    /// Clears the way for a new non-directory at `path`.
    fn replace(&mut self, path: &[u8]) -> Result<(), StoreError> {
        if self.tree.kind(path).is_some() {
            self.remove_tree(path)?;
        }
        Ok(())
    }

    /// Removes `path` and, for a directory, everything under it (deepest first).
    fn remove_tree(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let Some(kind) = self.tree.kind(path) else {
            return Ok(());
        };
        if kind == Kind::Dir {
            for (p, k) in self.tree.descendants(path) {
                self.remove_one(&p, k)?;
            }
        }
        self.remove_one(path, kind)
    }

    fn remove_one(&mut self, path: &[u8], kind: Kind) -> Result<(), StoreError> {
        self.sink.remove(path, kind)?;
        if let Some(node) = self.tree.nodes.remove(path) {
            if let Some(n) = self.tree.nlink.get_mut(&node.ino) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.tree.nlink.remove(&node.ino);
                }
            }
        }
        self.dir_meta.retain(|(p, _, _)| p != path);
        Ok(())
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[u8], base: &[u8]) -> Result<(), StoreError> {
        if base == OPAQUE {
            if !self.parents_are_dirs(raw, parent)? || self.tree.kind(parent) != Some(Kind::Dir) {
                if self.tree.kind(parent) == Some(Kind::Symlink) {
                    return Err(self.bad(raw, "an opaque marker inside a symlink (not followed)"));
                }
                return Ok(());
            }
            for (p, k) in self.tree.descendants(parent) {
                if !self.here.contains(&p) && self.tree.kind(&p).is_some() {
                    if k == Kind::Dir {
                        self.remove_tree(&p)?;
                    } else {
                        self.remove_one(&p, k)?;
                    }
                }
            }
            return Ok(());
        }
        if base.starts_with(WHITEOUT_META) {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk & co.): nothing to apply
        }
        let name = &base[WHITEOUT.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(self.bad(raw, "a whiteout without a name"));
        }
        if !parent.is_empty() {
            if !self.parents_are_dirs(raw, parent)? {
                return Ok(());
            }
            match self.tree.kind(parent) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(self.bad(raw, "a whiteout inside a symlink (not followed)"))
                }
                _ => return Ok(()),
            }
        }
        let mut target = parent.to_vec();
        if !target.is_empty() {
            target.push(b'/');
        }
        target.extend_from_slice(name);
        self.remove_tree(&target)
    }

    fn hardlink(&mut self, raw: &[u8], path: &[u8], raw_target: &[u8]) -> Result<(), StoreError> {
        let target = clean(raw_target)
            .ok_or_else(|| self.bad(raw, "the hard link's target escapes the root"))?;
        if !self.parents_are_dirs(raw, &target)? {
            return Err(self.bad(raw, format!("hard link to missing {}", show(&target))));
        }
        let node = match self.tree.nodes.get(&target) {
            Some(n) if n.kind != Kind::Dir => *n,
            Some(_) => return Err(self.bad(raw, "hard link to a directory")),
            None => return Err(self.bad(raw, format!("hard link to missing {}", show(&target)))),
        };
        if let Some(existing) = self.tree.nodes.get(path) {
            if existing.ino == node.ino {
                return Ok(()); // already that inode
            }
        }
        self.replace(path)?;
        let links = self.tree.nlink.get(&node.ino).copied().unwrap_or(1) + 1;
        self.sink.hardlink(path, &target, links)?;
        self.tree.nlink.insert(node.ino, links);
        self.tree.nodes.insert(path.to_vec(), node);
        self.mark_here(path);
        Ok(())
    }

    fn finish(mut self) -> Result<(), StoreError> {
        let metas = std::mem::take(&mut self.dir_meta);
        for (path, meta, xattrs) in metas {
            if self.tree.kind(&path) == Some(Kind::Dir) {
                self.finish_node(&path, meta, &xattrs)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(clean(b"a/../b").unwrap(), b"b");
        assert_eq!(clean(b"./").unwrap(), b"");
        assert!(clean(b"../x").is_none());
        assert!(clean(b"a/../../x").is_none());
    }

    #[test]
    fn descendants_are_deepest_first_and_exact() {
        let mut t = Tree::new_fs();
        for p in ["a", "a/b", "a/b/c", "a-x", "a.b", "ab"] {
            t.insert(p.as_bytes().to_vec(), Kind::Dir);
        }
        let d: Vec<_> = t
            .descendants(b"a")
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(d, ["a/b/c", "a/b"]);
    }
}
