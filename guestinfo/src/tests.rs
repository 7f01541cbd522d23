//! The worked examples of guestinfo.md §8, verbatim, through the generic codec with test
//! structs shaped like the original's test types.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::codec::{from_map_with, to_pairs_with};
use crate::tags::{hidden, ro, rw, skip, tagged, untagged, FieldTag};
use crate::{EncodeError, IpNet, Map};

fn map(pairs: &[(&str, &str)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn encode_with<T: Serialize>(v: &T) -> Map {
    match to_pairs_with(v, "", test_registry) {
        Ok(pairs) => pairs.into_iter().collect(),
        Err(e) => panic!("encode failed: {e}"),
    }
}

fn decode_with<T: for<'de> Deserialize<'de>>(m: &Map) -> T {
    match from_map_with(m, test_registry) {
        Ok(v) => v,
        Err(e) => panic!("decode failed: {e}"),
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Basic {
    int: i64,
    bool: bool,
    float: f64,
    string: String,
}
const BASIC: &[FieldTag] = &[
    rw("int", "int"),
    rw("bool", "bool"),
    rw("float", "float"),
    rw("string", "string"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct BasicSlice {
    int_slice: Vec<i64>,
}
const BASIC_SLICE: &[FieldTag] = &[ro("int_slice", "intslice")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct BasicMap {
    int_map: BTreeMap<String, i64>,
}
const BASIC_MAP: &[FieldTag] = &[ro("int_map", "intmap")];

/// The package tests' `Common`: `ExecutionEnvironment` has `recurse:"depth=0"`.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct TestCommon {
    execution_environment: String,
    id: String,
    name: String,
    notes: String,
}
const TEST_COMMON: &[FieldTag] = &[
    skip("execution_environment"),
    ro("id", "id"),
    ro("name", "name"),
    ro("notes", "notes"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct StructSlice {
    slice: Vec<TestCommon>,
}
const STRUCT_SLICE: &[FieldTag] = &[ro("slice", "slice")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Net {
    net: IpNet,
}
const NET: &[FieldTag] = &[ro("net", "net")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct ComplexType {
    executor_config: ExecutorConfig,
}
const COMPLEX: &[FieldTag] = &[hidden("executor_config", "executorconfig")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct ExecutorConfig {
    common: TestCommon,
    sessions: BTreeMap<String, TestSession>,
    key: String,
}
const EXECUTOR_CONFIG: &[FieldTag] = &[
    ro("common", "common"),
    hidden("sessions", "sessions"),
    untagged("key", "Key"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct TestSession {
    common: TestCommon,
    cmd: TestCmd,
    tty: bool,
}
const TEST_SESSION: &[FieldTag] = &[
    hidden("common", "common"),
    hidden("cmd", "cmd"),
    hidden("tty", "tty"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct TestCmd {
    path: String,
    args: Vec<String>,
    env: Vec<String>,
    dir: String,
}
const TEST_CMD: &[FieldTag] = &[
    hidden("path", "path"),
    hidden("args", "args"),
    hidden("env", "env"),
    hidden("dir", "dir"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Persistence {
    pointers: PointersVisible,
}
const PERSISTENCE: &[FieldTag] = &[tagged("pointers", "read-only,non-persistent", "pointers")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct PointersVisible {
    sessions: BTreeMap<String, Option<VisibleSession>>,
}
const POINTERS_VISIBLE: &[FieldTag] = &[ro("sessions", "sessions")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct VisibleSession {
    cmd: TestCmd,
    tty: bool,
}
const VISIBLE_SESSION: &[FieldTag] = &[ro("cmd", "cmd"), ro("tty", "tty")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Outside {
    inside: Inside,
    id: String,
    name: String,
}
const OUTSIDE: &[FieldTag] = &[ro("inside", "inside"), rw("id", "id"), rw("name", "name")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Inside {
    id: String,
    name: String,
}
const INSIDE: &[FieldTag] = &[rw("id", "id"), rw("name", "name")];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Stuff {
    username: String,
    password: String,
    tell: Tell,
}
const STUFF: &[FieldTag] = &[
    ro("username", "username"),
    tagged("password", "secret", "password"),
    untagged("tell", "Tell"),
];

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Tell {
    who: String,
}
const TELL: &[FieldTag] = &[tagged("who", "secret", "who")];

fn test_registry(name: &str) -> Option<&'static [FieldTag]> {
    Some(match name {
        "Basic" => BASIC,
        "BasicSlice" => BASIC_SLICE,
        "BasicMap" => BASIC_MAP,
        "TestCommon" => TEST_COMMON,
        "StructSlice" => STRUCT_SLICE,
        "Net" => NET,
        "IpNet" => crate::config::IPNET_TAGS,
        "ComplexType" => COMPLEX,
        "ExecutorConfig" => EXECUTOR_CONFIG,
        "TestSession" => TEST_SESSION,
        "TestCmd" => TEST_CMD,
        "Persistence" => PERSISTENCE,
        "PointersVisible" => POINTERS_VISIBLE,
        "VisibleSession" => VISIBLE_SESSION,
        "Outside" => OUTSIDE,
        "Inside" => INSIDE,
        "Stuff" => STUFF,
        "Tell" => TELL,
        _ => return None,
    })
}

#[test]
#[allow(clippy::approx_constant)] // the spec's value, verbatim
fn test_basic() {
    let v = Basic {
        int: 42,
        bool: true,
        float: 3.14,
        string: "Grrr".to_owned(),
    };
    let expected = map(&[
        ("guestinfo.vice..bool", "true"),
        ("guestinfo.vice..float", "3.14E+00"),
        ("guestinfo.vice..int", "42"),
        ("guestinfo.vice..string", "Grrr"),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<Basic>(&expected), v);
}

#[test]
fn test_basic_slice_and_map() {
    let v = BasicSlice {
        int_slice: vec![1, 2, 3, 4, 5],
    };
    let expected = map(&[
        ("guestinfo.vice./intslice", "4"),
        ("guestinfo.vice./intslice~", "1|2|3|4|5"),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<BasicSlice>(&expected), v);

    let v = BasicMap {
        int_map: [("1st".to_owned(), 12345), ("2nd".to_owned(), 67890)].into(),
    };
    let expected = map(&[
        ("guestinfo.vice./intmap", "1st|2nd"),
        ("guestinfo.vice./intmap|1st", "12345"),
        ("guestinfo.vice./intmap|2nd", "67890"),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<BasicMap>(&expected), v);
}

#[test]
fn test_struct_slice_and_net() {
    let v = StructSlice {
        slice: vec![
            TestCommon {
                id: "0xDEADFEED".to_owned(),
                name: "feed".to_owned(),
                ..TestCommon::default()
            },
            TestCommon {
                id: "0xFACEFEED".to_owned(),
                name: "face".to_owned(),
                ..TestCommon::default()
            },
        ],
    };
    let expected = map(&[
        ("guestinfo.vice./slice", "1"),
        ("guestinfo.vice./slice|0/id", "0xDEADFEED"),
        ("guestinfo.vice./slice|0/name", "feed"),
        ("guestinfo.vice./slice|0/notes", ""),
        ("guestinfo.vice./slice|1/id", "0xFACEFEED"),
        ("guestinfo.vice./slice|1/name", "face"),
        ("guestinfo.vice./slice|1/notes", ""),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<StructSlice>(&expected), v);

    let localhost: IpAddr = [127, 0, 0, 1].into();
    let v = Net {
        net: IpNet::new(localhost, 8),
    };
    let expected = map(&[
        ("guestinfo.vice./net/IP", "fwAAAQ=="),
        ("guestinfo.vice./net/Mask", "/wAAAA=="),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<Net>(&expected), v);
    assert_eq!(v.net.prefix_len(), Some(8));
}

#[test]
fn test_complex() {
    let session = TestSession {
        common: TestCommon {
            id: "SessionID".to_owned(),
            name: "SessionName".to_owned(),
            ..TestCommon::default()
        },
        cmd: TestCmd {
            path: "/vmware".to_owned(),
            args: vec!["/bin/imagec".to_owned(), "-standalone".to_owned()],
            env: vec!["PATH=/bin".to_owned(), "USER=imagec".to_owned()],
            dir: "/".to_owned(),
        },
        tty: true,
    };
    let v = ComplexType {
        executor_config: ExecutorConfig {
            sessions: [("Session1".to_owned(), session)].into(),
            ..ExecutorConfig::default()
        },
    };
    let expected = map(&[
        ("executorconfig/Key", ""),
        ("executorconfig/sessions", "Session1"),
        ("executorconfig/sessions|Session1/cmd/args", "1"),
        (
            "executorconfig/sessions|Session1/cmd/args~",
            "/bin/imagec|-standalone",
        ),
        ("executorconfig/sessions|Session1/cmd/dir", "/"),
        ("executorconfig/sessions|Session1/cmd/env", "1"),
        (
            "executorconfig/sessions|Session1/cmd/env~",
            "PATH=/bin|USER=imagec",
        ),
        ("executorconfig/sessions|Session1/cmd/path", "/vmware"),
        ("executorconfig/sessions|Session1/tty", "true"),
        ("guestinfo.vice./executorconfig/common/id", ""),
        ("guestinfo.vice./executorconfig/common/name", ""),
        ("guestinfo.vice./executorconfig/common/notes", ""),
        (
            "guestinfo.vice./executorconfig/sessions|Session1/common/id",
            "SessionID",
        ),
        (
            "guestinfo.vice./executorconfig/sessions|Session1/common/name",
            "SessionName",
        ),
        (
            "guestinfo.vice./executorconfig/sessions|Session1/common/notes",
            "",
        ),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<ComplexType>(&expected), v);
}

#[test]
fn test_inheritance_of_non_persistence_with_pointer() {
    let v = Persistence {
        pointers: PointersVisible {
            sessions: [(
                "primary".to_owned(),
                Some(VisibleSession {
                    tty: true,
                    ..VisibleSession::default()
                }),
            )]
            .into(),
        },
    };
    let expected = map(&[
        (
            "guestinfo.vice./pointers/sessions@non-persistent",
            "primary",
        ),
        (
            "guestinfo.vice./pointers/sessions|primary/tty@non-persistent",
            "true",
        ),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<Persistence>(&expected), v);
}

#[test]
fn test_inside_outside() {
    let v = Outside {
        inside: Inside {
            id: "inside".to_owned(),
            name: "Inside".to_owned(),
        },
        id: "outside".to_owned(),
        name: "Outside".to_owned(),
    };
    let expected = map(&[
        ("guestinfo.vice..id", "outside"),
        ("guestinfo.vice..inside.id", "inside"),
        ("guestinfo.vice..inside.name", "Inside"),
        ("guestinfo.vice..name", "Outside"),
    ]);
    assert_eq!(encode_with(&v), expected);
    assert_eq!(decode_with::<Outside>(&expected), v);
}

#[test]
fn test_secret_fields_shape() {
    // Key shapes of §8.6; values are not encrypted by this crate, so encoding refuses.
    let scope = crate::keys::Scope::from_words("secret");
    assert_eq!(
        crate::keys::calculate_key(scope, "", "password").as_deref(),
        Some("guestinfo.vice./password@secret")
    );
    let tell = untagged("tell", "Tell").resolve("").map(|(k, _)| k);
    assert_eq!(tell.as_deref(), Some("Tell"));
    assert_eq!(
        tagged("who", "secret", "who")
            .resolve("Tell")
            .map(|(k, _)| k)
            .as_deref(),
        Some("guestinfo.vice./Tell/who@secret")
    );
    let v = Stuff {
        username: "root".to_owned(),
        password: "x".to_owned(),
        ..Stuff::default()
    };
    assert!(matches!(
        to_pairs_with(&v, "", test_registry),
        Err(EncodeError::Secret { key }) if key == "guestinfo.vice./password@secret"
    ));
    // Decoding a map that carries ciphertext is refused rather than returning garbage.
    let m = map(&[
        ("guestinfo.vice./username", "root"),
        ("guestinfo.vice./password@secret", "AAAA"),
    ]);
    assert!(from_map_with::<Stuff>(&m, test_registry).is_err());
}

#[test]
fn list_elements_with_a_separator_travel_exactly_beside_the_original_form() {
    let cmd = |args: &[&str]| ComplexType {
        executor_config: ExecutorConfig {
            sessions: [(
                "s".to_owned(),
                TestSession {
                    cmd: TestCmd {
                        args: args.iter().map(|a| (*a).to_owned()).collect(),
                        ..TestCmd::default()
                    },
                    ..TestSession::default()
                },
            )]
            .into(),
            ..ExecutorConfig::default()
        },
    };
    let c = cmd(&["sh", "-c", "echo a|tr a b", ""]);
    let m = encode_with(&c);
    // The original's keys, as its port layer writes them (the element is split there)...
    assert_eq!(
        m.get("executorconfig/sessions|s/cmd/args~")
            .map(String::as_str),
        Some("sh|-c|echo a|tr a b|")
    );
    assert_eq!(
        m.get("executorconfig/sessions|s/cmd/args")
            .map(String::as_str),
        Some("3")
    );
    // ...and ours beside them, each element whole.
    assert_eq!(
        m.get("executorconfig/sessions|s/cmd/args~b64")
            .map(String::as_str),
        Some("c2g=|LWM=|ZWNobyBhfHRyIGEgYg==|")
    );
    assert_eq!(decode_with::<ComplexType>(&m), c);
    // What the original makes of the same keys: split, and cut to the length.
    let mut original = m.clone();
    original.remove("executorconfig/sessions|s/cmd/args~b64");
    assert_eq!(
        decode_with::<ComplexType>(&original)
            .executor_config
            .sessions["s"]
            .cmd
            .args,
        ["sh", "-c", "echo a", "tr a b"]
    );
    // Without a separator inside an element, the wire is the original's alone.
    let plain = encode_with(&cmd(&["sh", "-c", "true"]));
    assert!(!plain.keys().any(|k| k.ends_with("~b64")), "{plain:?}");
    // A damaged exact list is an error naming its key, not a silent fallback.
    let mut bad = m.clone();
    bad.insert(
        "executorconfig/sessions|s/cmd/args~b64".into(),
        "c2g=|!!|x|y".into(),
    );
    let e = from_map_with::<ComplexType>(&bad, test_registry).unwrap_err();
    assert!(e.to_string().contains("args~b64"), "{e}");
}

#[test]
fn unrepresentable_values_are_errors() {
    let v = BasicSlice::default();
    assert_eq!(encode_with(&v), Map::new());
    for bad in ["a|b", "a@b", ""] {
        let v = BasicMap {
            int_map: [(bad.to_owned(), 1)].into(),
        };
        assert!(
            matches!(
                to_pairs_with(&v, "", test_registry),
                Err(EncodeError::BadMapKey { .. })
            ),
            "{bad:?}"
        );
    }
    let v = BasicMap {
        int_map: [("A".to_owned(), 1), ("a".to_owned(), 2)].into(),
    };
    assert!(matches!(
        to_pairs_with(&v, "", test_registry),
        Err(EncodeError::Collision { .. })
    ));
    let v = Basic {
        string: "<nil>".to_owned(),
        ..Basic::default()
    };
    assert!(matches!(
        to_pairs_with(&v, "", test_registry),
        Err(EncodeError::NilLiteral { .. })
    ));
}

#[test]
fn decode_is_lenient_where_the_original_is_and_strict_elsewhere() {
    // "" is the zero value; keys match case-insensitively; unknown keys are ignored.
    let m = map(&[
        ("GUESTINFO.VICE..INT", ""),
        ("guestinfo.vice..Bool", "T"),
        ("guestinfo.vice..float", "1E+00"),
        ("unknown", "x"),
    ]);
    assert_eq!(
        decode_with::<Basic>(&m),
        Basic {
            int: 0,
            bool: true,
            float: 1.0,
            string: String::new()
        }
    );
    let bad = map(&[("guestinfo.vice..int", "forty-two")]);
    let err = from_map_with::<Basic>(&bad, test_registry).map(|_| ());
    assert!(
        matches!(&err, Err(crate::DecodeError::InvalidValue { key, .. }) if key == "guestinfo.vice..int"),
        "{err:?}"
    );
    // A list length larger than the data is refused, not allocated.
    let bad = map(&[
        ("guestinfo.vice./intslice", "999999999999"),
        ("guestinfo.vice./intslice~", "1|2"),
    ]);
    assert!(from_map_with::<BasicSlice>(&bad, test_registry).is_err());
    let bad = map(&[("guestinfo.vice./slice", "-7")]);
    assert!(from_map_with::<StructSlice>(&bad, test_registry).is_err());
    // The length truncates extra values, as the original does (vmware/vic#3510).
    let m = map(&[
        ("guestinfo.vice./intslice", "1"),
        ("guestinfo.vice./intslice~", "1|2|3"),
    ]);
    assert_eq!(decode_with::<BasicSlice>(&m).int_slice, vec![1, 2]);
}
