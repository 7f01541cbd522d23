//! The container schema against executor-config.md's key tables and a hand-written map in
//! the shape the original port layer writes (`testdata/pl_container.json`).

use std::net::IpAddr;

use crate::{
    decode, decode_into, encode, encode_pairs, guest_writeback, session_writeback, ContainerConfig,
    EncodeError, Map,
};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EID: &str = "e9d1f0c2a7b34c5d8e6f";

pub(crate) fn fixture() -> Map {
    match serde_json::from_str(include_str!("../testdata/pl_container.json")) {
        Ok(m) => m,
        Err(e) => panic!("fixture: {e}"),
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    must(s.parse())
}

#[test]
fn pl_map_round_trips_key_for_key() {
    let map = fixture();
    let cfg = must(decode(&map));
    let again = must(encode(&cfg));
    for (k, v) in &map {
        assert_eq!(again.get(k), Some(v), "key {k}");
    }
    for k in again.keys() {
        assert!(map.contains_key(k), "extra key {k}");
    }
    assert_eq!(again, map);
}

#[test]
fn pl_map_decodes_to_the_expected_values() {
    let cfg = must(decode(&fixture()));
    assert_eq!(cfg.common.id, ID);
    assert_eq!(cfg.common.name, "sleepy_turing");
    assert_eq!(cfg.name(), "sleepy_turing");
    assert_eq!(cfg.visible_name, None);
    assert_eq!(cfg.create_time, 1_500_000_000_123_456_789);
    assert_eq!(cfg.diagnostics.debug_level, 1);
    assert_eq!(
        cfg.diagnostics.syslog.as_ref().map(|s| s.raddr.as_str()),
        Some("10.0.0.5:514")
    );
    assert!(cfg.key.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    assert_eq!(cfg.hostname, "web");
    assert_eq!(cfg.domainname, "example.com");
    assert_eq!(cfg.repo_name, "library/nginx:latest");
    assert_eq!(cfg.version.as_ref().map(|v| v.plugin_version), Some(4));
    assert_eq!(
        cfg.annotations.get("com.example.owner").map(String::as_str),
        Some("ops")
    );

    let primary = cfg
        .primary()
        .unwrap_or_else(|| panic!("no primary session"));
    assert_eq!(primary.cmd.path, "/bin/sh");
    assert_eq!(primary.cmd.args, ["/bin/sh", "-c", "echo hi; sleep 1000"]);
    assert_eq!(primary.cmd.env.len(), 2);
    assert_eq!(primary.user, "nginx");
    assert_eq!(primary.stop_signal, "SIGTERM");
    assert_eq!(primary.started, "true");
    assert_eq!(primary.detail.start_time, 1_500_000_100);
    assert!(primary.tty && primary.attach && primary.open_stdin && primary.active);
    assert!(primary.diagnostics.syslog.is_some());

    let exec = &cfg.execs[EID];
    assert_eq!(exec.cmd.args, ["/bin/ls", "-l"]);
    assert_eq!(exec.started, "");
    assert!(exec.diagnostics.syslog.is_none());

    let vol = &cfg.mounts["vol1"];
    assert_eq!(
        (vol.source.scheme.as_str(), vol.source.path.as_str()),
        ("label", "vol1-label")
    );
    assert_eq!(
        (vol.path.as_str(), vol.copy_mode),
        ("/data", crate::copy_mode::NEW)
    );
    let nfs = &cfg.mounts["nfsvol"];
    assert_eq!(nfs.source.host, "10.118.68.164");

    let net = &cfg.networks["bridge"];
    assert_eq!(net.common.id, "192");
    assert!(net.static_ip);
    let want = crate::IpNet::new(ip("172.17.0.2"), 16);
    assert_eq!(net.ip.as_ref(), Some(&want));
    assert_eq!(net.assigned, want);
    assert_eq!(net.network.common.name, "bridge");
    assert_eq!(net.network.network_type, "bridge");
    assert_eq!(net.network.gateway.ip, Some(ip("172.17.0.1")));
    assert_eq!(net.network.gateway.prefix_len(), Some(16));
    assert_eq!(
        net.network.nameservers,
        [ip("8.8.8.8"), ip("::ffff:10.0.0.1")]
    );
    assert_eq!(net.network.nameservers[1].to_canonical(), ip("10.0.0.1"));
    assert_eq!(net.network.pools[0].last, Some(ip("172.17.255.254")));
    assert_eq!(net.network.aliases, ["web"]);
    assert_eq!(net.network.trust_level, crate::trust_level::PUBLISHED);
    assert_eq!(net.network.assigned.nameservers, [ip("8.8.8.8")]);
    assert_eq!(net.ports, ["8080:80/tcp", "443/tcp"]);
}

#[test]
fn key_table_spellings() {
    let map = must(encode(&must(decode(&fixture()))));
    let s = format!("guestinfo.vice./sessions|{ID}");
    for k in [
        format!("{s}/User"),
        format!("{s}/Group"),
        format!("{s}/stopSignal"),
        format!("{s}/cmd/Args~"),
        format!("guestinfo.vice..sessions|{ID}.started"),
        format!("guestinfo.vice..sessions|{ID}.detail.starttime"),
        format!("guestinfo.vice..sessions|{ID}.diagnostics.resurrections"),
        format!("sessions|{ID}/common/notes"),
        format!("guestinfo.vice./execs|{EID}/cmd/Args~@non-persistent"),
        format!("guestinfo.vice..execs|{EID}.started@non-persistent"),
        "guestinfo.vice./execs@non-persistent".to_owned(),
        "guestinfo.vice./networks|bridge/network/TrustLevel".to_owned(),
        "guestinfo.vice..networks|bridge.network.assigned.gateway.IP".to_owned(),
        "networks|bridge/network/aliases~".to_owned(),
        "guestinfo.vice./mounts|vol1/source/Scheme".to_owned(),
        "guestinfo.vice./version/PluginVersion".to_owned(),
        "common/name".to_owned(),
    ] {
        assert!(map.contains_key(&k), "missing {k}");
    }
    // Hidden + non-persistent cannot combine: exec notes are never written.
    assert!(!map.keys().any(|k| k.starts_with("execs|")));
}

#[test]
fn lookups_are_case_insensitive() {
    let mut map = fixture();
    let s = format!("guestinfo.vice./sessions|{ID}");
    let v = map.remove(&format!("{s}/User"));
    map.insert(format!("{s}/user"), v.unwrap_or_default());
    let cfg = must(decode(&map));
    assert_eq!(cfg.sessions[ID].user, "nginx");
}

/// One key in two spellings used to decode silently, the spelling that sorts first winning;
/// a VMX cannot hold both, so such a map is refused, naming both (found by the bad-config
/// volume test). The same value twice is harmless and still decodes.
#[test]
fn two_spellings_of_a_key_with_different_values_are_refused() {
    let mut map = fixture();
    let key = format!("guestinfo.vice./sessions|{ID}/cmd/Path");
    map.insert(key.to_ascii_uppercase(), "/bin/other".to_owned());
    let err = decode(&map)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&key) && err.contains(&key.to_ascii_uppercase()),
        "{err}"
    );
    let mut cfg = ContainerConfig::default();
    assert!(decode_into(&map, &mut cfg).is_err());

    let mut same = fixture();
    same.insert(key.to_ascii_uppercase(), "/bin/sh".to_owned());
    assert_eq!(must(decode(&same)).sessions[ID].cmd.path, "/bin/sh");
}

