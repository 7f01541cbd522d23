//! serde `Deserializer` reading a config back from the flat VIC map.
//!
//! Semantics follow the original decoder (`decode.go`): a missing key leaves the field at its
//! default, `""` is the zero value of numbers and booleans, a missing or empty length key is an
//! empty list, map entries are merged in, pointers (`Option`) stay `None` when nothing below
//! them exists. Differences, all deliberate: malformed numbers, booleans, base64 and list
//! lengths are errors naming the key (the original logs and substitutes zero), nothing
//! here can panic or allocate in proportion to a length the input merely claims, and a
//! primitive list's exact `key~b64` (our extension for elements holding `|`) is preferred
//! over the original's split `key~` when both come from the same writer.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::error::DecodeError;
use crate::keys::{entry_key, exact_values_key, values_key, NormKey, Scope};
use crate::tags::{find, FieldTag, Registry};
use crate::value::{b64_decode, parse_go_bool};
use crate::Map;

/// Where the decoder reads keys from.
pub(crate) trait Source {
    /// The value of `key` (case-insensitive). `fallback_only` restricts the lookup to the
    /// previous in-memory config (skip-decode fields under reload semantics).
    fn lookup(&self, key: &str, fallback_only: bool) -> Result<Option<String>, DecodeError>;
    /// The `|`-separated key list of a map, merged with the previous config's when reloading.
    fn map_keys(&self, key: &str) -> Result<Option<Vec<String>>, DecodeError>;
    /// A primitive list's values at `list_key`: the original's `key~`, and our exact
    /// `key~b64` when the same writer put it beside (see [`exact_values_key`]).
    fn list_values(
        &self,
        list_key: &str,
        fallback_only: bool,
    ) -> Result<Option<(String, Option<String>)>, DecodeError> {
        let Some(legacy) = self.lookup(&values_key(list_key), fallback_only)? else {
            return Ok(None);
        };
        let exact = self.lookup(&exact_values_key(list_key), fallback_only)?;
        Ok(Some((legacy, exact)))
    }
    /// Whether anything exists at or below `key`.
    fn probe(&self, key: &str) -> bool;
    /// Upper bound for a composite list's length (each element needs at least one key).
    fn max_len(&self) -> usize;
    /// Whether `skip-decode` fields must come from the previous config only.
    fn honour_skip_decode(&self) -> bool {
        false
    }
    /// Key discovery walk: values do not matter, only which keys get looked up.
    fn discovery(&self) -> bool {
        false
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split('|').map(str::to_owned).collect()
}

/// The elements of an exact list (`key~b64`), or `None` if one is not base64 of UTF-8.
fn exact_elements(v: &str) -> Option<Vec<String>> {
    v.split('|')
        .map(|e| b64_decode(e).ok().and_then(|b| String::from_utf8(b).ok()))
        .collect()
}

/// A flat map, optionally layered over the previous config (reload semantics).
#[derive(Debug)]
pub(crate) struct MapSource {
    input: BTreeMap<String, String>,
    fallback: BTreeMap<String, String>,
    norms: BTreeSet<NormKey>,
    reload: bool,
}

impl MapSource {
    pub fn new(map: &Map, fallback: Option<Vec<(String, String)>>) -> MapSource {
        let mut input = BTreeMap::new();
        let mut norms = BTreeSet::new();
        for (k, v) in map {
            norms.insert(NormKey::new(k));
            input
                .entry(k.to_ascii_lowercase())
                .or_insert_with(|| v.clone());
        }
        let reload = fallback.is_some();
        let mut old = BTreeMap::new();
        for (k, v) in fallback.into_iter().flatten() {
            norms.insert(NormKey::new(&k));
            old.entry(k.to_ascii_lowercase()).or_insert(v);
        }
        MapSource {
            input,
            fallback: old,
            norms,
            reload,
        }
    }
}

impl Source for MapSource {
    fn lookup(&self, key: &str, fallback_only: bool) -> Result<Option<String>, DecodeError> {
        let k = key.to_ascii_lowercase();
        if !fallback_only {
            if let Some(v) = self.input.get(&k) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(self.fallback.get(&k).cloned())
    }

    fn list_values(
        &self,
        list_key: &str,
        fallback_only: bool,
    ) -> Result<Option<(String, Option<String>)>, DecodeError> {
        let legacy = values_key(list_key).to_ascii_lowercase();
        let exact = exact_values_key(list_key).to_ascii_lowercase();
        // Both from one layer: a reload that rewrote `key~` without `key~b64` must not pick
        // up the previous config's exact elements.
        let layer = if !fallback_only && self.input.contains_key(&legacy) {
            &self.input
        } else {
            &self.fallback
        };
        Ok(layer
            .get(&legacy)
            .map(|v| (v.clone(), layer.get(&exact).cloned())))
    }

    fn map_keys(&self, key: &str) -> Result<Option<Vec<String>>, DecodeError> {
        let k = key.to_ascii_lowercase();
        let new = self.input.get(&k).filter(|v| !v.is_empty());
        let old = self.fallback.get(&k).filter(|v| !v.is_empty());
        Ok(match (new, old) {
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => Some(split_list(v)),
            (Some(new), Some(old)) => {
                let mut keys = split_list(new);
                for k in split_list(old) {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                Some(keys)
            }
        })
    }

    fn probe(&self, key: &str) -> bool {
        let norm = NormKey::new(key);
        // Both visibilities share a path namespace below a key (hidden children of visible
        // parents and vice versa), so scan both halves of the ordered set.
        [false, true].into_iter().any(|visible| {
            let start = NormKey {
                visible,
                path: norm.path.clone(),
            };
            self.norms
                .range(start..)
                .take_while(|n| n.visible == visible && n.path.starts_with(&norm.path))
                .any(|n| norm.covers(n))
        })
    }

    fn max_len(&self) -> usize {
        self.input.len() + self.fallback.len()
    }

    fn honour_skip_decode(&self) -> bool {
        self.reload
    }
}

/// Walks the schema asking a getter for every key it could need (used where the transport
/// cannot list keys, i.e. the VMware backdoor). Every lookup is recorded.
pub(crate) type Getter<'g, E> = &'g mut dyn FnMut(&str) -> Result<Option<String>, E>;

pub(crate) struct Discovery<'g, E> {
    get: RefCell<Getter<'g, E>>,
    pub found: RefCell<Map>,
    /// The getter's first error: it ends the walk.
    pub failure: RefCell<Option<E>>,
}

impl<'g, E> Discovery<'g, E> {
    pub fn new(get: Getter<'g, E>) -> Discovery<'g, E> {
        Discovery {
            get: RefCell::new(get),
            found: RefCell::new(Map::new()),
            failure: RefCell::new(None),
        }
    }
}

impl<E> std::fmt::Debug for Discovery<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

impl<E: std::fmt::Display> Source for Discovery<'_, E> {
    fn lookup(&self, key: &str, _: bool) -> Result<Option<String>, DecodeError> {
        let result = {
            let mut get = self.get.borrow_mut();
            (*get)(key)
        };
        match result {
            Ok(Some(v)) => {
                self.found.borrow_mut().insert(key.to_owned(), v.clone());
                Ok(Some(v))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let message = e.to_string();
                *self.failure.borrow_mut() = Some(e);
                Err(DecodeError::Value {
                    key: key.to_owned(),
                    message,
                })
            }
        }
    }

