//! Malformed container configs, made from valid ones, for the tests that check that every
//! bad config ends in a clear error (the tether's in-process config tests, the VM scenario
//! `bad_config_at_volume`). Not used by the tether itself; not a stable API.
//!
//! Every mutation is invalid by construction: it removes or breaks something the tether
//! cannot run without, or gives a key a value its type refuses (checked against the
//! decoder while generating), so a config that still decodes is a bug in the tether, not
//! in the generator. The mutations are reproducible: the same base, seed and count give the
//! same configs.

use crate::keys::{exact_values_key, values_key};
use crate::Map;

/// What a mutation did to the base config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A key the tether needs is gone (the container ID, the session list, the command, a
    /// list's values).
    MissingKey,
    /// A key holds a value of the wrong type (a word for a number, a number for a boolean,
    /// text for base64).
    WrongType,
    /// A value or key of 64 kB to a megabyte (up to four times that in bytes).
    AbsurdLength,
    /// Keys nested thousands of levels deep beside a missing required key.
    DeepNesting,
    /// One key in two spellings (VMX keys are case-insensitive) with different values.
    DuplicateKey,
    /// A list or map claiming (or holding) 50,000 to 500,000 elements (or a length no memory
    /// could hold) that do not add up.
    HugeSlice,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 6] = [
        Kind::MissingKey,
        Kind::WrongType,
        Kind::AbsurdLength,
        Kind::DeepNesting,
        Kind::DuplicateKey,
        Kind::HugeSlice,
    ];
}

/// One malformed config.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// What kind of damage.
    pub kind: Kind,
    /// What exactly was done, for failure messages.
    pub what: String,
    /// The whole config after the damage (plain values).
    pub map: Map,
}

impl Mutation {
    /// The keys to set on top of `base` to get this config: changed and added keys with their
    /// value, removed keys with `""` (an empty wire value reads as absent).
    pub fn overrides(&self, base: &Map) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .map
            .iter()
            .filter(|(k, v)| base.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(
            base.keys()
                .filter(|k| !self.map.contains_key(*k))
                .map(|k| (k.clone(), String::new())),
        );
        out
    }
}

/// SplitMix64: a tiny, well-known generator, so the mutations are reproducible without a
/// dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` if the range is empty).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = u64::try_from(hi.saturating_sub(lo)).unwrap_or(u64::MAX);
        if span == 0 {
            return lo;
        }
        lo + usize::try_from(self.next() % span).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.range(0, items.len()))
    }
}

/// Values no integer, boolean, float, list length or base64 field accepts.
const GARBAGE: &[&str] = &[
    "not-a-number",
    "yes please",
    "0x1F",
    "12abc",
    " 1",
    "1.5.1",
    "NaN?",
    "--",
    "🙂",
    "true false",
    "99999999999999999999999999",
    "=====",
    "\u{7f}\u{1}",
    "ÿþ",
    "1e",
];

/// What the generator needs to know about the base config.
struct Base<'a> {
    map: &'a Map,
    /// The primary session's key prefix (`guestinfo.vice./sessions|ID`).
    session: String,
    /// Keys that hold the required parts: ID, session list, command.
    required: Vec<String>,
    /// Keys whose value the decoder checks (a wrong value is an error), found by trying.
    typed: Vec<String>,
    /// List length keys with at least one element and their `~` values.
    lists: Vec<String>,
}

fn decodes(map: &Map) -> bool {
    crate::decode(map).is_ok()
}

