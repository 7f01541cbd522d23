//! The decoder on arbitrary maps. Real schema keys (from the PL fixture) get fuzzed values so
//! that the input reaches past key matching; arbitrary keys are mixed in. Whatever decodes
//! must re-encode stably, and reload semantics must not panic either.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static BTreeMap<String, String> {
    static F: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    F.get_or_init(|| {
        serde_json::from_str(include_str!("../../testdata/pl_container.json")).unwrap_or_default()
    })
}

fuzz_target!(|input: (bool, Vec<(u16, String)>, Vec<(String, String)>)| {
    let (base, picks, extra) = input;
    let f = fixture();
    let keys: Vec<&String> = f.keys().collect();
    let mut map: guestinfo::Map = if base { f.clone() } else { BTreeMap::new() };
    for (i, v) in picks {
        if let Some(k) = keys.get(usize::from(i) % keys.len().max(1)) {
            map.insert((*k).clone(), v);
        }
    }
    map.extend(extra);
    if let Ok(cfg) = guestinfo::decode(&map) {
        if let Ok(m) = guestinfo::encode(&cfg) {
            let again = guestinfo::decode(&m)
                .ok()
                .and_then(|c| guestinfo::encode(&c).ok());
            assert_eq!(again.as_ref(), Some(&m), "re-encode is not stable");
        }
    }
    let mut cfg = guestinfo::ContainerConfig::default();
    let _ = guestinfo::decode_into(&map, &mut cfg);
    let _ = guestinfo::discover_keys(&mut |k| {
        Ok::<_, std::convert::Infallible>(map.get(k).cloned())
    });
});
