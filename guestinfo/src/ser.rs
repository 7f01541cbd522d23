//! serde `Serializer` producing the flat VIC key/value list, in the original's write order.

use serde::ser::{self, Impossible, Serialize};

use crate::error::EncodeError;
use crate::keys::{entry_key, exact_values_key, values_key, Scope};
use crate::tags::{find, FieldTag, Registry};
use crate::value::{b64_encode, format_go_float};

/// Collects `(key, value)` pairs in the order the original encoder would write them.
#[derive(Debug)]
pub(crate) struct Output {
    pub pairs: Vec<(String, String)>,
    registry: Registry,
}

impl Output {
    pub fn new(registry: Registry) -> Output {
        Output {
            pairs: Vec::new(),
            registry,
        }
    }

    fn emit(&mut self, key: String, value: String) -> Result<(), EncodeError> {
        if value == "<nil>" {
            return Err(EncodeError::NilLiteral { key });
        }
        self.pairs.push((key, value));
        Ok(())
    }
}

/// Serializes `value` (a struct) under `prefix` ("" for the root).
pub(crate) fn to_pairs<T: Serialize + ?Sized>(
    value: &T,
    prefix: &str,
    registry: Registry,
) -> Result<Vec<(String, String)>, EncodeError> {
    let mut out = Output::new(registry);
    value.serialize(ValueSer {
        out: &mut out,
        key: prefix.to_owned(),
        scope: Scope::of_key(prefix),
        nested: None,
        element: false,
    })?;
    Ok(out.pairs)
}

/// What serializing one value produced. Primitive list elements are handed back to the list
/// serializer, which joins them into the `key~` value; everything else is written directly.
pub(crate) enum Done {
    Written,
    Primitive(String),
}

pub(crate) struct ValueSer<'a> {
    out: &'a mut Output,
    key: String,
    scope: Scope,
    nested: Option<&'static [FieldTag]>,
    /// Serializing an element of a list: primitives are returned, not written.
    element: bool,
}

impl ValueSer<'_> {
    fn primitive(self, value: String) -> Result<Done, EncodeError> {
        if self.element {
            return Ok(Done::Primitive(value));
        }
        if self.scope.contains(Scope::SECRET) {
            return Err(EncodeError::Secret { key: self.key });
        }
        self.out.emit(self.key, value)?;
        Ok(Done::Written)
    }

    fn unsupported(self, what: &'static str) -> EncodeError {
        EncodeError::Unsupported {
            key: self.key,
            what,
        }
    }
}