impl<'a> Base<'a> {
    fn new(map: &'a Map) -> Option<Base<'a>> {
        let id_key = find_key(map, "guestinfo.vice./common/id")?;
        let id = map.get(&id_key)?.clone();
        let list_key = find_key(map, "guestinfo.vice./sessions")?;
        let session = format!("guestinfo.vice./sessions|{id}");
        let path_key = find_key(map, &format!("{session}/cmd/Path"))?;
        let typed = map
            .keys()
            .filter(|k| {
                let mut m = map.clone();
                m.insert((*k).clone(), GARBAGE[0].to_owned());
                !decodes(&m)
            })
            .cloned()
            .collect();
        // Lists the decoder reads (some keys are written twice, and only one spelling is
        // read back): without their values, the config is refused.
        let lists = map
            .iter()
            .filter(|(k, v)| {
                v.parse::<i64>().is_ok_and(|n| n >= 0) && map.contains_key(&values_key(k)) && {
                    let mut m = map.clone();
                    m.remove(&values_key(k));
                    m.remove(&exact_values_key(k));
                    !decodes(&m)
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        Some(Base {
            map,
            session,
            required: vec![id_key, list_key, path_key],
            typed,
            lists,
        })
    }
}

/// `key` as spelled in `map` (keys match case-insensitively).
fn find_key(map: &Map, key: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

/// The keys of `map` the guest can read: the `guestinfo.` ones (hidden keys stay on the host).
pub fn guest_view(map: &Map) -> Map {
    map.iter()
        .filter(|(k, _)| {
            k.get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case("guestinfo."))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `n` malformed configs made from the guest's view of `base` (a valid config, plain values,
/// with a primary session that has a command), cycling through every [`Kind`]. `None` if
/// `base` is not such a config. The configs hold only `guestinfo.` keys.
pub fn mutations(base: &Map, seed: u64, n: usize) -> Option<Vec<Mutation>> {
    let base = &guest_view(base);
    if !decodes(base) {
        return None;
    }
    let b = Base::new(base)?;
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = Kind::ALL[i % Kind::ALL.len()];
        out.push(mutate(&b, kind, &mut rng));
    }
    Some(out)
}

fn mutate(b: &Base<'_>, kind: Kind, rng: &mut Rng) -> Mutation {
    let mut map = b.map.clone();
    let what = match kind {
        Kind::MissingKey => missing_key(b, &mut map, rng),
        Kind::WrongType => wrong_type(b, &mut map, rng),
        Kind::AbsurdLength => absurd_length(b, &mut map, rng),
        Kind::DeepNesting => deep_nesting(b, &mut map, rng),
        Kind::DuplicateKey => duplicate_key(b, &mut map, rng),
        Kind::HugeSlice => huge_slice(b, &mut map, rng),
    };
    Mutation { kind, what, map }
}

fn missing_key(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    // A required key, or the values of a list that claims elements.
    let lists: Vec<String> = b.lists.iter().map(|k| values_key(k)).collect();
    let all: Vec<&String> = b.required.iter().chain(lists.iter()).collect();
    let key = rng
        .pick(&all)
        .map(|k| (*k).clone())
        .unwrap_or_else(|| b.required[0].clone());
    map.remove(&key);
    // The exact form of a list's values would stand in for the removed `~` key.
    if let Some(list) = key.strip_suffix('~') {
        map.remove(&exact_values_key(list));
    }
    format!("removed {key}")
}

fn wrong_type(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    for _ in 0..64 {
        let Some(key) = rng.pick(&b.typed) else {
            break;
        };
        let value = rng.pick(GARBAGE).copied().unwrap_or(GARBAGE[0]);
        let mut m = map.clone();
        m.insert(key.clone(), value.to_owned());
        if !decodes(&m) {
            *map = m;
            return format!("{key} = {value:?}");
        }
    }
    // No typed key takes garbage badly (cannot happen with a real config): break the command.
    missing_key(b, map, rng)
}

fn long_text(rng: &mut Rng, len: usize) -> String {
    let unit = ["x", "é", "|", "/", "🙂", "%", " "];
    let mut s = String::with_capacity(len + 4);
    let u = rng.pick(&unit).copied().unwrap_or("x");
    while s.len() < len {
        s.push_str(u);
    }
    s
}

fn absurd_length(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    let len = rng.range(64_000, 1_000_000);
    match rng.range(0, 3) {
        0 if !b.typed.is_empty() => {
            // A typed key: garbage that goes on and on.
            let key = rng.pick(&b.typed).cloned().unwrap_or_default();
            let mut v = long_text(rng, len);
            v.insert(0, 'z');
            map.insert(key.clone(), v);
            format!("{key} = {len} bytes of garbage")
        }
        1 => {
            // A container ID of megabytes: no session has it.
            let id = long_text(rng, len);
            map.insert(b.required[0].clone(), id);
            format!("common/id = {len} bytes")
        }
        _ => {
            // No command, and a key of megabytes beside it.
            map.remove(&b.required[2]);
            let key = format!("{}/cmd/{}", b.session, long_text(rng, len));
            map.insert(key, "/bin/sh".to_owned());
            format!("cmd/Path removed, a key of {len} bytes added")
        }
    }
}

fn deep_nesting(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    let depth = rng.range(1_000, 50_000);
    let sep = if rng.range(0, 2) == 0 { "/" } else { "|" };
    let required = b.required.get(rng.range(0, 3)).cloned().unwrap_or_default();
    map.remove(&required);
    // The removed key again, and the session, nested far below themselves.
    let mut deep = required.clone();
    let mut session = b.session.clone();
    for i in 0..depth {
        deep.push_str(sep);
        deep.push_str(if i % 2 == 0 { "Path" } else { "0" });
        session.push_str(sep);
        session.push_str("cmd");
    }
    map.insert(deep, "/bin/sh".to_owned());
    map.insert(format!("{session}/Path"), "/bin/true".to_owned());
    format!("removed {required}; keys nested {depth} deep with {sep:?}")
}

fn duplicate_key(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    let keys: Vec<&String> = b.map.keys().collect();
    let key = rng
        .pick(&keys)
        .map(|k| (*k).clone())
        .unwrap_or_else(|| b.required[0].clone());
    // Another spelling: flip the case of one letter (or all).
    let letters: Vec<usize> = key
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .collect();
    let other: String = if rng.range(0, 2) == 0 {
        key.to_ascii_uppercase()
    } else {
        let at = rng.pick(&letters).copied().unwrap_or(0);
        key.char_indices()
            .map(|(i, c)| {
                if i == at && c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else if i == at {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let value = map.get(&key).cloned().unwrap_or_default();
    let changed = format!("{value}0");
    if other == key {
        // No letter to flip (cannot happen with real keys): fall back to a missing key.
        return missing_key(b, map, rng);
    }
    map.insert(other.clone(), changed);
    format!("{key} also as {other} with another value")
}

fn huge_slice(b: &Base<'_>, map: &mut Map, rng: &mut Rng) -> String {
    let n = rng.range(50_000, 500_000);
    match rng.range(0, 3) {
        0 if !b.lists.is_empty() => {
            // n elements claimed, n - 1 present.
            let key = rng.pick(&b.lists).cloned().unwrap_or_default();
            map.insert(key.clone(), (n - 1).to_string());
            let values = vec!["a"; n - 1].join("|");
            map.insert(values_key(&key), values);
            map.remove(&exact_values_key(&key));
            format!("{key}: {n} elements claimed, {} present", n - 1)
        }
        1 if !b.lists.is_empty() => {
            // A length no memory could hold.
            let key = rng.pick(&b.lists).cloned().unwrap_or_default();
            let len = rng
                .pick(&["9223372036854775807", "4294967296", "1000000000000"])
                .copied()
                .unwrap_or("4294967296");
            map.insert(key.clone(), len.to_owned());
            format!("{key} = {len}")
        }
        _ => {
            // A session list of n IDs, none of them the container's.
            let list: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            map.insert(b.required[1].clone(), list.join("|"));
            format!("session list of {n} IDs without the container's")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Map {
        serde_json::from_str(include_str!("../testdata/pl_container.json")).unwrap()
    }

    #[test]
    fn every_mutation_is_refused_by_the_decoder_or_lacks_what_the_tether_needs() {
        let base = fixture();
        let ms = mutations(&base, 7, 36).unwrap();
        assert_eq!(ms.len(), 36);
        for k in Kind::ALL {
            assert!(ms.iter().any(|m| m.kind == k), "{k:?} missing");
        }
        for m in &ms {
            assert_ne!(m.map, base, "{}", m.what);
            // Refused by the decoder, or without what the tether needs to run.
            if let Ok(cfg) = crate::decode(&m.map) {
                let runnable = cfg
                    .sessions
                    .get(&cfg.common.id)
                    .is_some_and(|s| !cfg.common.id.is_empty() && !s.cmd.path.is_empty());
                assert!(!runnable, "{:?} {}", m.kind, m.what);
            }
        }
        // Reproducible.
        let again = mutations(&base, 7, 36).unwrap();
        assert!(ms.iter().zip(&again).all(|(a, b)| a.map == b.map));
    }

    #[test]
    fn overrides_rebuild_the_mutated_map() {
        let base = fixture();
        for m in mutations(&base, 3, 12).unwrap() {
            let mut rebuilt = base.clone();
            for (k, v) in m.overrides(&base) {
                if v.is_empty() {
                    rebuilt.remove(&k);
                } else {
                    rebuilt.insert(k, v);
                }
            }
            let expected: Map = m
                .map
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let rebuilt: Map = rebuilt.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            assert_eq!(rebuilt, expected, "{}", m.what);
        }
    }
}
