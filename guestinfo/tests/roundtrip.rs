//! Property tests: encode → decode → encode is stable for generated configs, and decoding
//! arbitrary maps never panics.

use std::collections::BTreeMap;
use std::net::IpAddr;

use guestinfo::value::GoTime;
use guestinfo::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

/// Any text the format can carry as a plain string value.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}".prop_filter("the literal <nil> cannot be carried", |s| s != "<nil>")
}

/// List elements: anything but the `|` separator.
fn elem() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ./:=_@~%é-]{0,10}"
}

/// Map keys: non-empty, no `|`/`@`, lower case (VMX keys are case-insensitive), sometimes
/// with a dot to exercise separator mangling.
fn key() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,6}(\\.[a-z0-9]{1,3})?"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn ipnet() -> impl Strategy<Value = IpNet> {
    (option::of(ip()), option::of(ip())).prop_map(|(ip, mask)| IpNet { ip, mask })
}

fn common() -> impl Strategy<Value = Common> {
    (text(), text(), text(), text()).prop_map(|(execution_environment, id, name, notes)| Common {
        execution_environment,
        id,
        name,
        notes,
    })
}

fn diagnostics() -> impl Strategy<Value = Diagnostics> {
    let exit_log = (
        -62_135_596_800i64..253_402_300_799,
        0u32..1_000_000_000,
        any::<i64>(),
        text(),
    )
        .prop_map(|(s, ns, exit_status, message)| ExitLog {
            time: GoTime::from_unix(s, ns),
            exit_status,
            message,
        });
    (
        any::<i64>(),
        any::<i64>(),
        vec(exit_log, 0..3),
        option::of((text(), text()).prop_map(|(network, raddr)| SysLogConfig { network, raddr })),
    )
        .prop_map(
            |(debug_level, resurrection_count, exit_logs, syslog)| Diagnostics {
                debug_level,
                resurrection_count,
                exit_logs,
                syslog,
            },
        )
}

fn session() -> impl Strategy<Value = SessionConfig> {
    (
        (common(), any::<[i64; 3]>(), diagnostics()),
        (text(), vec(elem(), 0..4), vec(elem(), 0..3), text()),
        (any::<i64>(), text(), any::<[bool; 6]>()),
        (text(), text(), text()),
    )
        .prop_map(
            |(
                (common, d, diagnostics),
                (path, args, env, dir),
                (exit_status, started, b),
                (stop_signal, user, group),
            )| {
                SessionConfig {
                    common,
                    detail: Detail {
                        create_time: d[0],
                        start_time: d[1],
                        stop_time: d[2],
                    },
                    diagnostics,
                    cmd: Cmd {
                        path,
                        args,
                        env,
                        dir,
                    },
                    exit_status,
                    started,
                    attach: b[0],
                    open_stdin: b[1],
                    run_block: b[2],
                    active: b[3],
                    tty: b[4],
                    restart: b[5],
                    stop_signal,
                    user,
                    group,
                }
            },
        )
}

fn mount() -> impl Strategy<Value = MountSpec> {
    (
        (text(), text(), text(), text()),
        (text(), any::<bool>(), text(), text()),
        (text(), text(), any::<i64>()),
    )
        .prop_map(
            |(
                (scheme, opaque, host, path),
                (raw_path, force_query, raw_query, fragment),
                (dest, mode, copy_mode),
            )| {
                MountSpec {
                    source: Url {
                        scheme,
                        opaque,
                        host,
                        path,
                        raw_path,
                        force_query,
                        raw_query,
                        fragment,
                    },
                    path: dest,
                    mode,
                    copy_mode,
                }
            },
        )
}

