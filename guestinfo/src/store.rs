//! Host-side key stores: what the VMX keeps for a VM. Stores hold *wire* values (`<nil>` for
//! the empty string), exactly what a guest reads back; keys are case-insensitive like VMX
//! option names (the most recent spelling is kept).
//!
//! [`FileStore`] persists to a VMX-like text file, one `key = "value"` per line. Like the VMX
//! it escapes with `|` plus two upper-case hex digits: `|` itself (`|7C`), `"` (`|22`) and
//! every control character (`|0A`…); keys additionally escape space (`|20`), `=` (`|3D`) and
//! `#` (`|23`). Everything else, backslash included, is written as is. Any value round-trips.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use crate::transport::{from_wire, to_wire};
use crate::{decode, encode, ContainerConfig, DecodeError, EncodeError, Map};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// store file {path}: {source}
    #[error("store file {path}: {source}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// line {line}: {message}
    #[error("line {line}: {message}")]
    Parse {
        /// The line of the file, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// encoding the config failed: {0}
    #[error("encoding the config failed: {0}")]
    Encode(#[from] EncodeError),
    /// decoding the config failed: {0}
    #[error("decoding the config failed: {0}")]
    Decode(#[from] DecodeError),
}

/// A VMX-like key store (wire values).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The wire value of `key` (case-insensitive).
    fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a wire value.
    fn set(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Sets many wire values at once (one file write for [`FileStore`]).
    fn set_all(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        for (k, v) in entries {
            self.set(k, v)?;
        }
        Ok(())
    }
    /// Every key with its wire value, in the spelling last written.
    fn all(&self) -> Result<Map, StoreError>;
}

/// Case-insensitive table: lower-cased key ⇒ (spelling, value).
type Table = BTreeMap<String, (String, String)>;

fn table_set(t: &mut Table, key: &str, value: &str) {
    t.insert(key.to_ascii_lowercase(), (key.to_owned(), value.to_owned()));
}

fn table_all(t: &Table) -> Map {
    t.values().cloned().collect()
}

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemStore {
    table: RwLock<Table>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        Ok(t.get(&key.to_ascii_lowercase()).map(|(_, v)| v.clone()))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut t = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table_set(&mut t, key, value);
        Ok(())
    }

    fn all(&self) -> Result<Map, StoreError> {
        let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
        Ok(table_all(&t))
    }
}

/// A store persisted to a VMX-like file; every change rewrites it atomically (temporary file,
/// fsync, rename).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    table: Mutex<Table>,
}

impl FileStore {
    /// Opens (or starts) the store at `path`; a missing file is an empty store.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut table = Table::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                for (k, v) in parse_vmx(&text)? {
                    table_set(&mut table, &k, &v);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        Ok(FileStore {
            path,
            table: Mutex::new(table),
        })
    }

    /// The file backing this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn persist(&self, table: &Table) -> Result<(), StoreError> {
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let text = format_vmx(table.values().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(text.as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &self.path).map_err(io_err)
    }
}

impl Store for FileStore {
    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .get(&key.to_ascii_lowercase())
            .map(|(_, v)| v.clone()))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut t = self.lock();
        let before = t.clone();
        table_set(&mut t, key, value);
        self.persist(&t).inspect_err(|_| *t = before)
    }

    fn set_all(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        let mut t = self.lock();
        let before = t.clone();
        for (k, v) in entries {
            table_set(&mut t, k, v);
        }
        self.persist(&t).inspect_err(|_| *t = before)
    }

    fn all(&self) -> Result<Map, StoreError> {
        Ok(table_all(&self.lock()))
    }
}

/// Writes a config into a store as the port layer would (every key, `""` as `<nil>`).
/// Like the PL, stale keys are not deleted.
pub fn write_config(store: &dyn Store, cfg: &ContainerConfig) -> Result<(), StoreError> {
    let entries: Vec<(String, String)> = encode(cfg)?
        .into_iter()
        .map(|(k, v)| {
            let wire = to_wire(&v).to_owned();
            (k, wire)
        })
        .collect();
    store.set_all(&entries)
}

/// The store's keys as a plain map (`<nil>` ⇒ `""`, empty values dropped as absent).
pub fn plain_map(store: &dyn Store) -> Result<Map, StoreError> {
    Ok(store
        .all()?
        .into_iter()
        .filter_map(|(k, v)| from_wire(&v).map(|v| (k, v)))
        .collect())
}

/// Reads the full config (host view: every field, see [`crate::decode`]).
pub fn read_config(store: &dyn Store) -> Result<ContainerConfig, StoreError> {
    Ok(decode(&plain_map(store)?)?)
}

