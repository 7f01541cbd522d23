//! The VIC key algorithm (`pkg/vsphere/extraconfig/keys.go`, spec guestinfo.md §4).
//!
//! Everything here is a faithful port, including the quirks the spec tells us not to "fix":
//! global separator rewriting on scope change, suffix stripping at the first `@`, and the
//! 16-character root removal for hidden children of visible parents.

/// Root of every guest-visible VIC key.
pub const ROOT: &str = "guestinfo.vice.";
/// Prefix the VMX uses to decide what the guest can reach.
pub const GUESTINFO: &str = "guestinfo.";
/// Separator for map keys, struct-slice indices and primitive-slice values.
pub const SEPARATOR: char = '|';
const SUFFIX_SEPARATOR: char = '@';
const SECRET: &str = "secret";
const NON_PERSISTENT: &str = "non-persistent";

/// Scope bits, same values as the original (`Invalid=1 … Secret=128`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scope(u8);

impl Scope {
    /// Not a usable scope.
    pub const INVALID: Scope = Scope(1);
    /// No `guestinfo.` prefix: the guest cannot see the key.
    pub const HIDDEN: Scope = Scope(2);
    /// `guestinfo.vice./…`: the guest reads it, only the host writes it.
    pub const READ_ONLY: Scope = Scope(4);
    /// Written by the guest, never read back.
    pub const WRITE_ONLY: Scope = Scope(8);
    /// `guestinfo.vice..…`: the guest writes it back.
    pub const READ_WRITE: Scope = Scope(16);
    /// `@non-persistent`: gone when the VM powers off (exec keys).
    pub const NON_PERSISTENT: Scope = Scope(32);
    /// Changes while the VM runs; no effect on the key's shape.
    pub const VOLATILE: Scope = Scope(64);
    /// `@secret`: encrypted by the original (not supported here).
    pub const SECRET: Scope = Scope(128);

    /// The bits, as the original numbers them.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Whether any bit of `other` is set.
    pub const fn contains(self, other: Scope) -> bool {
        self.0 & other.0 != 0
    }
    /// This scope with the bits of `other` added.
    #[must_use]
    pub const fn with(self, other: Scope) -> Scope {
        Scope(self.0 | other.0)
    }

    /// Parses a `scope:"…"` tag value (comma separated words). An empty tag means hidden +
    /// read-only; any unknown word makes the whole field invalid (skipped).
    pub fn from_words(words: &str) -> Scope {
        if words.split(',').all(str::is_empty) {
            return Scope::HIDDEN.with(Scope::READ_ONLY);
        }
        let mut scope = Scope::default();
        for word in words.split(',') {
            scope = scope.with(match word {
                "hidden" => Scope::HIDDEN,
                "read-only" => Scope::READ_ONLY,
                "read-write" => Scope::READ_WRITE,
                NON_PERSISTENT => Scope::NON_PERSISTENT,
                "volatile" => Scope::VOLATILE,
                SECRET => Scope::SECRET.with(Scope::READ_ONLY),
                _ => return Scope::INVALID,
            });
        }
        scope
    }

    /// The scope implied by a key or prefix text (`calculateScopeFromKey` + `calculateScope`).
    /// Untagged fields inherit this from their parent's key.
    pub fn of_key(key: &str) -> Scope {
        let mut scope = Scope::default();
        if !key.starts_with(ROOT) {
            scope = scope.with(Scope::HIDDEN);
        }
        scope = scope.with(if key.contains('/') {
            Scope::READ_ONLY
        } else {
            Scope::READ_WRITE
        });
        let mut suffixes = key.split(SUFFIX_SEPARATOR).skip(1);
        if suffixes.clone().any(|s| s == SECRET) {
            scope = scope.with(Scope::SECRET).with(Scope::READ_ONLY);
        }
        if suffixes.any(|s| s == NON_PERSISTENT) {
            scope = scope.with(Scope::NON_PERSISTENT);
        }
        scope
    }
}

