//! How `migrate-postgres` reaches and reads its source: over TLS, verified against the test CA of
//! `cargo xtask up` (beside the server's `ssl_cert_file`), a wrong name or CA refused, and with
//! TLS switched off on the server (`ALTER SYSTEM SET ssl = off`) `require` refuses it; and only read
//! (a query that writes fails).

use std::time::Duration;

use score_worker::config::Config;

use super::{create_source, pg, pg_url, short_tag};
use crate::support::*;

/// The CA that signed the local PostgreSQL's certificate: `cargo xtask up` puts it beside the
/// server's certificate (whichever pair's script started the server).
async fn pg_ca(client: &tokio_postgres::Client) -> String {
    let cert: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let ca = std::path::Path::new(&cert).with_file_name("ca.pem");
    assert!(
        ca.is_file(),
        "no {} beside the server certificate {cert}: start PostgreSQL with cargo xtask up dev",
        ca.display()
    );
    ca.to_string_lossy().into_owned()
}

/// The opening of a source test: a PostgreSQL client, the test's configuration, the test's tag
/// ([`short_tag`]) and a small source table of three valid rows.
async fn small_source(test: &str) -> (tokio_postgres::Client, Config, String, String) {
    let (client, config, tag) = (pg().await, base_config(test), short_tag());
    let table = format!("mig_small_{tag}");
    let fill = format!(
        "INSERT INTO {table}
           SELECT md5('{tag}' || i)::uuid, '0x' || repeat('a', 40), 'mig-small', i,
                  now() - interval '1 hour'
           FROM generate_series(1, 3) AS i;"
    );
    create_source(&client, &table, &fill).await;
    (client, config, tag, table)
}

/// `migrate-postgres --dry-run` of `table` from `source` plus `extra`: (exit code, stdout, stderr).
fn dry_run(
    config: &Config,
    source: &str,
    table: &str,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let out = worker_command(config, 0)
        .args([
            "migrate-postgres",
            "--source",
            source,
            "--table",
            table,
            "--dry-run",
        ])
        .args(extra)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "migrate-postgres {source:?} {extra:?}: exit {:?}\n{stdout}{stderr}",
        out.status.code()
    );
    (out.status.code(), stdout, stderr)
}