/// A megabyte value used to be quoted whole in the error, which the tether sends to the
/// host as the container's `started`: errors show at most `SHOWN` bytes of any value or key.
#[test]
fn errors_quote_a_bounded_part_of_huge_values() {
    let mut map = fixture();
    let huge = format!("z{}", "é".repeat(1 << 20));
    map.insert("guestinfo.vice./diagnostics/debug".to_owned(), huge.clone());
    let err = decode(&map)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("guestinfo.vice./diagnostics/debug"), "{err}");
    assert!(err.contains(&format!("({} bytes)", huge.len())), "{err}");
    assert!(
        err.len() < 2 * crate::error::SHOWN + 100,
        "{} bytes",
        err.len()
    );

    let mut map = fixture();
    let long_key = format!("guestinfo.vice./sessions|{ID}/cmd/Args");
    map.insert(long_key, "x".repeat(1 << 20));
    let err = decode(&map)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.len() < 2 * crate::error::SHOWN + 100,
        "{} bytes",
        err.len()
    );
}

#[test]
fn session_writeback_follows_the_original_order() {
    let mut cfg = must(decode(&fixture()));
    if let Some(s) = cfg.sessions.get_mut(ID) {
        s.diagnostics.exit_logs.push(crate::ExitLog {
            time: crate::value::GoTime::from_unix(1_500_000_200, 0),
            exit_status: 2,
            message: "boom".to_owned(),
        });
    }
    let keys: Vec<String> = must(session_writeback(&cfg, ID))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let rw = |k: &str| format!("guestinfo.vice..sessions|{ID}.{k}");
    assert_eq!(
        keys,
        [
            rw("detail.createtime"),
            rw("detail.starttime"),
            rw("detail.stoptime"),
            rw("diagnostics.resurrections"),
            rw("diagnostics.exitlogs|0.Time"),
            rw("diagnostics.exitlogs|0.ExitStatus"),
            rw("diagnostics.exitlogs|0.Message"),
            rw("diagnostics.exitlogs"),
            rw("status"),
            rw("started"),
            rw("runblock"),
        ]
    );
    let exec: Vec<(String, String)> = must(session_writeback(&cfg, EID));
    assert_eq!(exec.len(), 7);
    assert!(exec.iter().all(
        |(k, _)| k.starts_with(&format!("guestinfo.vice..execs|{EID}."))
            && k.ends_with("@non-persistent")
    ));
    assert_eq!(
        exec.iter()
            .find(|(k, _)| k.contains(".started@"))
            .map(|(_, v)| v.as_str()),
        Some("")
    );
    assert!(matches!(
        session_writeback(&cfg, "nope"),
        Err(EncodeError::UnknownSession { .. })
    ));
}