/// `calculateKey(scope, prefix, name)`: `None` means the field is skipped (invalid scope, or
/// hidden combined with non-persistent).
pub fn calculate_key(scope: Scope, prefix: &str, name: &str) -> Option<String> {
    if scope.contains(Scope::INVALID) {
        return None;
    }
    let name = name.trim();
    let hide = scope.contains(Scope::HIDDEN);
    let write = scope.contains(Scope::READ_WRITE);
    let visible = prefix.starts_with(ROOT);
    let (new, old) = if !hide && write {
        ('.', '/')
    } else {
        ('/', '.')
    };

    let base = prefix
        .split_once(SUFFIX_SEPARATOR)
        .map_or(prefix, |(base, _)| base);
    let mut out = if base.is_empty() {
        name.to_owned()
    } else {
        let mut s = String::with_capacity(base.len() + 1 + name.len());
        s.push_str(base);
        s.push(new);
        s.push_str(name);
        s
    };
    if scope.contains(Scope::SECRET) {
        out.push(SUFFIX_SEPARATOR);
        out.push_str(SECRET);
    }
    if scope.contains(Scope::NON_PERSISTENT) {
        if hide {
            return None;
        }
        out.push(SUFFIX_SEPARATOR);
        out.push_str(NON_PERSISTENT);
    }

    if hide {
        if !visible {
            return Some(out);
        }
        // Strip the root and the RO/RW signifier that follows it.
        return out.get(ROOT.len() + 1..).map(str::to_owned);
    }

    // The original rewrites every separator of the whole key, the root's own dots included,
    // and then restores the root. One pass into the final string does the same (both
    // separators are one byte, so positions do not move): this runs for every field of
    // every decode and encode, on PID 1's boot path.
    let (head, rest) = if visible {
        (ROOT, out.get(ROOT.len()..)?)
    } else {
        (ROOT, out.as_str())
    };
    let mut key = String::with_capacity(head.len() + 1 + rest.len());
    key.push_str(head);
    if !visible {
        key.push(new);
    }
    key.extend(rest.chars().map(|c| if c == old { new } else { c }));
    Some(key)
}

/// `appendToPrefix`: joins `value` to `prefix` with `separator`, keeping any `@…` suffix at the
/// very end of the key.
pub fn append_to_prefix(prefix: &str, separator: &str, value: &str) -> String {
    let (base, suffix) = match prefix.find(SUFFIX_SEPARATOR) {
        Some(i) => prefix.split_at(i),
        None => (prefix, ""),
    };
    let mut key = String::with_capacity(prefix.len() + separator.len() + value.len());
    key.push_str(base);
    key.push_str(separator);
    key.push_str(value);
    key.push_str(suffix);
    key
}

/// Key of an element of a struct slice / map entry: `prefix|value` (suffix kept last).
pub fn entry_key(prefix: &str, value: &str) -> String {
    append_to_prefix(prefix, "|", value)
}

/// Key holding the `|`-joined values of a primitive slice: `prefix~` (suffix kept last).
pub fn values_key(prefix: &str) -> String {
    append_to_prefix(prefix, "", "~")
}

/// Our extension for primitive lists with a `|` inside an element (vmware/vic#3510): beside
/// the original's `key~`, which splits such an element, `key~b64` carries every element
/// exactly, each in standard base64 and joined with `|`. It is written only when needed;
/// the original ignores the key, and a reader takes it only together with `key~` from the
/// same writer, so a later `key~` without it wins.
pub fn exact_values_key(prefix: &str) -> String {
    append_to_prefix(prefix, "", "~b64")
}

/// Whether the guest may write this key: the VMX (and the original guest sink) refuse any
/// key containing `/`.
pub fn is_guest_writable(key: &str) -> bool {
    !key.contains('/')
}

/// A separator-insensitive, case-insensitive form of a key used to ask "does anything exist at
/// or below this key?". Scope changes rewrite separators (and strip the root for hidden
/// children), so the path is compared with every `.`/`/` folded to `/` and without the root
/// and the `@…` suffixes. Visibility is kept apart: `H:common/name` and `RO:common/name` are
/// different keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NormKey {
    pub visible: bool,
    pub path: String,
}

impl NormKey {
    pub fn new(key: &str) -> NormKey {
        let lower = key.to_ascii_lowercase();
        let (visible, rest) = if lower.starts_with(ROOT) {
            (true, lower.get(ROOT.len() + 1..).unwrap_or(""))
        } else {
            (false, lower.as_str())
        };
        let rest = rest.split(SUFFIX_SEPARATOR).next().unwrap_or("");
        NormKey {
            visible,
            path: rest.replace('.', "/"),
        }
    }