impl<'a> ser::Serializer for ValueSer<'a> {
    type Ok = Done;
    type Error = EncodeError;
    type SerializeSeq = SeqSer<'a>;
    type SerializeTuple = Impossible<Done, EncodeError>;
    type SerializeTupleStruct = Impossible<Done, EncodeError>;
    type SerializeTupleVariant = Impossible<Done, EncodeError>;
    type SerializeMap = MapSer<'a>;
    type SerializeStruct = StructSer<'a>;
    type SerializeStructVariant = Impossible<Done, EncodeError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<Done, EncodeError> {
        self.primitive(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<Done, EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Done, EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Done, EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Done, EncodeError> {
        self.primitive(v.to_string())
    }
    // The original registers no encoder for unsigned fields and silently drops them; a schema
    // that relies on that is a bug, so refuse.
    fn serialize_u8(self, _: u8) -> Result<Done, EncodeError> {
        Err(self.unsupported("an unsigned integer (the original drops uint fields)"))
    }
    fn serialize_u16(self, _: u16) -> Result<Done, EncodeError> {
        Err(self.unsupported("an unsigned integer (the original drops uint fields)"))
    }
    fn serialize_u32(self, _: u32) -> Result<Done, EncodeError> {
        Err(self.unsupported("an unsigned integer (the original drops uint fields)"))
    }
    fn serialize_u64(self, _: u64) -> Result<Done, EncodeError> {
        Err(self.unsupported("an unsigned integer (the original drops uint fields)"))
    }
    fn serialize_f32(self, v: f32) -> Result<Done, EncodeError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Done, EncodeError> {
        self.primitive(format_go_float(v))
    }
    fn serialize_char(self, _: char) -> Result<Done, EncodeError> {
        Err(self.unsupported("a char"))
    }
    fn serialize_str(self, v: &str) -> Result<Done, EncodeError> {
        self.primitive(v.to_owned())
    }
    fn serialize_bytes(mut self, v: &[u8]) -> Result<Done, EncodeError> {
        // []byte / net.IP: one base64 key; as a list element it is a `key|i` element, and an
        // empty one is not written at all (the original skips empty slices first).
        if v.is_empty() {
            return Ok(Done::Written);
        }
        self.element = false;
        self.primitive(b64_encode(v))
    }
    fn serialize_none(self) -> Result<Done, EncodeError> {
        if self.element {
            return Err(self.unsupported("an optional list element"));
        }
        Ok(Done::Written)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Done, EncodeError> {
        if self.element {
            return Err(self.unsupported("an optional list element"));
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Done, EncodeError> {
        Err(self.unsupported("a unit value"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Done, EncodeError> {
        Err(self.unsupported("a unit struct"))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Done, EncodeError> {
        Err(self.unsupported("an enum"))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Done, EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Done, EncodeError> {
        Err(self.unsupported("an enum"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqSer<'a>, EncodeError> {
        if self.element {
            return Err(self.unsupported("a list of lists"));
        }
        Ok(SeqSer {
            out: self.out,
            key: self.key,
            scope: self.scope,
            count: 0,
            primitives: Vec::new(),
            composite: false,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, EncodeError> {
        Err(self.unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        Err(self.unsupported("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        Err(self.unsupported("an enum"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapSer<'a>, EncodeError> {
        if self.element {
            return Err(self.unsupported("a list of maps"));
        }
        Ok(MapSer {
            out: self.out,
            key: self.key,
            scope: self.scope,
            keys: Vec::new(),
            pending: None,
        })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<StructSer<'a>, EncodeError> {
        let tags = match self.nested {
            Some(tags) => tags,
            None => (self.out.registry)(name).ok_or(EncodeError::Schema {
                what: format!("type {name} has no field tags"),
            })?,
        };
        Ok(StructSer {
            out: self.out,
            prefix: self.key,
            tags,
            type_name: name,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        Err(self.unsupported("an enum"))
    }
}

pub(crate) struct StructSer<'a> {
    out: &'a mut Output,
    prefix: String,
    tags: &'static [FieldTag],
    type_name: &'static str,
}

impl ser::SerializeStruct for StructSer<'_> {
    type Ok = Done;
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        field: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let tag = find(self.tags, field).ok_or_else(|| EncodeError::Schema {
            what: format!("field {}.{field} has no tag", self.type_name),
        })?;
        if tag.skip_encode {
            return Ok(());
        }
        let Some((key, scope)) = tag.resolve(&self.prefix) else {
            return Ok(());
        };
        value.serialize(ValueSer {
            out: self.out,
            key,
            scope,
            nested: tag.nested,
            element: false,
        })?;
        Ok(())
    }

    fn end(self) -> Result<Done, EncodeError> {
        Ok(Done::Written)
    }
}

pub(crate) struct SeqSer<'a> {
    out: &'a mut Output,
    key: String,
    scope: Scope,
    count: usize,
    primitives: Vec<String>,
    composite: bool,
}

impl ser::SerializeSeq for SeqSer<'_> {
    type Ok = Done;
    type Error = EncodeError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let key = entry_key(&self.key, &self.count.to_string());
        let done = value.serialize(ValueSer {
            out: self.out,
            key,
            scope: self.scope,
            nested: None,
            element: true,
        })?;
        match done {
            Done::Primitive(v) if !self.composite => self.primitives.push(v),
            Done::Written if self.primitives.is_empty() => self.composite = true,
            _ => {
                return Err(EncodeError::Unsupported {
                    key: self.key.clone(),
                    what: "a list mixing primitive and composite elements",
                })
            }
        }
        self.count += 1;
        Ok(())
    }

    fn end(self) -> Result<Done, EncodeError> {
        if self.count == 0 {
            return Ok(Done::Written);
        }
        if self.scope.contains(Scope::SECRET) {
            return Err(EncodeError::Secret { key: self.key });
        }
        if !self.composite {
            // The original's form first, split where an element holds a `|`, exactly as its
            // port layer would write it; then, only then, the exact elements beside it.
            self.out
                .emit(values_key(&self.key), self.primitives.join("|"))?;
            if self.primitives.iter().any(|p| p.contains('|')) {
                let exact: Vec<String> = self
                    .primitives
                    .iter()
                    .map(|p| b64_encode(p.as_bytes()))
                    .collect();
                self.out
                    .emit(exact_values_key(&self.key), exact.join("|"))?;
            }
        }
        self.out.emit(self.key, (self.count - 1).to_string())?;
        Ok(Done::Written)
    }
}

pub(crate) struct MapSer<'a> {
    out: &'a mut Output,
    key: String,
    scope: Scope,
    keys: Vec<String>,
    pending: Option<String>,
}

/// Why a map key cannot be carried, if it cannot.
fn bad_map_key(k: &str) -> Option<&'static str> {
    if k.is_empty() {
        Some("empty keys are dropped by the original decoder")
    } else if k.contains('|') {
        Some("'|' separates the key list")
    } else if k.contains('@') {
        Some("'@' starts the key suffix and truncates child keys")
    } else {
        None
    }
}

impl ser::SerializeMap for MapSer<'_> {
    type Ok = Done;
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        let k = key.serialize(MapKeySer { key: &self.key })?;
        if let Some(reason) = bad_map_key(&k) {
            return Err(EncodeError::BadMapKey {
                key: self.key.clone(),
                map_key: k,
                reason,
            });
        }
        self.pending = Some(k);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let k = self.pending.take().ok_or_else(|| EncodeError::Schema {
            what: "map value without a key".to_owned(),
        })?;
        value.serialize(ValueSer {
            out: self.out,
            key: entry_key(&self.key, &k),
            scope: self.scope,
            nested: None,
            element: false,
        })?;
        self.keys.push(k);
        Ok(())
    }

    fn end(mut self) -> Result<Done, EncodeError> {
        if self.keys.is_empty() {
            return Ok(Done::Written);
        }
        self.keys.sort();
        self.out.emit(self.key, self.keys.join("|"))?;
        Ok(Done::Written)
    }
}

/// Map keys must be strings.
struct MapKeySer<'k> {
    key: &'k str,
}

impl MapKeySer<'_> {
    fn refuse(&self) -> EncodeError {
        EncodeError::Unsupported {
            key: self.key.to_owned(),
            what: "a map key that is not a string",
        }
    }
}

impl ser::Serializer for MapKeySer<'_> {
    type Ok = String;
    type Error = EncodeError;
    type SerializeSeq = Impossible<String, EncodeError>;
    type SerializeTuple = Impossible<String, EncodeError>;
    type SerializeTupleStruct = Impossible<String, EncodeError>;
    type SerializeTupleVariant = Impossible<String, EncodeError>;
    type SerializeMap = Impossible<String, EncodeError>;
    type SerializeStruct = Impossible<String, EncodeError>;
    type SerializeStructVariant = Impossible<String, EncodeError>;

    fn serialize_str(self, v: &str) -> Result<String, EncodeError> {
        Ok(v.to_owned())
    }
    fn serialize_bool(self, _: bool) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_i8(self, _: i8) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_i16(self, _: i16) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_i32(self, _: i32) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_i64(self, _: i64) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_u8(self, _: u8) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_u16(self, _: u16) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_u32(self, _: u32) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_u64(self, _: u64) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_f32(self, _: f32) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_f64(self, _: f64) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_char(self, _: char) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_none(self) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_unit(self) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, EncodeError> {
        Err(self.refuse())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        Err(self.refuse())
    }
}