#[test]
fn guest_writeback_is_every_rw_key() {
    let cfg = must(decode(&fixture()));
    let pairs = must(guest_writeback(&cfg));
    let all = must(encode_pairs(&cfg));
    let expected: Vec<_> = all
        .into_iter()
        .filter(|(k, _)| k.starts_with("guestinfo.vice..") && !k.contains('/'))
        .collect();
    assert_eq!(pairs, expected);
    assert!(pairs
        .iter()
        .any(|(k, _)| k == "guestinfo.vice..networks|bridge.assigned.IP"));
    assert!(pairs.iter().any(|(k, _)| k == "guestinfo.vice..createtime"));
}

#[test]
fn decode_into_has_reload_semantics() {
    let map = fixture();
    let mut cfg = ContainerConfig::default();
    must(decode_into(&map, &mut cfg));
    // skip-decode fields are never read.
    let primary = &cfg.sessions[ID];
    assert_eq!(primary.started, "");
    assert_eq!(primary.detail.start_time, 0);
    assert_eq!(primary.detail.create_time, 1_500_000_000);
    assert_eq!(primary.cmd.path, "/bin/sh");

    // In-memory state survives a reload; a new exec merges into the map; absent keys keep.
    if let Some(s) = cfg.sessions.get_mut(ID) {
        s.started = "true".to_owned();
        s.exit_status = 3;
        s.detail.start_time = 42;
    }
    let mut reload = Map::new();
    reload.insert(
        "guestinfo.vice./execs@non-persistent".to_owned(),
        "new".to_owned(),
    );
    reload.insert(
        "guestinfo.vice./execs|new/cmd/Path@non-persistent".to_owned(),
        "/bin/true".to_owned(),
    );
    reload.insert(
        "guestinfo.vice..execs|new.started@non-persistent".to_owned(),
        "from-host".to_owned(),
    );
    reload.insert("guestinfo.vice./hostname".to_owned(), "renamed".to_owned());
    must(decode_into(&reload, &mut cfg));
    assert_eq!(cfg.hostname, "renamed");
    assert_eq!(cfg.domainname, "example.com");
    assert_eq!(cfg.sessions[ID].started, "true");
    assert_eq!(cfg.sessions[ID].exit_status, 3);
    assert_eq!(cfg.sessions[ID].detail.start_time, 42);
    assert!(cfg.execs.contains_key(EID), "merged maps keep old entries");
    assert_eq!(cfg.execs["new"].cmd.path, "/bin/true");
    assert_eq!(
        cfg.execs["new"].started, "",
        "skip-decode even for new entries"
    );
    assert_eq!(cfg.networks["bridge"].assigned.ip, Some(ip("172.17.0.2")));
}

#[test]
fn container_name_from_either_key() {
    let mut map = fixture();
    map.remove("common/name");
    map.insert(
        "guestinfo.vice./common/name".to_owned(),
        "old_style".to_owned(),
    );
    let cfg = must(decode(&map));
    assert_eq!(cfg.name(), "old_style");
    assert_eq!(cfg.visible_name.as_deref(), Some("old_style"));
    let again = must(encode(&cfg));
    assert_eq!(
        again.get("guestinfo.vice./common/name").map(String::as_str),
        Some("old_style")
    );
    // The guest never sees hidden keys: only the visible name can reach it.
    let guest: Map = fixture()
        .into_iter()
        .filter(|(k, _)| k.starts_with("guestinfo."))
        .collect();
    assert_eq!(must(decode(&guest)).name(), "");
}

