//! Networks through the docker client: containers on a user-defined network find each
//! other by name and `--network-alias`, the default bridge resolves no names (docker's
//! rule), `docker network connect` / `disconnect` change a running container's networks,
//! a restarted daemon finds the network's segment where it was, and a compose app reaches
//! its other service by the service's name.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::docker::{client, eventually, Daemon, NEW_CLIENT};

const SERVER_UP: Duration = Duration::from_secs(90);

fn httpd(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// `docker exec NAME sh -c SCRIPT` until it succeeds or `limit` passes: its last output.
fn exec_until(d: &Daemon, name: &str, script: &str, limit: Duration) -> (bool, String) {
    let mut last = String::new();
    let ok = eventually(limit, || {
        let (code, out, err) = d.docker(&["exec", name, "sh", "-c", script]);
        last = format!("{out}{err}");
        code == 0
    });
    (ok, last)
}

/// The pid of the network's `vch netd`, as `vch network inspect` on the daemon's state
/// directory reports it.
fn netd_pid(d: &Daemon, network: &str) -> Option<u64> {
    let out = Command::new(e2e::vch_binary())
        .arg("--state")
        .arg(d.state.path())
        .args(["network", "inspect", network])
        .output()
        .expect("vch network inspect");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["Segment"]["Status"]["pid"].as_u64()
}

#[test]
fn names_aliases_connect_disconnect_and_a_daemon_restart() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "appnet"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "appnet",
        "--network-alias",
        "www",
        "busybox",
        "sh",
        "-c",
        &httpd("from-web"),
    ]);
    // A client on the same network, by name and by alias (docker 20.10's client).
    let (code, out, err) = d.docker(&[
        "run", "--rm", "--network", "appnet", "busybox", "sh", "-c",
        "for i in $(seq 90); do wget -q -O- http://web/ && break; sleep 1; done; wget -q -O- http://www/",
    ]);
    assert_eq!((code, out.as_str()), (0, "from-web\nfrom-web\n"), "{err}");
    let aliases = d.ok(&[
        "inspect",
        "-f",
        "{{json (index .NetworkSettings.Networks \"appnet\").Aliases}}",
        "web",
    ]);
    let id = d.ok(&["inspect", "-f", "{{.Id}}", "web"]);
    assert_eq!(aliases, format!("[\"www\",\"{}\"]", &id[..12]));

    // On the default bridge no names resolve, as with dockerd.
    d.ok(&["run", "-d", "--name", "cli", "busybox", "sleep", "600"]);
    let (code, _, _) = d.docker(&["exec", "cli", "nslookup", "web"]);
    assert_ne!(code, 0, "a name resolved on the default bridge");

    // Connected while it runs (the newer client): a NIC is hot-added, and the names of
    // the network resolve; the server reaches it by its alias there.
    let new = client(NEW_CLIENT);
    let (code, _, err) = d.docker_with(
        &new,
        &["network", "connect", "--alias", "c1", "appnet", "cli"],
        None,
    );
    assert_eq!(code, 0, "network connect: {err}");
    let (ok, out) = exec_until(&d, "cli", "wget -q -O- http://www/", SERVER_UP);
    assert!(ok && out == "from-web\n", "{out}");
    let (ok, out) = exec_until(&d, "web", "ping -c 1 c1", Duration::from_secs(30));
    assert!(ok, "{out}");
    let ip = d.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}",
        "cli",
    ]);
    assert!(
        out.contains(&format!("({ip})")),
        "c1 is not cli's address {ip}: {out}"
    );
    let members = d.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}} {{end}}",
        "appnet",
    ]);
    assert!(
        members.contains("cli") && members.contains("web"),
        "{members}"
    );

    // The daemon restarts: the segment is the same process, and serves the names still.
    let pid = netd_pid(&d, "appnet").expect("appnet's segment runs");
    d.restart();
    assert_eq!(
        netd_pid(&d, "appnet"),
        Some(pid),
        "the segment was not found again"
    );
    let (ok, out) = exec_until(
        &d,
        "cli",
        "wget -q -O- http://web/",
        Duration::from_secs(30),
    );
    assert!(ok && out == "from-web\n", "{out}");

    // Disconnected: the NIC goes, and with it the names.
    let (code, _, err) = d.docker(&["network", "disconnect", "appnet", "cli"]);
    assert_eq!(code, 0, "network disconnect: {err}");
    let interfaces = d.ok(&["exec", "cli", "ls", "/sys/class/net"]);
    assert_eq!(
        interfaces.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "lo"]
    );
    let (code, _, _) = d.docker(&["exec", "cli", "wget", "-q", "-O-", "http://web/"]);
    assert_ne!(code, 0, "still reached after the disconnect");
    let networks = d.ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        "cli",
    ]);
    assert_eq!(networks.trim(), "bridge");
}

#[test]
fn a_compose_app_reaches_its_other_service_by_name() {
    let compose = Path::new("/usr/bin/docker-compose");
    assert!(
        compose.is_file(),
        "/usr/bin/docker-compose is missing: scripts/setup installs Debian's docker-compose"
    );
    let d = Daemon::start();
    let project = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        project.path().join("docker-compose.yml"),
        "version: \"2.4\"\n\
         services:\n\
         \x20 web:\n\
         \x20   image: busybox\n\
         \x20   command: sh -c 'mkdir -p /www && echo served-by-web > /www/index.html && exec httpd -f -p 80 -h /www'\n\
         \x20 client:\n\
         \x20   image: busybox\n\
         \x20   depends_on: [web]\n\
         \x20   command: sh -c 'for i in $$(seq 90); do wget -q -O- http://web/ && exit 0; sleep 1; done; exit 1'\n",
    )
    .expect("compose file");
    let run = |args: &[&str]| {
        let out = Command::new(compose)
            .current_dir(project.path())
            .args(["-p", "e2eapp"])
            .args(args)
            .envs(d.env())
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .output()
            .expect("run docker-compose");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["up", "-d"]);
    assert_eq!(code, 0, "compose up: {out}{err}\n{}", d.log());
    // The client exits 0 once it fetched the page from `web`.
    let code = d.ok(&["wait", "e2eapp_client_1"]);
    assert_eq!(code, "0", "{:?}", d.docker(&["logs", "e2eapp_client_1"]));
    let (_, logs, _) = run(&["logs", "--no-color", "client"]);
    assert!(logs.contains("served-by-web"), "{logs}");
    let (_, ps, _) = run(&["ps"]);
    assert_eq!(ps.matches("e2eapp_web_1").count(), 1, "{ps}");
    let (code, out, err) = run(&["down"]);
    assert_eq!(code, 0, "compose down: {out}{err}");
    let (code, _, _) = d.docker(&["network", "inspect", "e2eapp_default"]);
    assert_ne!(code, 0, "the app's network is still there");
}