fn escape(out: &mut String, s: &str, key: bool) {
    for c in s.chars() {
        let special =
            matches!(c, '|' | '"') || c.is_control() || (key && matches!(c, ' ' | '=' | '#'));
        if special {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "|{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

fn unescape(s: &str, line: usize) -> Result<String, StoreError> {
    let err = |message: &str| StoreError::Parse {
        line,
        message: message.to_owned(),
    };
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'|' {
            bytes.push(b);
            continue;
        }
        let hex = [it.next(), it.next()];
        let [Some(h), Some(l)] = hex else {
            return Err(err("'|' must be followed by two hex digits"));
        };
        let digits = [h, l];
        let text = std::str::from_utf8(&digits).map_err(|_| err("bad escape"))?;
        bytes.push(u8::from_str_radix(text, 16).map_err(|_| err("bad escape"))?);
    }
    String::from_utf8(bytes).map_err(|_| err("escapes do not form UTF-8"))
}

/// Renders entries as VMX-like `key = "value"` lines.
pub fn format_vmx<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in entries {
        escape(&mut out, k, true);
        out.push_str(" = \"");
        escape(&mut out, v, false);
        out.push_str("\"\n");
    }
    out
}

/// Parses VMX-like `key = "value"` lines (`#` comments and blank lines skipped; unquoted
/// values accepted).
pub fn parse_vmx(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            return Err(StoreError::Parse {
                line,
                message: "expected `key = \"value\"`".to_owned(),
            });
        };
        let v = v.trim();
        let v = match v.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').ok_or_else(|| StoreError::Parse {
                line,
                message: "unterminated quoted value".to_owned(),
            })?,
            None => v,
        };
        if v.contains('"') {
            return Err(StoreError::Parse {
                line,
                message: "unescaped '\"' in value".to_owned(),
            });
        }
        out.push((unescape(k.trim(), line)?, unescape(v, line)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guestinfo-store-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        dir.join(name)
    }

    #[test]
    fn vmx_escaping_round_trips_anything() {
        let nasty = [
            ("guestinfo.vice./x", "plain"),
            ("guestinfo.vice./q", "say \"hi\" | bye \\ back\\slash"),
            ("guestinfo.vice./nl", "line1\nline2\r\t\u{0}end"),
            ("guestinfo.vice./u", "héllo — ünïcode ✓"),
            ("weird key=#", "|7C literally"),
            ("guestinfo.vice./empty", ""),
            ("guestinfo.vice./nil", "<nil>"),
        ];
        let text = format_vmx(nasty.iter().copied());
        assert!(text.contains("say |22hi|22 |7C bye \\ back\\slash"));
        assert!(text.contains("weird|20key|3D|23 = "));
        let back = match parse_vmx(&text) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let want: Vec<(String, String)> = nasty
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn vmx_parse_errors_name_the_line() {
        for bad in [
            "no equals sign",
            "k = \"open",
            "k = \"a|zz\"",
            "k = \"a\"b\"",
        ] {
            let text = format!("# comment\n\n{bad}\n");
            assert!(
                matches!(parse_vmx(&text), Err(StoreError::Parse { line: 3, .. })),
                "{bad}"
            );
        }
        assert_eq!(
            parse_vmx(".encoding = \"UTF-8\"\nmemsize = 512\n").ok(),
            Some(vec![
                (".encoding".to_owned(), "UTF-8".to_owned()),
                ("memsize".to_owned(), "512".to_owned())
            ])
        );
    }

    #[test]
    fn mem_store_is_case_insensitive() {
        let s = MemStore::new();
        assert!(s.set("guestinfo.vice./sessions|x/User", "root").is_ok());
        assert_eq!(
            s.get("GUESTINFO.vice./sessions|x/user")
                .ok()
                .flatten()
                .as_deref(),
            Some("root")
        );
        assert!(s.set("guestinfo.vice./sessions|x/user", "nobody").is_ok());
        let all = s.all().unwrap_or_default();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all.get("guestinfo.vice./sessions|x/user")
                .map(String::as_str),
            Some("nobody")
        );
    }

    #[test]
    fn file_store_persists_and_reloads() {
        let path = temp_path("vm.vmx");
        let _ = fs::remove_file(&path);
        let cfg = match crate::decode(&crate::container_tests::fixture()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        {
            let store = match FileStore::open(&path) {
                Ok(s) => s,
                Err(e) => panic!("{e}"),
            };
            assert!(write_config(&store, &cfg).is_ok());
            assert!(store
                .set("guestinfo.vice..x", "a \"quoted\"\nvalue|pipe")
                .is_ok());
            assert_eq!(
                store.get("common/name").ok().flatten().as_deref(),
                Some("sleepy_turing")
            );
            assert_eq!(
                store.get("common/notes").ok().flatten().as_deref(),
                Some("<nil>")
            );
        }
        let store = match FileStore::open(&path) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            store.get("guestinfo.vice..x").ok().flatten().as_deref(),
            Some("a \"quoted\"\nvalue|pipe")
        );
        let back = match read_config(&store) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(back, cfg);
        let _ = fs::remove_file(&path);
    }
}
