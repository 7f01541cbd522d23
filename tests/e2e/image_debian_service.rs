//! A real service from a real distribution with a volume: PostgreSQL from Debian bookworm
//! (`scripts/debian-image` with `DEBIAN_INCLUDE=postgresql`, imported with `vch import`)
//! creates a table and inserts a row into a named volume; the container stops; a new
//! container on the same volume reads the row back.

use e2e::images::debian_tarball;
use e2e::Vch;

/// Runs as root in the container; the server runs as `postgres` (runuser), on a Unix socket
/// only. `PG` and `PGDATA` come from the image (`import --change ENV ...`).
const SERVE: &str = r#"
set -e
as_pg() { runuser -u postgres -- "$@"; }
if [ ! -d "$PGDATA" ]; then
    chown postgres:postgres "$(dirname "$PGDATA")"
    as_pg "$PG/initdb" -A trust -U postgres --no-sync >/dev/null
    echo initdb: done
fi
as_pg "$PG/pg_ctl" -l /tmp/pg.log -o "-k /tmp -c listen_addresses=''" -w -t 120 start >/dev/null
as_pg psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -qAt -c "$SQL"
as_pg "$PG/pg_ctl" -m fast -w stop >/dev/null
echo stopped: clean
"#;

fn run_sql(vch: &Vch, sql: &str) -> String {
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "none",
        "--memory",
        "512",
        "--timeout",
        "240",
        "-v",
        "pgdata:/var/lib/postgresql/data",
        "-e",
        &format!("SQL={sql}"),
        "postgres:15",
        "sh",
        "-c",
        SERVE,
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.ends_with("stopped: clean\n"), "{out}\n{err}");
    out
}

#[test]
fn postgresql_keeps_its_data_on_a_volume_across_containers() {
    let vch = Vch::new();
    let tarball = debian_tarball("postgresql");
    let (code, out, err) = vch.cmd(&[
        "import",
        "-c",
        "ENV PG=/usr/lib/postgresql/15/bin PGDATA=/var/lib/postgresql/data/pg",
        "-c",
        "VOLUME /var/lib/postgresql/data",
        tarball.to_str().expect("path"),
        "postgres:15",
    ]);
    assert_eq!(code, 0, "vch import: {err}");
    assert!(out.starts_with("sha256:"), "{out}");

    let first = run_sql(
        &vch,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'kept across containers');",
    );
    assert!(first.starts_with("initdb: done\n"), "{first}");
    let second = run_sql(&vch, "SELECT body FROM notes WHERE id = 1;");
    assert_eq!(second, "kept across containers\nstopped: clean\n");
    // Both containers have powered off: the volume is clean.
    let (clean, report) = e2e::fsck_clean(&vch.volume_disk("pgdata"));
    assert!(clean, "{report}");
}
