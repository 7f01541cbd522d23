//! The backdoor state machines against the simulated VMX.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::channel::{rpci, Channel, RPCI_PROTOCOL};
use super::fake::FakePort;
use super::toolbox::{Service, ToolboxState, MAX_DELAY, RESET_DELAY};
use super::vix;
use super::*;
use crate::transport::Transport;

fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn rpci_round_trips_every_length_in_both_bandwidths() {
    for hb in [false, true] {
        let port = FakePort::new(hb);
        for len in 0..12 {
            let value = "v".repeat(len);
            let set = format!("info-set guestinfo.k{len} {value}");
            assert_eq!(must(rpci(&port, set.as_bytes())), b"1 ");
            let reply = must(rpci(&port, format!("info-get guestinfo.k{len}").as_bytes()));
            assert_eq!(
                reply,
                format!("1 {value}").into_bytes(),
                "hb={hb} len={len}"
            );
        }
        // Every request went out intact (the Go client garbles len % 4 == 3 on low bandwidth).
        let log = port.vmx().rpci_log.clone();
        assert!(log.iter().all(|m| m.starts_with(b"info-")));
        assert!(
            port.vmx().chans_open() == 0,
            "channels are closed after each request"
        );
    }
}

#[test]
fn open_falls_back_without_cookies() {
    let port = FakePort::new(false);
    port.vmx().refuse_cookies = true;
    assert!(Channel::open(&port, RPCI_PROTOCOL).is_ok());
}

#[test]
fn checkpoints_are_retried() {
    let port = FakePort::new(true);
    port.vmx()
        .keys
        .insert("guestinfo.a".to_owned(), "x".repeat(100));
    port.vmx().checkpoints = 2;
    let reply = must(rpci(&port, b"info-get guestinfo.a"));
    assert_eq!(reply.len(), 102);
    port.vmx().checkpoints = 1000;
    assert_eq!(
        rpci(&port, b"info-get guestinfo.a"),
        Err(BackdoorError::Checkpoint)
    );
}

#[test]
fn wrong_cookies_fail() {
    let port = FakePort::new(false);
    let chan = must(Channel::open(&port, RPCI_PROTOCOL));
    let other = must(Channel::open(&port, RPCI_PROTOCOL));
    must(other.close(&port));
    assert!(other.send(&port, b"info-get x").is_err());
    assert!(chan.send(&port, b"info-get x").is_ok());
}