    fn map_keys(&self, key: &str) -> Result<Option<Vec<String>>, DecodeError> {
        Ok(self
            .lookup(key, false)?
            .filter(|v| !v.is_empty())
            .map(|v| split_list(&v)))
    }

    fn probe(&self, _: &str) -> bool {
        true
    }

    fn max_len(&self) -> usize {
        // One round trip per element: bound what a corrupt length can cost.
        1024
    }

    fn discovery(&self) -> bool {
        true
    }
}

/// Deserializes the value stored at `key`.
pub(crate) struct De<'s, S: Source> {
    pub src: &'s S,
    pub key: String,
    pub registry: Registry,
    pub nested: Option<&'static [FieldTag]>,
    pub fallback_only: bool,
}

impl<'s, S: Source> De<'s, S> {
    fn child(&self, key: String) -> De<'s, S> {
        De {
            src: self.src,
            key,
            registry: self.registry,
            nested: None,
            fallback_only: self.fallback_only,
        }
    }

    fn value(&self) -> Result<Option<String>, DecodeError> {
        let v = self.src.lookup(&self.key, self.fallback_only)?;
        if v.is_some() && !self.src.discovery() && Scope::of_key(&self.key).contains(Scope::SECRET)
        {
            return Err(DecodeError::Secret {
                key: self.key.clone(),
            });
        }
        Ok(v)
    }