fn network() -> impl Strategy<Value = NetworkEndpoint> {
    let container_network = (
        (common(), text(), vec(ipnet(), 0..3), ipnet(), any::<bool>()),
        (
            vec(ip(), 0..3),
            vec((option::of(ip()), option::of(ip())), 0..3),
            vec(elem(), 0..3),
            any::<i64>(),
            ipnet(),
            vec(ip(), 0..3),
        ),
    )
        .prop_map(
            |(
                (common, network_type, destinations, gateway, default),
                (nameservers, pools, aliases, trust_level, agw, adns),
            )| {
                ContainerNetwork {
                    common,
                    network_type,
                    destinations,
                    gateway,
                    default,
                    nameservers,
                    pools: pools
                        .into_iter()
                        .map(|(first, last)| IpRange { first, last })
                        .collect(),
                    aliases,
                    trust_level,
                    assigned: AssignedNetwork {
                        gateway: agw,
                        nameservers: adns,
                    },
                }
            },
        );
    (
        common(),
        any::<bool>(),
        option::of(ipnet()),
        ipnet(),
        container_network,
        vec(elem(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(common, static_ip, ip, assigned, network, ports, internal)| NetworkEndpoint {
                common,
                static_ip,
                ip,
                assigned,
                network,
                ports,
                internal,
            },
        )
}

fn config() -> impl Strategy<Value = ContainerConfig> {
    (
        (common(), any::<i64>(), diagnostics()),
        (
            btree_map(key(), session(), 0..3),
            btree_map(key(), session(), 0..2),
            btree_map(key(), mount(), 0..3),
            btree_map(key(), network(), 0..2),
        ),
        (vec(any::<u8>(), 0..40), text(), text(), text()),
        (
            btree_map(key(), text(), 0..3),
            option::of(
                (text(), text(), text(), text(), text(), any::<i64>()).prop_map(
                    |(version, git_commit, build_date, build_number, state, plugin_version)| {
                        Build {
                            version,
                            git_commit,
                            build_date,
                            build_number,
                            state,
                            plugin_version,
                        }
                    },
                ),
            ),
            any::<bool>(),
            text(),
            text(),
            option::of(text()),
        ),
        (text(), text(), btree_map(key(), any::<i64>(), 0..4)),
    )
        .prop_map(
            |(
                (common, create_time, diagnostics),
                (sessions, execs, mounts, networks),
                (key, layer_id, image_id, repo_name),
                (annotations, version, asymmetric_routing, hostname, domainname, visible_name),
                (vch_client_key, log_format, boot_stamps),
            )| ContainerConfig {
                common,
                create_time,
                diagnostics,
                sessions,
                execs,
                mounts,
                networks,
                key,
                layer_id,
                image_id,
                annotations,
                repo_name,
                version,
                asymmetric_routing,
                hostname,
                domainname,
                visible_name,
                tether: TetherExtensions {
                    vch_client_key,
                    log_format,
                    boot_stamps,
                    stop_timeout: 0,
                    panic_after_ms: 0,
                },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn encode_decode_encode_is_stable(cfg in config()) {
        let m1 = encode(&cfg);
        prop_assert!(m1.is_ok(), "{:?}", m1);
        let m1 = m1.unwrap_or_default();
        let c2 = decode(&m1);
        prop_assert!(c2.is_ok(), "{:?}", c2);
        let c2 = c2.unwrap_or_default();
        let m2 = encode(&c2).unwrap_or_default();
        prop_assert_eq!(&m1, &m2);
        prop_assert_eq!(decode(&m2).ok(), Some(c2.clone()));
        // Everything the codec carries survives, except the pointer-to-nothing cases.
        prop_assert_eq!(&c2.sessions, &cfg.sessions);
        prop_assert_eq!(&c2.mounts, &cfg.mounts);
        prop_assert_eq!(&c2.tether, &cfg.tether);
        // The JSON view carries everything too.
        let json = serde_json::to_string(&c2).unwrap_or_default();
        let back: Result<ContainerConfig, _> = serde_json::from_str(&json);
        prop_assert_eq!(back.ok(), Some(c2.clone()));
        // Reload semantics over itself change nothing but the skip-decode fields.
        let mut reloaded = c2.clone();
        prop_assert!(decode_into(&m2, &mut reloaded).is_ok());
        prop_assert_eq!(encode(&reloaded).ok(), Some(m2.clone()));
    }

    #[test]
    fn decoding_arbitrary_maps_never_panics(
        entries in btree_map("\\PC{0,40}", "\\PC{0,20}", 0..40),
        picks in vec((any::<prop::sample::Index>(), "\\PC{0,12}"), 0..40),
    ) {
        // Mix arbitrary keys with real schema keys carrying arbitrary values.
        let fixture: BTreeMap<String, String> =
            serde_json::from_str(include_str!("../testdata/pl_container.json")).unwrap_or_default();
        let keys: Vec<&String> = fixture.keys().collect();
        let mut map = fixture.clone();
        for (i, v) in picks {
            map.insert(keys[i.index(keys.len())].clone(), v);
        }
        map.extend(entries);
        if let Ok(cfg) = decode(&map) {
            if let Ok(m) = encode(&cfg) {
                let again = decode(&m).ok().and_then(|c| encode(&c).ok());
                prop_assert_eq!(again, Some(m));
            }
        }
        let mut cfg = ContainerConfig::default();
        let _ = decode_into(&map, &mut cfg);
    }
}
