//! Public entry points of the codec: typed config ⇔ flat map.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{registry, ContainerConfig, CONTAINER_TAGS};
use crate::de::{De, Discovery, MapSource, Source};
use crate::error::{DecodeError, EncodeError};
use crate::keys::{entry_key, is_guest_writable, GUESTINFO};
use crate::tags::{find, Registry};
use crate::Map;

/// Serializes any tagged value under `prefix`, in the original's write order.
pub(crate) fn to_pairs_with<T: Serialize + ?Sized>(
    value: &T,
    prefix: &str,
    registry: Registry,
) -> Result<Vec<(String, String)>, EncodeError> {
    let pairs = crate::ser::to_pairs(value, prefix, registry)?;
    check_collisions(&pairs)?;
    Ok(pairs)
}

/// VMX keys are case-insensitive: two keys differing only in case (or mangled onto each
/// other by separator rewriting) would overwrite each other in the VM.
fn check_collisions(pairs: &[(String, String)]) -> Result<(), EncodeError> {
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(pairs.len());
    for (k, _) in pairs {
        if let Some(other) = seen.insert(k.to_ascii_lowercase(), k) {
            return Err(EncodeError::Collision {
                key: k.clone(),
                other: other.to_owned(),
            });
        }
    }
    Ok(())
}

pub(crate) fn from_source<T: DeserializeOwned, S: Source>(
    src: &S,
    registry: Registry,
) -> Result<T, DecodeError> {
    T::deserialize(De {
        src,
        key: String::new(),
        registry,
        nested: None,
        fallback_only: false,
    })
}

/// Decodes any tagged value from a flat map (full read, no reload semantics).
pub(crate) fn from_map_with<T: DeserializeOwned>(
    map: &Map,
    registry: Registry,
) -> Result<T, DecodeError> {
    from_source(&MapSource::new(map, None), registry)
}

/// Encodes a config into the flat extraConfig map, byte-exact with the original encoder.
/// Values are plain (`""`, not `<nil>`; the transports apply `<nil>`).
pub fn encode(cfg: &ContainerConfig) -> Result<Map, EncodeError> {
    Ok(encode_pairs(cfg)?.into_iter().collect())
}

/// Like [`encode`], as a list in the order the original writes keys (declaration order;
/// list elements before the length key; map entries before the key list).
pub fn encode_pairs(cfg: &ContainerConfig) -> Result<Vec<(String, String)>, EncodeError> {
    to_pairs_with(cfg, "", registry)
}

/// Decodes a flat map (plain values) into a fresh config, reading every field, including the
/// ones the tether never reads (`started`, `status`, `detail.starttime/stoptime`): this is
/// the host-side view, and `decode` then [`encode`] reproduces any map the original wrote.
/// Keys are matched case-insensitively; unknown keys are ignored.
pub fn decode(map: &Map) -> Result<ContainerConfig, DecodeError> {
    check_duplicates(map)?;
    from_map_with(map, registry)
}

/// VMX keys are case-insensitive, so a map holding one key in two spellings with different
/// values did not come from a VMX: which value should win is anyone's guess, and picking
/// one silently would run something the writer may not have meant.
fn check_duplicates(map: &Map) -> Result<(), DecodeError> {
    let mut seen: HashMap<String, (&str, &str)> = HashMap::with_capacity(map.len());
    for (k, v) in map {
        if let Some((other, was)) = seen.insert(k.to_ascii_lowercase(), (k, v)) {
            if was != v {
                return Err(DecodeError::Duplicate {
                    key: other.to_owned(),
                    other: k.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The tether's reload semantics: decodes `map` *into* `cfg`. Keys present in `map`
/// overwrite, absent keys leave fields as they are, maps merge (entries not listed are kept),
/// and the skip-decode fields (`started`, `status`, `detail.starttime`, `detail.stoptime`)
/// are never read from `map`. On error `cfg` is left unchanged.
pub fn decode_into(map: &Map, cfg: &mut ContainerConfig) -> Result<(), DecodeError> {
    check_duplicates(map)?;
    let previous = encode_pairs(cfg).map_err(DecodeError::Merge)?;
    let src = MapSource::new(map, Some(previous));
    *cfg = from_source(&src, registry)?;
    Ok(())
}

/// The write-back of one session or exec (executor-config.md §5 W2–W4): every guest-writable
/// (RW) key under it, exec keys with `@non-persistent`, in the original tether's order
/// (`detail.createtime`, `detail.starttime`, `detail.stoptime`, `diagnostics.resurrections`,
/// `diagnostics.exitlogs…`, `status`, `started`, `runblock`). Values are plain.
pub fn session_writeback(
    cfg: &ContainerConfig,
    id: &str,
) -> Result<Vec<(String, String)>, EncodeError> {
    let (field, session) = match (cfg.sessions.get(id), cfg.execs.get(id)) {
        (Some(s), _) => ("sessions", s),
        (None, Some(s)) => ("execs", s),
        (None, None) => return Err(EncodeError::UnknownSession { id: id.to_owned() }),
    };
    if id.is_empty() || id.contains(['|', '@']) {
        return Err(EncodeError::BadMapKey {
            key: field.to_owned(),
            map_key: id.to_owned(),
            reason: "not representable as a map key",
        });
    }
    let (map_key, _) = find(CONTAINER_TAGS, field)
        .and_then(|t| t.resolve(""))
        .ok_or_else(|| EncodeError::Schema {
            what: format!("no key for {field}"),
        })?;
    let prefix = entry_key(&map_key, id);
    let pairs = to_pairs_with(session, &prefix, registry)?;
    Ok(writable(pairs))
}

/// W1/W5: every key of the config the guest may write (RW keys: no `/`), in write order.
/// Hidden keys without a `/` are left out too (the original would write them under a bogus
/// `guestinfo.` name).
pub fn guest_writeback(cfg: &ContainerConfig) -> Result<Vec<(String, String)>, EncodeError> {
    Ok(writable(encode_pairs(cfg)?))
}

fn writable(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .filter(|(k, _)| k.starts_with(GUESTINFO) && is_guest_writable(k))
        .collect()
}

/// Reads a config through a per-key getter that cannot list keys (the VMware backdoor):
/// walks the schema, asking for every key it could contain (one call per key, like the
/// original), and returns the keys found. Getter errors abort the walk.
pub fn discover_keys<E: std::fmt::Display>(
    get: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Map, DiscoverError<E>> {
    let src = Discovery::new(get);
    let result: Result<ContainerConfig, DecodeError> = from_source(&src, registry);
    if let Some(e) = src.failure.borrow_mut().take() {
        return Err(DiscoverError::Get(e));
    }
    result?;
    Ok(src.found.into_inner())
}

/// Why [`discover_keys`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError<E> {
    /// the getter failed
    #[error(transparent)]
    Get(E),
    /// what was found does not decode
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