/// Sets `ssl` on the server (`None`: back to the configuration's) and waits until new connections
/// see it.
async fn set_server_ssl(ssl: Option<bool>) {
    let client = pg().await;
    let set = match ssl {
        Some(true) => "ALTER SYSTEM SET ssl = on",
        Some(false) => "ALTER SYSTEM SET ssl = off",
        None => "ALTER SYSTEM RESET ssl",
    };
    // One statement per request: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
    for sql in [set, "SELECT pg_reload_conf()"] {
        client
            .batch_execute(sql)
            .await
            .expect("change ssl (the tests connect as the superuser postgres)");
    }
    let want = if ssl == Some(false) { "off" } else { "on" };
    let what = format!("PostgreSQL ssl = {want} (cargo xtask up starts it with TLS on)");
    let every = Duration::from_millis(100);
    poll(&what, Duration::from_secs(30), every, || async {
        let fresh = pg().await;
        let row = fresh.query_one("SHOW ssl", &[]).await.unwrap();
        let ssl = row.get::<_, String>(0);
        if ssl == want {
            Ok(())
        } else {
            Err(format!("ssl is {ssl}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_is_verified_and_a_server_without_tls_is_refused_when_required() {
    // Switches TLS off on the shared server for a moment: nothing else may run meanwhile.
    let _servers = exclusive().await;
    let (client, config, _, table) = small_source("pgtls").await;
    let ca = pg_ca(&client).await;
    let port = pg_url()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .expect("pg_url names a port")
        .to_string();
    let at = |host: &str| format!("{host} port={port} user=postgres");
    set_server_ssl(None).await;

    // Verified against the test CA: by flags, and by default once a CA is given.
    assert_verified(&config, &at, &table, &ca);

    // Refused: a name the certificate does not carry, a CA that did not sign it, verify without a CA.
    assert_refused_unverifiable(&config, &at, &table, &ca);

    // The server stops offering TLS: `require` and `verify-full` refuse it; loopback's prefer falls
    // back to plain text, says so, and warns.
    assert_no_server_tls(&config, &at, &table, &ca).await;
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// `migrate-postgres --dry-run` verifies the server against the test CA: by flags, and by default
/// once a CA is given; loopback without a CA is libpq's prefer, encrypted but not verified.
fn assert_verified(config: &Config, at: &dyn Fn(&str) -> String, table: &str, ca: &str) {
    let verified = "source:        TLS, certificate and host name verified (sslmode=verify-full)";
    let (code, out, err) = dry_run(
        config,
        &at("host=127.0.0.1"),
        table,
        &["--sslmode", "verify-full", "--sslrootcert", ca],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().any(|l| l == verified), "{out}");
    assert!(out.contains("valid:         3"), "{out}");
    let (code, out, err) = dry_run(
        config,
        &format!("{} sslrootcert='{ca}'", at("host=localhost")),
        table,
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines().any(|l| l == verified),
        "a CA makes verify-full the default: {out}"
    );
    // Loopback without a CA: libpq's prefer, encrypted but not verified.
    let (code, out, _) = dry_run(config, &at("host=127.0.0.1"), table, &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l == "source:        TLS, server not verified (sslmode=prefer)"),
        "{out}"
    );
}

/// Refused: a name the certificate does not carry (but `verify-ca` takes it), a CA that did not
/// sign it, `verify-full` without a CA.
fn assert_refused_unverifiable(
    config: &Config,
    at: &dyn Fn(&str) -> String,
    table: &str,
    ca: &str,
) {
    let wrong_name = format!(
        "{} hostaddr=127.0.0.1 sslrootcert='{ca}'",
        at("host=db.example")
    );
    let (code, _, err) = dry_run(config, &wrong_name, table, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("sslmode=verify-full") && err.contains("not valid for name \"db.example\""),
        "{err}"
    );
    let (code, out, err) = dry_run(config, &wrong_name, table, &["--sslmode", "verify-ca"]);
    assert_eq!(
        code,
        Some(0),
        "verify-ca checks the chain, not the name: {err}"
    );
    assert!(
        out.contains("TLS, certificate chain verified (sslmode=verify-ca)"),
        "{out}"
    );
    let (code, _, err) = dry_run(
        config,
        &format!("{} sslrootcert=system", at("host=127.0.0.1")),
        table,
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    let (code, _, err) = dry_run(
        config,
        &at("host=127.0.0.1"),
        table,
        &["--sslmode", "verify-full"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("sslmode=verify-full needs sslrootcert"),
        "{err}"
    );
}

/// With the server's TLS off for a moment: `require` and `verify-full` refuse it; loopback's prefer
/// falls back to plain text, says so, and warns.
async fn assert_no_server_tls(config: &Config, at: &dyn Fn(&str) -> String, table: &str, ca: &str) {
    set_server_ssl(Some(false)).await;
    let required = dry_run(
        config,
        &format!("{} sslmode=require", at("host=127.0.0.1")),
        table,
        &[],
    );
    let full = dry_run(config, &at("host=127.0.0.1"), table, &["--sslrootcert", ca]);
    let preferred = dry_run(config, &at("host=127.0.0.1"), table, &[]);
    set_server_ssl(None).await;
    for (what, (code, out, err)) in [("require", &required), ("verify-full", &full)] {
        assert_eq!(*code, Some(1), "{what}: {out}{err}");
        assert!(err.contains("server does not support TLS"), "{what}: {err}");
        assert!(!out.contains("rows read"), "{what}: nothing read: {out}");
    }
    let (code, out, err) = preferred;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l == "source:        plain text (sslmode=prefer)"),
        "{out}"
    );
    assert!(
        err.contains("plain text: the server offers no TLS"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_read_in_a_read_only_transaction_so_a_query_that_writes_fails() {
    let _servers = shared().await;
    let (client, config, tag, table) = small_source("pgro").await;
    let (audit, function) = (format!("mig_audit_{tag}"), format!("mig_rows_{tag}"));
    // A "query" whose function writes as it reads.
    client
        .batch_execute(&format!(
            "CREATE TABLE {audit} (at timestamptz);
             CREATE FUNCTION {function}() RETURNS SETOF {table} AS $$
             BEGIN
               INSERT INTO {audit} VALUES (now());
               RETURN QUERY SELECT * FROM {table};
             END $$ LANGUAGE plpgsql;"
        ))
        .await
        .unwrap();
    let out = worker_command(&config, 0)
        .args([
            "migrate-postgres",
            "--source",
            &pg_url(),
            "--dry-run",
            "--query",
        ])
        .arg(format!("SELECT * FROM {function}()"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "migrate-postgres --query {function}(): {:?}\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let written: i64 = client
        .query_one(&format!("SELECT count(*) FROM {audit}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "the migration wrote to the source");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("read-only transaction"), "{stderr}");
    client
        .batch_execute(&format!(
            "DROP FUNCTION {function}(); DROP TABLE {audit}; DROP TABLE {table};"
        ))
        .await
        .unwrap();
}