#[test]
fn extension_keys() {
    let mut cfg = must(decode(&fixture()));
    assert_eq!(cfg.tether, crate::TetherExtensions::default());
    cfg.tether.vch_client_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx vch".to_owned();
    cfg.tether.log_format = "vic".to_owned();
    cfg.tether.boot_stamps.insert("kernel".to_owned(), 1_200);
    cfg.tether.boot_stamps.insert("tether".to_owned(), 350_000);
    let map = must(encode(&cfg));
    assert_eq!(
        map.get("guestinfo.vice./tether/vchclientkey")
            .map(String::as_str),
        Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx vch")
    );
    assert_eq!(
        map.get("guestinfo.vice./tether/logformat")
            .map(String::as_str),
        Some("vic")
    );
    assert_eq!(
        map.get("guestinfo.vice..tether.bootstamps")
            .map(String::as_str),
        Some("kernel|tether")
    );
    assert_eq!(
        map.get("guestinfo.vice..tether.bootstamps|tether")
            .map(String::as_str),
        Some("350000")
    );
    assert_eq!(must(decode(&map)), cfg);
    let guest = must(guest_writeback(&cfg));
    assert!(guest
        .iter()
        .any(|(k, _)| k == "guestinfo.vice..tether.bootstamps|kernel"));
    assert!(!guest.iter().any(|(k, _)| k.contains("vchclientkey")));
}

#[test]
fn json_carries_everything_needed_to_reencode() {
    let map = fixture();
    let cfg = must(decode(&map));
    let json = must(serde_json::to_string_pretty(&cfg));
    assert!(json.contains("\"::ffff:10.0.0.1\""));
    let back: ContainerConfig = must(serde_json::from_str(&json));
    assert_eq!(back, cfg);
    assert_eq!(must(encode(&back)), map);
}

#[test]
fn separators_inside_args_and_env_survive_and_reload_takes_one_writer() {
    let mut cfg = must(decode(&fixture()));
    let s = must(cfg.sessions.get_mut(ID).ok_or("no session"));
    s.cmd.args = vec!["sh".into(), "-c".into(), "ps | grep -c x".into()];
    s.cmd.env.push("ROUTE=PoolRoute|A".into());
    let map = must(encode(&cfg));
    assert_eq!(must(decode(&map)), cfg);
    // A reload whose writer set plain args again (no exact key) must not resurrect the
    // previous exact elements.
    let mut next = map.clone();
    next.insert(
        format!("guestinfo.vice./sessions|{ID}/cmd/Args~"),
        "sh|-c|true".into(),
    );
    next.remove(&format!("guestinfo.vice./sessions|{ID}/cmd/Args~b64"));
    let mut reloaded = cfg.clone();
    must(decode_into(&next, &mut reloaded));
    assert_eq!(reloaded.sessions[ID].cmd.args, ["sh", "-c", "true"]);
    assert_eq!(reloaded.sessions[ID].cmd.env, cfg.sessions[ID].cmd.env);
    // A reload that leaves the args out keeps the previous ones, exact.
    next.remove(&format!("guestinfo.vice./sessions|{ID}/cmd/Args~"));
    let mut kept = cfg.clone();
    must(decode_into(&next, &mut kept));
    assert_eq!(kept.sessions[ID].cmd.args, cfg.sessions[ID].cmd.args);
}

#[test]
fn rejects_what_it_cannot_carry() {
    let mut cfg = must(decode(&fixture()));
    cfg.annotations.insert("x@y".to_owned(), String::new());
    assert!(matches!(encode(&cfg), Err(EncodeError::BadMapKey { .. })));
}

#[test]
fn discovery_reads_exactly_the_schema_keys() {
    let guest: Map = fixture()
        .into_iter()
        .filter(|(k, _)| k.starts_with("guestinfo."))
        .collect();
    let mut calls = 0usize;
    let found = must(crate::discover_keys(&mut |k: &str| {
        calls += 1;
        Ok::<_, std::convert::Infallible>(guest.get(k).cloned())
    }));
    assert_eq!(found, guest);
    assert!(calls < 400, "{calls} lookups");
    assert_eq!(must(decode(&found)), must(decode(&guest)));
}
