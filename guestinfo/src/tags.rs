//! Per-field VIC annotations, the Rust counterpart of the Go struct tags
//! (`vic:"0.1" scope:"…" key:"…" recurse:"…"`).
//!
//! Serde only tells a serializer a struct's *name* and each field's *name*. Rather than
//! smuggling scopes into serde field names (which would also leak into the JSON the inspect
//! command prints), each schema struct has a static table of [`FieldTag`]s, looked up by the
//! struct's serde name through a [`Registry`]. The codec refuses to encode or decode a field
//! that has no entry, so a table that drifts from its struct fails loudly in the tests.

use crate::keys::{calculate_key, Scope};

/// Lookup from a serde struct name to its field tags.
pub type Registry = fn(&str) -> Option<&'static [FieldTag]>;

/// How a field's key segment and scope are derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagKind {
    /// A Go field with a `vic` tag: explicit scope words and key segment.
    Tagged {
        /// The `scope:"…"` words.
        scope: &'static str,
        /// The `key:"…"` segment.
        key: &'static str,
    },
    /// An exported Go field without a `vic` tag: scope inherited from the parent key, key
    /// segment = the Go field name (`IP`, `Scheme`, `Common`, …).
    Untagged(&'static str),
    /// `recurse:"depth=0"` or anything else the original never transmits.
    Skip,
}

/// The annotation of one serde field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldTag {
    /// The serde (Rust) field name.
    pub field: &'static str,
    /// How its key segment and scope are derived.
    pub kind: TagKind,
    /// `recurse:"skip-encode"`.
    pub skip_encode: bool,
    /// `recurse:"skip-decode"`: honoured only by [`crate::decode_into`] (the tether's reload
    /// semantics); a full [`crate::decode`] reads everything so that maps round-trip.
    pub skip_decode: bool,
    /// Tags to use for the field's struct value instead of the ones registered for its type.
    /// Lets one Rust type stand for two Go types that differ only in tags (the container's
    /// `ExecutorConfigCommon` hides `name`, a session's `Common` does not).
    pub nested: Option<&'static [FieldTag]>,
}

impl FieldTag {
    const fn new(field: &'static str, kind: TagKind) -> FieldTag {
        FieldTag {
            field,
            kind,
            skip_encode: false,
            skip_decode: false,
            nested: None,
        }
    }

    /// The tag with `recurse:"skip-decode"`.
    #[must_use]
    pub const fn skip_decode(mut self) -> FieldTag {
        self.skip_decode = true;
        self
    }

    /// The tag with `recurse:"skip-encode"`.
    #[must_use]
    pub const fn skip_encode(mut self) -> FieldTag {
        self.skip_encode = true;
        self
    }

    /// The tag with `tags` for the field's struct value (see [`FieldTag::nested`]).
    #[must_use]
    pub const fn nested(mut self, tags: &'static [FieldTag]) -> FieldTag {
        self.nested = Some(tags);
        self
    }

    /// The field's key and effective scope under `prefix`, or `None` when the original would
    /// skip the field.
    pub fn resolve(&self, prefix: &str) -> Option<(String, Scope)> {
        let parent = Scope::of_key(prefix);
        let (scope, name) = match self.kind {
            TagKind::Skip => return None,
            TagKind::Untagged(name) => (parent, name),
            TagKind::Tagged { scope, key } => (Scope::from_words(scope), key),
        };
        // non-persistent is inherited by every child, tagged or not.
        let scope = if parent.contains(Scope::NON_PERSISTENT) {
            scope.with(Scope::NON_PERSISTENT)
        } else {
            scope
        };
        calculate_key(scope, prefix, name).map(|key| (key, scope))
    }
}

/// `vic:"0.1" scope:"<scope>" key:"<key>"`.
pub const fn tagged(field: &'static str, scope: &'static str, key: &'static str) -> FieldTag {
    FieldTag::new(field, TagKind::Tagged { scope, key })
}

/// `scope:"read-only"`.
pub const fn ro(field: &'static str, key: &'static str) -> FieldTag {
    tagged(field, "read-only", key)
}

/// `scope:"read-write"`.
pub const fn rw(field: &'static str, key: &'static str) -> FieldTag {
    tagged(field, "read-write", key)
}

/// `scope:"hidden"`.
pub const fn hidden(field: &'static str, key: &'static str) -> FieldTag {
    tagged(field, "hidden", key)
}

/// An exported field without a `vic` tag.
pub const fn untagged(field: &'static str, go_name: &'static str) -> FieldTag {
    FieldTag::new(field, TagKind::Untagged(go_name))
}

/// A field the original never transmits.
pub const fn skip(field: &'static str) -> FieldTag {
    FieldTag::new(field, TagKind::Skip)
}

pub(crate) fn find<'t>(tags: &'t [FieldTag], field: &str) -> Option<&'t FieldTag> {
    tags.iter().find(|t| t.field == field)
}
