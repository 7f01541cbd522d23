//! Containers on one network reach each other: by name, `--network-alias` and short ID, on
//! any port, TCP and UDP, both ways; a container started later is found, and so is a
//! server started again; a container on another network finds nothing and reaches nothing;
//! a container on two networks reaches both. The network's segment (its `vch netd`) lives
//! as long as containers use it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::Vch;

/// How long a server in a fresh container may take to answer.
const SERVER_UP: Duration = Duration::from_secs(90);

/// `vch exec CONTAINER sh -c SCRIPT` until it succeeds (or `limit` passes): its stdout.
fn exec_until(vch: &Vch, container: &str, script: &str, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let (code, out, err) = vch.cmd(&["exec", container, "sh", "-c", script]);
        if code == 0 {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(format!("exit {code}: {out}{err}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn httpd(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

fn address(vch: &Vch, container: &str, network: &str) -> String {
    vch.inspect(container)["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn segment(vch: &Vch, network: &str) -> serde_json::Value {
    let (code, out, err) = vch.cmd(&["network", "inspect", network]);
    assert_eq!(code, 0, "network inspect: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v[0]["Segment"].clone()
}

#[test]
fn by_name_alias_and_short_id_both_ways_and_nothing_from_another_network() {
    let vch = Vch::new();
    for n in ["app", "other"] {
        let (code, _, err) = vch.cmd(&["network", "create", n]);
        assert_eq!(code, 0, "network create {n}: {err}");
    }
    let web = vch.run_detached(&[
        "--name",
        "web",
        "--network",
        "app",
        "--network-alias",
        "www",
        "busybox",
        "sh",
        "-c",
        &httpd("from-web"),
    ]);
    vch.run_detached(&[
        "--name",
        "cli",
        "--network",
        "app",
        "busybox",
        "sleep",
        "600",
    ]);
    let short = &web[..12];
    for host in ["web", "www", short] {
        let got = exec_until(
            &vch,
            "cli",
            &format!("wget -q -O- http://{host}/"),
            SERVER_UP,
        );
        assert_eq!(got.as_deref(), Ok("from-web\n"), "fetching http://{host}/");
    }
    // Both ways, and the name resolves to the address the port layer gave.
    let web_ip = address(&vch, "web", "app");
    let cli_ip = address(&vch, "cli", "app");
    assert!(
        web_ip.starts_with("172.") && cli_ip.starts_with("172."),
        "{web_ip} {cli_ip}"
    );
    let ping = exec_until(&vch, "cli", "ping -c 1 web", Duration::from_secs(30));
    assert!(
        ping.as_ref()
            .is_ok_and(|p| p.contains(&format!("PING web ({web_ip})"))),
        "{ping:?}"
    );
    let ping = exec_until(&vch, "web", "ping -c 1 cli", Duration::from_secs(30));
    assert!(
        ping.as_ref()
            .is_ok_and(|p| p.contains(&format!("PING cli ({cli_ip})"))),
        "{ping:?}"
    );

    // From another network: the name is unknown, the address unreachable.
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "other",
        "busybox",
        "sh",
        "-c",
        &format!(
            "nslookup web >/dev/null 2>&1; echo dns=$?; timeout 5 wget -q -O- http://{web_ip}/; echo ip=$?"
        ),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("from-web"),
        "reached from another network: {out}"
    );
    assert!(
        out.contains("dns=1\n"),
        "the name resolved on another network: {out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("ip=") && l != "ip=0"),
        "{out}"
    );

    // A container on both networks reaches a server on each.
    vch.run_detached(&[
        "--name",
        "db",
        "--network",
        "other",
        "busybox",
        "sh",
        "-c",
        &httpd("from-db"),
    ]);
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "app",
        "--network",
        "other",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 60); do wget -q -O- http://db/ && break; sleep 1; done; wget -q -O- http://web/",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-db\nfrom-web\n");
}

#[test]
fn a_container_started_later_and_a_server_started_again_are_found_by_name() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&["network", "create", "app"]);
    assert_eq!(code, 0, "{err}");
    vch.run_detached(&[
        "--name",
        "cli",
        "--network",
        "app",
        "busybox",
        "sleep",
        "600",
    ]);
    // The server starts after the client: the client finds it.
    vch.run_detached(&[
        "--name",
        "web",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        &httpd("v1"),
    ]);
    let got = exec_until(&vch, "cli", "wget -q -O- http://web/", SERVER_UP);
    assert_eq!(got.as_deref(), Ok("v1\n"));
    let first_ip = address(&vch, "web", "app");

    // A new server VM by the same name, at another address (a third container took the
    // first one's): the name follows it.
    let (code, _, err) = vch.cmd(&["rm", "-f", "web"]);
    assert_eq!(code, 0, "{err}");
    vch.run_detached(&[
        "--name",
        "filler",
        "--network",
        "app",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(
        address(&vch, "filler", "app"),
        first_ip,
        "the freed address is reused"
    );
    vch.run_detached(&[
        "--name",
        "web",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        &httpd("v2"),
    ]);
    let second_ip = address(&vch, "web", "app");
    assert_ne!(second_ip, first_ip);
    let got = exec_until(&vch, "cli", "wget -q -O- http://web/", SERVER_UP);
    assert_eq!(got.as_deref(), Ok("v2\n"));

    // The same server restarted (its VM boots again): reached by name again.
    let (code, _, err) = vch.cmd(&["restart", "-t", "1", "web"]);
    assert_eq!(code, 0, "{err}");
    let got = exec_until(&vch, "cli", "wget -q -O- http://web/", SERVER_UP);
    assert_eq!(got.as_deref(), Ok("v2\n"));
    assert_eq!(
        address(&vch, "web", "app"),
        second_ip,
        "a container keeps its address"
    );
}

/// The UDP peer (`tests/tools/udp_peer.rs`), built static once per test run: busybox has
/// no UDP client or server.
fn udp_peer() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = here.join("../target/e2e-tools/udp-peer");
            std::fs::create_dir_all(out.parent().expect("parent")).expect("tools dir");
            let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
            let status = std::process::Command::new(rustc)
                .current_dir(here)
                .args([
                    "--edition",
                    "2021",
                    "-C",
                    "opt-level=1",
                    "--target",
                    "x86_64-unknown-linux-musl",
                    "-o",
                ])
                .arg(&out)
                .arg(here.join("tools/udp_peer.rs"))
                .status()
                .expect("run rustc");
            assert!(status.success(), "building the UDP peer failed");
            out
        })
        .clone()
}

#[test]
fn udp_between_containers_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let tool = std::fs::read(udp_peer()).expect("UDP peer");
    let (_image_dir, image) = e2e::busybox_image_with(&[("/bin/udp-peer", &tool)], &[]);
    std::fs::set_permissions(
        image.join("bin/udp-peer"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let image = image.to_str().expect("UTF-8 path").to_owned();
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&["network", "create", "app"]);
    assert_eq!(code, 0, "{err}");
    vch.run_detached(&[
        "--name",
        "echo",
        "--network",
        "app",
        &image,
        "/bin/udp-peer",
        "serve",
        "5353",
    ]);
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "app",
        &image,
        "/bin/udp-peer",
        "ask",
        "echo",
        "5353",
        "hello-over-udp",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let echo_ip = address(&vch, "echo", "app");
    assert_eq!(out, format!("echo hello-over-udp (from {echo_ip}:5353)\n"));
    let (_, logs, _) = vch.cmd(&["logs", "echo"]);
    assert!(
        logs.lines()
            .any(|l| l.ends_with(": hello-over-udp") && l.starts_with("from 172.")),
        "the server saw: {logs}"
    );
}

#[test]
fn the_segment_lives_while_containers_use_it() {
    let vch = Vch::new();
    let (code, _, err) = vch.cmd(&["network", "create", "life"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        segment(&vch, "life")["Running"],
        false,
        "no container, no segment"
    );
    vch.run_detached(&[
        "--name",
        "one",
        "--network",
        "life",
        "busybox",
        "sleep",
        "600",
    ]);
    let seg = segment(&vch, "life");
    assert_eq!(seg["Running"], true, "{seg}");
    let pid = seg["Status"]["pid"].as_u64().expect("netd pid");
    vch.run_detached(&[
        "--name",
        "two",
        "--network",
        "life",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(segment(&vch, "life")["Status"]["ports"], 2);
    // One container ends: the segment stays, the other container still uses it.
    let (code, _, err) = vch.cmd(&["rm", "-f", "one"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(5));
    let seg = segment(&vch, "life");
    assert_eq!(seg["Status"]["pid"].as_u64(), Some(pid), "{seg}");
    assert_eq!(seg["Status"]["ports"], 1, "{seg}");
    // The one left still has the segment's name server.
    let b_ip = address(&vch, "two", "life");
    let found = exec_until(&vch, "two", "nslookup two", Duration::from_secs(30));
    assert!(found.as_ref().is_ok_and(|o| o.contains(&b_ip)), "{found:?}");
    // The last one ends: so does the segment.
    let (code, _, err) = vch.cmd(&["rm", "-f", "two"]);
    assert_eq!(code, 0, "{err}");
    let gone = vch.wait_until(Duration::from_secs(30), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        gone,
        "vch netd {pid} still runs with no container on the network"
    );
    assert_eq!(segment(&vch, "life")["Running"], false);
    // And a new container brings a new one.
    vch.run_detached(&[
        "--name",
        "three",
        "--network",
        "life",
        "busybox",
        "sleep",
        "600",
    ]);
    let seg = segment(&vch, "life");
    assert_eq!(seg["Running"], true, "{seg}");
    assert_ne!(seg["Status"]["pid"].as_u64(), Some(pid));
}