#[test]
fn transport_get_set_and_schema_walk() {
    let port = Arc::new(FakePort::new(true));
    let guest: crate::Map = crate::container_tests::fixture()
        .into_iter()
        .filter(|(k, _)| k.starts_with("guestinfo."))
        .collect();
    for (k, v) in &guest {
        let wire = crate::transport::to_wire(v).to_owned();
        port.vmx().keys.insert(k.to_ascii_lowercase(), wire);
    }
    let bd = must(Backdoor::with_port(port.clone()));
    assert_eq!(must(bd.get("vice./hostname")).as_deref(), Some("web"));
    assert_eq!(
        must(bd.get("guestinfo.vice./common/ExecutionEnvironment")).as_deref(),
        Some("")
    );
    assert_eq!(must(bd.get("common/name")), None);
    must(bd.set("guestinfo.vice..tether.bootstamps|init", ""));
    assert_eq!(
        port.vmx()
            .keys
            .get("guestinfo.vice..tether.bootstamps|init")
            .map(String::as_str),
        Some("<nil>")
    );
    assert!(matches!(
        bd.set("guestinfo.vice./hostname", "x"),
        Err(TransportError::ReadOnlyKey(_))
    ));
    let mut all = must(bd.get_all());
    all.remove("guestinfo.vice..tether.bootstamps|init");
    // Lookups use the schema's spelling; the fake stores lower case, so compare that way.
    let lower = |m: &crate::Map| -> crate::Map {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    assert_eq!(lower(&all), lower(&guest));
    let mut cfg = crate::ContainerConfig::default();
    must(crate::reload_config(&bd, &mut cfg));
    assert_eq!(cfg.networks["bridge"].network.common.name, "bridge");
    bd.shutdown();
}

fn service(port: &Arc<FakePort>) -> (Service, Arc<ToolboxState>, mpsc::Receiver<HostCommand>) {
    let (tx, rx) = mpsc::channel();
    let state = Arc::new(ToolboxState::new(tx));
    let svc = Service::new(port.clone(), Arc::clone(&state));
    (svc, state, rx)
}

#[test]
fn toolbox_requests_and_replies() {
    let port = Arc::new(FakePort::new(false));
    let (mut svc, state, commands) = service(&port);
    state
        .users
        .lock()
        .map(|mut u| u.insert("cid".to_owned()))
        .ok();
    *state.primary_ip.lock().unwrap_or_else(|e| e.into_inner()) = Some("10.0.0.9".to_owned());
    let kill = vix::build::relayed(
        vix::OP_START_PROGRAM,
        0,
        &vix::build::start_program("kill", "INT"),
        &vix::build::credential("cid", "x"),
    );
    let requests: Vec<Vec<u8>> = vec![
        b"reset".to_vec(),
        b"ping\0".to_vec(),
        b"Capabilities_Register".to_vec(),
        b"Set_Option broadcastIP 1".to_vec(),
        b"OS_Reboot".to_vec(),
        kill,
        b"Vix_1_Relayed_Command garbage".to_vec(),
        b"OS_Halt".to_vec(),
        b"Frobnicate now".to_vec(),
    ];
    let n = requests.len();
    port.vmx().tclo_requests.extend(requests);
    for _ in 0..=n {
        svc.step();
    }
    let responses = port.vmx().tclo_responses.clone();
    let text: Vec<String> = responses
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(
        text,
        [
            "OK ATR toolbox",
            "OK ",
            "OK ",
            "OK ",
            "OK ",
            "OK 0 0 1\0\0",
            "ERR ",
            "OK ",
            "Unknown Command"
        ]
    );
    let rpci: Vec<String> = port
        .vmx()
        .rpci_log
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(
        rpci,
        [
            "tools.set.version 2147483647",
            "tools.capability.statechange",
            "info-set guestinfo.ip 10.0.0.9",
            "tools.os.statechange.status 0 2\0",
            "tools.os.statechange.status 1 1\0",
        ]
    );
    let got: Vec<HostCommand> = commands.try_iter().collect();
    assert_eq!(
        got,
        [HostCommand::Kill("INT".to_owned()), HostCommand::Halt]
    );
}

#[test]
fn toolbox_backs_off_when_idle_and_resets_on_errors() {
    let port = Arc::new(FakePort::new(true));
    let (mut svc, _state, _rx) = service(&port);
    let mut delays = Vec::new();
    for _ in 0..6 {
        svc.step();
        delays.push(svc.delay);
    }
    assert_eq!(delays, [1, 2, 4, 8, MAX_DELAY, MAX_DELAY]);
    port.vmx().tclo_requests.push_back(b"ping".to_vec());
    svc.step();
    assert_eq!(svc.delay, 0);
    // The VMX forgets our channel (e.g. after vMotion): reset, back off 5 s, reopen.
    port.vmx().drop_channels();
    svc.step();
    assert_eq!(svc.delay, RESET_DELAY);
    port.vmx().tclo_requests.push_back(b"ping".to_vec());
    svc.step();
    svc.step();
    assert_eq!(svc.delay, 1);
    // The response in flight when the channel died is lost, as in the original.
    assert_eq!(port.vmx().tclo_responses.len(), 1);
}

#[test]
fn background_toolbox_feeds_commands() {
    let port = Arc::new(FakePort::new(true));
    let bd = must(Backdoor::with_port(port.clone()));
    bd.authorize_users(["vol1-label".to_owned()]);
    let rx = bd.commands();
    assert!(bd.commands().is_none());
    let reload = vix::build::relayed(
        vix::OP_START_PROGRAM,
        0,
        &vix::build::start_program("reload", ""),
        &vix::build::credential("vol1-label", ""),
    );
    port.vmx().tclo_requests.push_back(reload);
    port.vmx().tclo_requests.push_back(b"OS_Halt".to_vec());
    let rx = match rx {
        Some(rx) => rx,
        None => panic!("no commands"),
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).ok(),
        Some(HostCommand::Reload)
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).ok(),
        Some(HostCommand::Halt)
    );
    bd.shutdown();
}