    /// True when `other` is this key itself or lies below it (`/`, `|` or `~` follows).
    pub fn covers(&self, other: &NormKey) -> bool {
        match other.path.strip_prefix(self.path.as_str()) {
            Some("") => self.visible == other.visible,
            Some(rest) => rest.starts_with(['/', '|', '~']),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro() -> Scope {
        Scope::READ_ONLY
    }
    fn rw() -> Scope {
        Scope::READ_WRITE
    }

    #[test]
    fn scope_words() {
        assert_eq!(Scope::from_words(""), Scope::HIDDEN.with(Scope::READ_ONLY));
        assert_eq!(Scope::from_words("read-only"), ro());
        assert_eq!(
            Scope::from_words("read-only,non-persistent"),
            ro().with(Scope::NON_PERSISTENT)
        );
        assert_eq!(
            Scope::from_words("secret"),
            Scope::SECRET.with(Scope::READ_ONLY)
        );
        assert_eq!(Scope::from_words("bogus"), Scope::INVALID);
        assert_eq!(Scope::from_words("read-only,bogus"), Scope::INVALID);
    }

    #[test]
    fn scope_of_prefix() {
        assert_eq!(Scope::of_key(""), Scope::HIDDEN.with(rw()));
        assert_eq!(Scope::of_key("guestinfo.vice./a"), ro());
        assert_eq!(Scope::of_key("guestinfo.vice..a"), rw());
        assert_eq!(
            Scope::of_key("guestinfo.vice./execs|x@non-persistent"),
            ro().with(Scope::NON_PERSISTENT)
        );
        assert_eq!(Scope::of_key("executorconfig"), Scope::HIDDEN.with(rw()));
    }

    #[test]
    fn key_shapes() {
        assert_eq!(
            calculate_key(ro(), "", "common/id").as_deref(),
            Some("guestinfo.vice./common/id")
        );
        assert_eq!(
            calculate_key(rw(), "", "createtime").as_deref(),
            Some("guestinfo.vice..createtime")
        );
        // RO parent, RW child: the whole path is rewritten with '.'.
        assert_eq!(
            calculate_key(rw(), "guestinfo.vice./sessions|ID", "started").as_deref(),
            Some("guestinfo.vice..sessions|ID.started")
        );
        // Map key containing '.' and '/' under a RO leaf.
        assert_eq!(
            calculate_key(ro(), "guestinfo.vice./dotteds|a.b/c", "id").as_deref(),
            Some("guestinfo.vice./dotteds|a/b/c/id")
        );
        // Hidden child of a visible parent loses the root and the separator after it.
        assert_eq!(
            calculate_key(Scope::HIDDEN, "guestinfo.vice./sessions|x/common", "notes").as_deref(),
            Some("sessions|x/common/notes")
        );
        // Hidden + non-persistent is skipped.
        assert_eq!(
            calculate_key(
                Scope::HIDDEN.with(Scope::NON_PERSISTENT),
                "guestinfo.vice./execs|x@non-persistent",
                "notes"
            ),
            None
        );
        // Suffixes are re-added at the end.
        assert_eq!(
            calculate_key(
                ro().with(Scope::NON_PERSISTENT),
                "guestinfo.vice./execs|x@non-persistent",
                "common"
            )
            .as_deref(),
            Some("guestinfo.vice./execs|x/common@non-persistent")
        );
        assert_eq!(
            calculate_key(Scope::SECRET.with(ro()), "Tell", "who").as_deref(),
            Some("guestinfo.vice./Tell/who@secret")
        );
        assert_eq!(calculate_key(Scope::INVALID, "", "x"), None);
        assert_eq!(
            calculate_key(ro(), "", "  spaced ").as_deref(),
            Some("guestinfo.vice./spaced")
        );
    }

    #[test]
    fn suffix_stays_last() {
        assert_eq!(
            entry_key("guestinfo.vice./execs@non-persistent", "id"),
            "guestinfo.vice./execs|id@non-persistent"
        );
        assert_eq!(
            values_key("guestinfo.vice./execs|e/cmd/Args@non-persistent"),
            "guestinfo.vice./execs|e/cmd/Args~@non-persistent"
        );
        assert_eq!(values_key("a/b"), "a/b~");
    }

    #[test]
    fn norm_covers() {
        let s = NormKey::new("guestinfo.vice./sessions|ID");
        assert!(s.covers(&NormKey::new("guestinfo.vice..sessions|ID.started")));
        assert!(s.covers(&NormKey::new("sessions|ID/common/notes")));
        assert!(!s.covers(&NormKey::new("guestinfo.vice./sessions|IDX/common/id")));
        assert!(!s.covers(&NormKey::new("sessions|ID")));
        let name = NormKey::new("guestinfo.vice./common/name");
        assert!(!name.covers(&NormKey::new("common/name")));
        assert!(name.covers(&NormKey::new("GUESTINFO.VICE./Common/Name")));
    }
}