    fn invalid(&self, value: String, expected: &'static str) -> DecodeError {
        DecodeError::InvalidValue {
            key: self.key.clone(),
            value,
            expected,
        }
    }

    fn int(&self) -> Result<i64, DecodeError> {
        match self.value()? {
            None => Ok(0),
            Some(v) if v.is_empty() => Ok(0),
            Some(v) => match v.parse::<i64>() {
                Ok(n) => Ok(n),
                Err(_) if self.src.discovery() => Ok(0),
                Err(_) => Err(self.invalid(v, "integer")),
            },
        }
    }

    fn narrow<T: TryFrom<i64>>(&self, n: i64) -> Result<T, DecodeError> {
        T::try_from(n).map_err(|_| self.invalid(n.to_string(), "integer (out of range)"))
    }
}

macro_rules! narrow_int {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            let n = self.int()?;
            let n: $ty = if self.src.discovery() {
                <$ty>::try_from(n).unwrap_or_default()
            } else {
                self.narrow(n)?
            };
            visitor.$visit(n)
        }
    };
}

macro_rules! unsupported {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
            Err(DecodeError::Schema {
                what: format!("`{}`: type not representable in extraConfig ({})", self.key, stringify!($method)),
            })
        })*
    };
}

impl<'de, S: Source> de::Deserializer<'de> for De<'_, S> {
    type Error = DecodeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    unsupported! {
        deserialize_any deserialize_char deserialize_identifier
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = match self.value()? {
            None => false,
            Some(v) if v.is_empty() => false,
            Some(v) => match parse_go_bool(&v) {
                Some(b) => b,
                None if self.src.discovery() => false,
                None => return Err(self.invalid(v, "boolean")),
            },
        };
        visitor.visit_bool(b)
    }

    narrow_int!(deserialize_i8, visit_i8, i8);
    narrow_int!(deserialize_i16, visit_i16, i16);
    narrow_int!(deserialize_i32, visit_i32, i32);

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i64(self.int()?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let f = match self.value()? {
            None => 0.0,
            Some(v) if v.is_empty() => 0.0,
            Some(v) => match v.parse::<f64>() {
                Ok(f) => f,
                Err(_) if self.src.discovery() => 0.0,
                Err(_) => return Err(self.invalid(v, "float")),
            },
        };
        visitor.visit_f64(f)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_string(self.value()?.unwrap_or_default())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let value = self.value()?;
        if self.src.discovery() {
            // Any well-formed stand-in will do: only the lookup matters.
            return visitor.visit_byte_buf(vec![0; 4]);
        }
        let bytes = match value {
            None => Vec::new(),
            Some(v) => match b64_decode(&v) {
                Ok(b) => b,
                Err(_) => return Err(self.invalid(v, "base64")),
            },
        };
        visitor.visit_byte_buf(bytes)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.src.probe(&self.key) {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let length = match self.value()? {
            None => 0,
            Some(v) if v.is_empty() => 0,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= -1 => n.saturating_add(1),
                _ if self.src.discovery() => 0,
                _ => {
                    return Err(DecodeError::BadLength {
                        key: self.key.clone(),
                        length: v,
                    })
                }
            },
        };
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        let values = if length > 0 {
            match self.src.list_values(&self.key, self.fallback_only)? {
                None => None,
                Some((legacy, None)) => Some(split_list(&legacy)),
                Some((legacy, Some(exact))) => match exact_elements(&exact) {
                    Some(v) => Some(v),
                    None if self.src.discovery() => Some(split_list(&legacy)),
                    None => {
                        return Err(DecodeError::InvalidValue {
                            key: exact_values_key(&self.key),
                            value: exact,
                            expected: "base64 elements joined with '|'",
                        })
                    }
                },
            }
        } else {
            None
        };
        let available = values.as_ref().map_or(0, Vec::len);
        let bound = self.src.max_len().max(available);
        let length = if length > bound {
            if !self.src.discovery() {
                return Err(DecodeError::BadLength {
                    key: self.key.clone(),
                    length: (length - 1).to_string(),
                });
            }
            bound
        } else {
            length
        };
        visitor.visit_seq(SeqAcc {
            de: self,
            values,
            index: 0,
            length,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DecodeError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_any(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let keys = self.src.map_keys(&self.key)?.unwrap_or_default();
        visitor.visit_map(MapAcc {
            de: self,
            keys: keys.into_iter(),
            pending: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let tags = struct_tags(self.nested, self.registry, name, fields)?;
        visitor.visit_map(StructAcc {
            de: self,
            tags: tags.iter(),
            pending: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_any(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

/// The field tags of struct `name`. Whether they match serde's field list one to one is a
/// property of the static schema, checked in debug builds (every test decodes every type):
/// a release decode, the tether's boot among them, does not walk the lists again for each
/// struct of each config, nor carry a copy of that walk per struct type (this function is
/// not generic for the same reason; under TCG each copy is code translated at boot).
#[inline(never)]
fn struct_tags(
    nested: Option<&'static [FieldTag]>,
    registry: Registry,
    name: &'static str,
    fields: &'static [&'static str],
) -> Result<&'static [FieldTag], DecodeError> {
    let tags = match nested {
        Some(tags) => tags,
        None => registry(name).ok_or_else(|| DecodeError::Schema {
            what: format!("type {name} has no field tags"),
        })?,
    };
    if cfg!(debug_assertions) {
        if let Some(missing) = fields.iter().find(|f| find(tags, f).is_none()) {
            return Err(DecodeError::Schema {
                what: format!("field {name}.{missing} has no tag"),
            });
        }
        if let Some(extra) = tags.iter().find(|t| !fields.contains(&t.field)) {
            return Err(DecodeError::Schema {
                what: format!("tag {name}.{} matches no field", extra.field),
            });
        }
    }
    Ok(tags)
}

struct StructAcc<'s, S: Source> {
    de: De<'s, S>,
    tags: std::slice::Iter<'static, FieldTag>,
    pending: Option<De<'s, S>>,
}

impl<'de, S: Source> de::MapAccess<'de> for StructAcc<'_, S> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        for tag in self.tags.by_ref() {
            let Some((key, _)) = tag.resolve(&self.de.key) else {
                continue;
            };
            self.pending = Some(De {
                src: self.de.src,
                key,
                registry: self.de.registry,
                nested: tag.nested,
                fallback_only: self.de.fallback_only
                    || (tag.skip_decode && self.de.src.honour_skip_decode()),
            });
            return seed
                .deserialize(BorrowedStrDeserializer::<DecodeError>::new(tag.field))
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let de = self.pending.take().ok_or_else(|| DecodeError::Schema {
            what: "struct value requested before its key".to_owned(),
        })?;
        let key = de.key.clone();
        seed.deserialize(de).map_err(|e| e.at(&key))
    }
}

struct MapAcc<'s, S: Source> {
    de: De<'s, S>,
    keys: std::vec::IntoIter<String>,
    pending: Option<String>,
}

impl<'de, S: Source> de::MapAccess<'de> for MapAcc<'_, S> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        for k in self.keys.by_ref() {
            let entry = entry_key(&self.de.key, &k);
            // Entries with nothing below them are not inserted (the original's invalid result).
            if !self.de.src.probe(&entry) {
                continue;
            }
            self.pending = Some(entry);
            let key: StringDeserializer<DecodeError> = k.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let key = self.pending.take().ok_or_else(|| DecodeError::Schema {
            what: "map value requested before its key".to_owned(),
        })?;
        seed.deserialize(self.de.child(key.clone()))
            .map_err(|e| e.at(&key))
    }
}

struct SeqAcc<'s, S: Source> {
    de: De<'s, S>,
    values: Option<Vec<String>>,
    index: usize,
    length: usize,
}

