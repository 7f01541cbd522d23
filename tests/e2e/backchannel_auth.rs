//! By default (without `--vic-compat`) the tether lets only the VCH's client key in on the
//! back-channel: `none` authentication and any other key are refused. The test plays the
//! port layer (`--vch tcp://`), so it can try each.

use std::sync::Arc;
use std::time::Duration;

use backchannel::{handshake, requests as req};
use sshproto::{Client, ClientConfig, Connection, Error};
use tokio::net::TcpListener;

/// Takes the VM's next back-channel connection (QEMU redials a second after a drop), runs
/// the serial handshake and tries SSH with `config`.
async fn log_in(
    listener: &TcpListener,
    config: ClientConfig,
) -> Result<Connection, sshproto::Error> {
    let (mut tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("the VM dials the port layer")
        .expect("accept");
    let mut shaken = false;
    for _ in 0..30 {
        if handshake::client(&mut tcp, Duration::from_secs(1))
            .await
            .is_ok()
        {
            shaken = true;
            break;
        }
    }
    assert!(shaken, "serial handshake");
    let (conn, driver) = Client::connect(tcp, Arc::new(config)).await?;
    tokio::spawn(driver);
    Ok(conn)
}

#[test]
fn only_the_vch_client_key_gets_in() {
    let vch = e2e::Vch::new();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let port = listener.local_addr().expect("address").port();
    let id = vch.run_detached(&[
        "--name",
        "auth",
        "--vch",
        &format!("tcp://127.0.0.1:{port}"),
        "busybox",
        "sleep",
        "600",
    ]);
    // The key the container was configured with is the state directory's; any other
    // ed25519 key is a stranger's.
    let (vch_key, vch_public) =
        qemu_harness::keys::client_key(vch.dir.path()).expect("the VCH's client key");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let (stranger, stranger_public) =
        qemu_harness::keys::client_key(elsewhere.path()).expect("another key");
    assert_ne!(vch_public, stranger_public);
    let configured = vch.inspect("auth")["Config"]["tether"]["vch_client_key"].clone();
    assert_eq!(
        configured,
        vch_public.as_str(),
        "the config carries the VCH's key"
    );

    rt.block_on(async {
        match log_in(&listener, ClientConfig::new("daemon")).await {
            Err(Error::AuthFailed(allowed)) => {
                assert!(!allowed.contains("none"), "server allows {allowed}")
            }
            other => panic!("`none` was not refused: {:?}", other.map(|_| ())),
        }
        match log_in(&listener, ClientConfig::new("daemon").key(stranger)).await {
            Err(Error::AuthFailed(_)) => {}
            other => panic!("a stranger's key was not refused: {:?}", other.map(|_| ())),
        }
        // The refusals cost nothing: the right key still gets in and sees the container.
        let conn = log_in(&listener, ClientConfig::new("daemon").key(vch_key))
            .await
            .expect("the VCH's key is accepted");
        let ids = conn
            .global_request(req::GLOBAL_CONTAINER_IDS, &[])
            .await
            .expect("container-ids");
        assert_eq!(req::parse_id_list(&ids.data), Some(vec![id.clone()]));
    });
}