impl<'de, S: Source> de::SeqAccess<'de> for SeqAcc<'_, S> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.index >= self.length {
            return Ok(None);
        }
        let i = self.index;
        self.index += 1;
        let key = entry_key(&self.de.key, &i.to_string());
        let elem = Elem {
            de: self.de.child(key.clone()),
            list_key: &self.de.key,
            value: self.values.as_ref().and_then(|v| v.get(i)).cloned(),
            index: i,
        };
        seed.deserialize(elem).map(Some).map_err(|e| e.at(&key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.length - self.index)
    }
}

/// One list element: primitives come from the `key~` value, everything else from `key|i`.
struct Elem<'s, 'k, S: Source> {
    de: De<'s, S>,
    list_key: &'k str,
    value: Option<String>,
    index: usize,
}

impl<S: Source> Elem<'_, '_, S> {
    fn primitive(&self) -> Result<String, DecodeError> {
        match &self.value {
            Some(v) => Ok(v.clone()),
            None if self.de.src.discovery() => Ok(String::new()),
            None => Err(DecodeError::BadLength {
                key: self.list_key.to_owned(),
                length: format!("{} (element {} has no value)", self.index, self.index),
            }),
        }
    }

    fn parsed<T: std::str::FromStr + Default>(
        &self,
        expected: &'static str,
    ) -> Result<T, DecodeError> {
        let v = self.primitive()?;
        if v.is_empty() {
            return Ok(T::default());
        }
        match v.parse() {
            Ok(t) => Ok(t),
            Err(_) if self.de.src.discovery() => Ok(T::default()),
            Err(_) => Err(DecodeError::InvalidValue {
                key: values_key(self.list_key),
                value: v,
                expected,
            }),
        }
    }
}

macro_rules! elem_num {
    ($method:ident, $visit:ident, $ty:ty, $expected:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            visitor.$visit(self.parsed::<$ty>($expected)?)
        }
    };
}

macro_rules! elem_composite {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.de.$method(visitor)
        })*
    };
}

impl<'de, S: Source> de::Deserializer<'de> for Elem<'_, '_, S> {
    type Error = DecodeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    elem_num!(deserialize_i8, visit_i8, i8, "integer");
    elem_num!(deserialize_i16, visit_i16, i16, "integer");
    elem_num!(deserialize_i32, visit_i32, i32, "integer");
    elem_num!(deserialize_i64, visit_i64, i64, "integer");
    elem_num!(deserialize_f32, visit_f32, f32, "float");
    elem_num!(deserialize_f64, visit_f64, f64, "float");

    elem_composite! {
        deserialize_any deserialize_char deserialize_identifier deserialize_ignored_any
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let v = self.primitive()?;
        let b = if v.is_empty() || self.de.src.discovery() {
            parse_go_bool(&v).unwrap_or(false)
        } else {
            parse_go_bool(&v).ok_or_else(|| DecodeError::InvalidValue {
                key: values_key(self.list_key),
                value: v.clone(),
                expected: "boolean",
            })?
        };
        visitor.visit_bool(b)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_string(self.primitive()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_string(self.primitive()?)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, DecodeError> {
        self.de.deserialize_tuple(len, v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, DecodeError> {
        self.de.deserialize_tuple_struct(name, len, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DecodeError> {
        self.de.deserialize_enum(name, variants, v)
    }
}
