//! Security integration tests (issue #4, "Security"): the real `score-worker` binary against a
//! nats-server with user/password or token auth and TLS (certificates generated here with openssl),
//! and against Cassandra with password authentication and permissions (the `secure` set of
//! environments.toml, or the one `SCORE_WORKER_*_PORT` name, started by the tests if it is not up).
//! Wrong credentials must give a clear error and a non-zero exit; no secret may appear in logs, `check`
//! output or `/metrics`. [`refusals`]: what the worker does when that database refuses its writes;
//! [`roles`]: the worker under the DML-only role and `migrate` under the DDL role of deploy/README.md.
//!
//! `cargo test --test security`

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

mod harness;
mod refusals;
mod roles;

use std::path::Path;
use std::time::Duration;

use harness::*;
use score_worker::config::{Config, NatsAuth};
use secrecy::SecretString;
use support::{assert_final_state, publish, wallet_of, Event, Profiles, Timing, KEYSPACE};
use uuid::Uuid;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The worker's NATS side: URL, auth and TLS, both as environment for the binary and as the
/// library configuration the test's own publisher uses.
struct NatsSide {
    url: String,
    user: Option<(String, String)>,
    token: Option<String>,
    nkey_seed: Option<String>,
    creds: Option<String>,
    ca: Option<String>,
    client_cert: Option<(String, String)>,
}

impl NatsSide {
    fn plain(port: u16) -> NatsSide {
        NatsSide {
            url: format!("nats://127.0.0.1:{port}"),
            user: None,
            token: None,
            nkey_seed: None,
            creds: None,
            ca: None,
            client_cert: None,
        }
    }

    fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    fn token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    fn nkey(mut self, seed: &str) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    fn creds(mut self, file: &Path) -> Self {
        self.creds = Some(file.to_string_lossy().into_owned());
        self
    }

    fn tls(mut self, ca: &Path, client: Option<&Leaf>) -> Self {
        self.ca = Some(ca.to_string_lossy().into_owned());
        self.client_cert = client.map(|c| {
            (
                c.cert.to_string_lossy().into_owned(),
                c.key.to_string_lossy().into_owned(),
            )
        });
        self
    }

    fn apply(&self, env: &mut Env, config: &mut Config) {
        set(env, "NATS__URL", &self.url);
        config.nats.url = self.url.clone();
        if let Some((user, password)) = &self.user {
            set(env, "NATS__AUTH__USER", user);
            set(env, "NATS__AUTH__PASSWORD", password);
            config.nats.auth = NatsAuth::UserPassword {
                user: user.clone(),
                password: SecretString::from(password.clone()),
            };
        }
        if let Some(token) = &self.token {
            set(env, "NATS__AUTH__TOKEN", token);
            config.nats.auth = NatsAuth::Token(SecretString::from(token.clone()));
        }
        if let Some(seed) = &self.nkey_seed {
            set(env, "NATS__AUTH__NKEY_SEED", seed);
            config.nats.auth = NatsAuth::NKey(SecretString::from(seed.clone()));
        }
        if let Some(file) = &self.creds {
            set(env, "NATS__AUTH__CREDENTIALS_FILE", file);
            config.nats.auth = NatsAuth::CredentialsFile(file.into());
        }
        if let Some(ca) = &self.ca {
            set(env, "NATS__TLS__ENABLED", "true");
            set(env, "NATS__TLS__CA_FILE", ca);
            config.nats.tls.enabled = true;
            config.nats.tls.ca_file = Some(ca.into());
        }
        if let Some((cert, key)) = &self.client_cert {
            set(env, "NATS__TLS__CERT_FILE", cert);
            set(env, "NATS__TLS__KEY_FILE", key);
            config.nats.tls.cert_file = Some(cert.into());
            config.nats.tls.key_file = Some(key.into());
        }
    }
}

/// Environment and matching library configuration for the binary: `nats`, and the security
/// Cassandra as `cql_user`/`cql_password`, JSON logs.
fn worker_setup(nats: &NatsSide, cql_user: &str, cql_password: &str) -> (Env, Config) {
    let mut env = Env::new();
    let mut config = Config::defaults();
    nats.apply(&mut env, &mut config);
    set(&mut env, "SCYLLA__NODES", format!("[\"{}\"]", cql_node()));
    set(&mut env, "SCYLLA__KEYSPACE", KEYSPACE);
    set(&mut env, "SCYLLA__USER", cql_user);
    set(&mut env, "SCYLLA__PASSWORD", cql_password);
    set(&mut env, "LOG__FORMAT", "json");
    set(&mut env, "BATCH__LINGER", "50ms");
    set(&mut env, "SHUTDOWN__TIMEOUT", "15s");
    config.scylla.nodes = vec![cql_node()];
    config.scylla.keyspace = KEYSPACE.into();
    config.scylla.user = cql_user.into();
    config.scylla.password = SecretString::from(cql_password.to_string());
    (env, config)
}

/// Asserts a clean failure: exit code 1 (not 0, not a panic's 101), every `needles` in the output.
fn assert_clear_failure(what: &str, out: &Output, needles: &[&str]) {
    // Shown with `--nocapture`: the exact messages an operator gets.
    eprintln!("===== {what}:\n{out}");
    assert!(
        !out.all().contains("panicked"),
        "{what}: the binary panicked instead of reporting an error\n{out}"
    );
    assert_eq!(out.code(), Some(1), "{what}: exit code\n{out}");
    let all = out.all();
    for needle in needles {
        assert!(
            all.contains(needle),
            "{what}: the output should mention {needle:?}\n{out}"
        );
    }
}

fn events_for(board: &str, n: usize) -> Vec<Event> {
    support::events_on(board, "sec", n, Profiles::Cycle(5), Timing::Random)
}

/// The library's NATS client, with the worker's rustls provider (aws-lc-rs) as the process default.
async fn publisher(config: &Config) -> (async_nats::Client, async_nats::jetstream::Context) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = score_worker::nats::connect(&config.nats, None)
        .await
        .expect("the test's publisher connects with the worker's NATS settings");
    let js = score_worker::nats::jetstream(client.clone(), &config.nats);
    (client, js)
}

/// A nats-server of the test's own where user `svc` logs in with `password`.
fn password_server(password: &str, tls: Option<&ServerTls>) -> NatsServer {
    NatsServer::start(
        &ServerAuth::UserPassword {
            user: "svc".into(),
            password: password.into(),
        },
        tls,
    )
}

/// [`password_server`] without TLS, and the worker's side logging in as `svc` with `password`.
fn svc_with(server_password: &str, password: &str) -> (NatsServer, NatsSide) {
    let server = password_server(server_password, None);
    let nats = NatsSide::plain(server.port).user("svc", password);
    (server, nats)
}

/// `migrate` with `env`, one at a time (migrations race on the schema), asserted to exit 0.
async fn migrate_ok(what: &str, env: &Env, dir: &Path) -> Output {
    let migrate = {
        let _one_at_a_time = MIGRATE.lock().await;
        run_to_end(&["migrate"], env, dir, Duration::from_secs(180)).await
    };
    assert_eq!(migrate.code(), Some(0), "{what}: migrate\n{migrate}");
    migrate
}

/// The worker's `/metrics` once `done` holds for it, within 60 s.
async fn metrics_when(what: &str, worker: &Running, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = http_get(worker.http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 60 s; metrics:\n{text}\nstderr:\n{}",
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one message of the dead-letter stream: asserts its reason and original message id, returns
/// its error header.
async fn the_dead_letter(
    js: &async_nats::jetstream::Context,
    config: &Config,
    reason: &str,
    msg_id: &str,
) -> String {
    let letters = support::read_stream(js, &config.nats.deadletter_stream, 1).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    let headers = letters[0].headers.as_ref().expect("headers");
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(
        header(score_worker::deadletter::REASON).as_deref(),
        Some(reason)
    );
    assert_eq!(
        header(score_worker::deadletter::ORIGINAL_MSG_ID).as_deref(),
        Some(msg_id)
    );
    header(score_worker::deadletter::ERROR).unwrap_or_default()
}

/// The refused-credential cases, each driven by [`assert_refused`]: `what` completes "run …" in the
/// failure messages, `nats` and the Cassandra `(user, password)` make the worker's environment,
/// `secrets` may show in no output, and each of `commands` must fail clearly with the words its
/// output must contain (`run` is spawned and must exit by itself; any other command is run to its
/// end). Every command exits 1 without a panic, names its cause and echoes no secret; the outputs
/// come back in the order of `commands` for the case's own further checks.
async fn assert_refused(
    what: &str,
    (nats, cql): (&NatsSide, (&str, &str)),
    secrets: &[&str],
    commands: &[(&str, &[&str])],
) -> Vec<Output> {
    let dir = tempfile::tempdir().unwrap();
    let (env, _) = worker_setup(nats, cql.0, cql.1);
    let mut outputs = Vec::new();
    for (command, needles) in commands {
        let out = if *command == "run" {
            Running::spawn(&env, dir.path())
                .wait_exit(RUN_TIMEOUT)
                .await
        } else {
            run_to_end(&[command], &env, dir.path(), RUN_TIMEOUT).await
        };
        assert_clear_failure(&format!("{command} {what}"), &out, needles);
        assert_no_secret(&format!("`{command}` output"), &out.all(), secrets);
        outputs.push(out);
    }
    outputs
}

/// The words a NATS server's refusal of a login shows in `run` and in `check`.
const NATS_REFUSED: &[(&str, &[&str])] = &[
    (
        "run",
        &["cannot connect to NATS at", "authorization violation"],
    ),
    (
        "check",
        &[
            "[FAIL] cannot connect to NATS at",
            "authorization violation",
        ],
    ),
];

/// The processed-messages counter of `/metrics`.
const PROCESSED: &str = "score_worker_messages_processed_total";

/// Publishes `n` events on a new board named after `tag` with the library's client; returns them.
async fn publish_board(tag: &str, config: &Config, n: usize) -> Vec<Event> {
    let board = format!("sec-{tag}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let events = events_for(&board, n);
    let (client, js) = publisher(config).await;
    for e in &events {
        publish(&js, config, e, &e.event_id).await;
    }
    client.flush().await.unwrap();
    events
}

/// `migrate`, `run`, publish, the rows land, `check` passes, SIGTERM exits 0; the secrets appear in
/// none of the outputs nor in `/metrics`.
async fn happy_path(name: &str, nats: &NatsSide, nats_secret: &str, role: &CqlRole) {
    let dir = tempfile::tempdir().unwrap();
    let (env, config) = worker_setup(nats, &role.user, &role.password);
    let secrets = [nats_secret, role.password.as_str()];
    let migrate = migrate_ok(name, &env, dir.path()).await;
    assert_no_secret("`migrate` output", &migrate.all(), &secrets);

    // Debug logs included: operators turn them on, and secrets must not appear there either.
    let mut run_env = env.clone();
    run_env.push(("RUST_LOG".into(), "debug".into()));
    let mut worker = Running::spawn(&run_env, dir.path());
    worker.wait_ready(READY_TIMEOUT).await;
    let events = publish_board(name, &config, 30).await;
    let metrics = metrics_when(
        &format!("{name}: {} events processed", events.len()),
        &worker,
        |t| metric(t, PROCESSED) >= Some(events.len() as f64),
    )
    .await;
    assert_serves_no_secret(&worker, &metrics, &secrets).await;

    let session = cql_session(&role.user, &role.password).await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
    assert_check_redacts(name, nats, &env, dir.path(), &secrets).await;

    let stopped = worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(
        stopped.code(),
        Some(0),
        "{name}: run after SIGTERM\n{stopped}"
    );
    assert!(
        stopped.stderr.contains("NATS connected"),
        "{name}: expected JSON logs on stderr\n{stopped}"
    );
    assert_no_secret("`run` logs", &stopped.all(), &secrets);
}

/// `/metrics` (connected to NATS), `/readyz` and `/healthz` show none of `secrets`.
async fn assert_serves_no_secret(worker: &Running, metrics: &str, secrets: &[&str]) {
    assert!(
        metrics.contains("score_worker_nats_connected 1"),
        "{metrics}"
    );
    assert_no_secret("/metrics", metrics, secrets);
    for path in ["/readyz", "/healthz"] {
        let (_, body) = http_get(worker.http, path).await.unwrap_or_default();
        assert_no_secret(path, &body, secrets);
    }
}

/// `check` passes and shows each password and token it was given as `***`.
async fn assert_check_redacts(
    name: &str,
    nats: &NatsSide,
    env: &Env,
    dir: &Path,
    secrets: &[&str],
) {
    let check = run_to_end(&["check"], env, dir, RUN_TIMEOUT).await;
    assert_eq!(check.code(), Some(0), "{name}: check\n{check}");
    let shows = |text: &str, what: &str| {
        assert_check_shows(&check, text, &format!("{name}: check should show {what}"))
    };
    shows("scylla.password=***", "the database password redacted");
    if nats.user.is_some() {
        shows("nats.auth.password=***", "the NATS password redacted");
    }
    if nats.token.is_some() {
        shows("nats.auth.token=***", "the NATS token redacted");
    }
    assert_no_secret("`check` output", &check.all(), secrets);
}

/// Asserts that `check`'s stdout shows `text`; the failure says `why` and shows the output.
fn assert_check_shows(check: &Output, text: &str, why: &str) {
    assert!(check.stdout.contains(text), "{why}\n{check}");
}

/// The output names a certificate problem.
fn assert_names_the_certificate(what: &str, out: &Output) {
    let text = out.all().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("unknownissuer"),
        "{what}: the error should name the certificate problem\n{out}"
    );
}

// ------------------------------------------------------------------------------------------ the tests

/// 1. NATS with user/password and TLS (server verifies a client certificate), Cassandra with a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_passwords_on_both_sides_work_and_leak_no_secret() {
    let role = CqlRole::create().await;
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let (server_cert, client_cert) = (ca.server(), ca.client());
    let nats_password = secret("nats");
    let server = password_server(
        &nats_password,
        Some(&ServerTls::new(&ca, &server_cert, true)),
    );
    let nats = NatsSide::plain(server.port)
        .user("svc", &nats_password)
        .tls(&ca.cert, Some(&client_cert));
    happy_path("tls", &nats, &nats_password, &role).await;
    assert_no_secret("nats-server log", &server.log(), &[&role.password]);
    role.drop_role().await;
}

/// 1b. The same without TLS: password auth on both sides (isolates the password paths from TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_on_both_sides_without_tls_work_and_leak_no_secret() {
    let role = CqlRole::create().await;
    let nats_password = secret("nats");
    let (_server, nats) = svc_with(&nats_password, &nats_password);
    happy_path("plain", &nats, &nats_password, &role).await;
    role.drop_role().await;
}

/// 2. A wrong NATS password: `run` and `check` fail with exit 1 and say "authorization violation";
/// neither password is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_nats_password_fails_clearly_without_echoing_it() {
    let role = CqlRole::create().await;
    let (right, wrong) = (secret("nats-right"), secret("nats-wrong"));
    let (_server, nats) = svc_with(&right, &wrong);
    let outputs = assert_refused(
        "with a wrong NATS password",
        (&nats, (&role.user, &role.password)),
        &[&right, &wrong, &role.password],
        NATS_REFUSED,
    )
    .await;
    let still = "the database check should still pass";
    assert_check_shows(&outputs[1], "[ok]   database reachable", still);
    role.drop_role().await;
}

/// 3. A wrong Cassandra password: `run`, `migrate` and `check` fail with exit 1 and say
/// "Authentication failed"; no password is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cassandra_password_fails_clearly_without_echoing_it() {
    let role = CqlRole::create().await;
    let (nats_password, wrong) = (secret("nats"), secret("cql-wrong"));
    let (_server, nats) = svc_with(&nats_password, &nats_password);
    let needles: &[&str] = &[
        "cannot connect to the database",
        "Authentication failed",
        "bad credentials",
    ];
    let outputs = assert_refused(
        "with a wrong Cassandra password",
        (&nats, (&role.user, &wrong)),
        &[&nats_password, &wrong, &role.password],
        &[("run", needles), ("migrate", needles), ("check", needles)],
    )
    .await;
    let check = &outputs[2];
    let failed = "the database check should fail";
    assert_check_shows(check, "[FAIL] cannot connect to the database", failed);
    let still = "the NATS check should still pass";
    assert_check_shows(check, "[ok]   NATS reachable", still);
    role.drop_role().await;
}

/// 4. TLS required, but the worker trusts a different CA: a clear certificate error, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_untrusted_server_certificate_fails_clearly() {
    let role = CqlRole::create().await;
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let other = Ca::new(pki.path(), "other");
    let server_cert = ca.server();
    let nats_password = secret("nats");
    let server = password_server(
        &nats_password,
        Some(&ServerTls::new(&ca, &server_cert, false)),
    );
    let nats = NatsSide::plain(server.port)
        .user("svc", &nats_password)
        .tls(&other.cert, None);
    let outputs = assert_refused(
        "trusting the wrong CA",
        (&nats, (&role.user, &role.password)),
        &[&nats_password, &role.password],
        &[
            ("run", &["cannot connect to NATS at"]),
            ("check", &["[FAIL] cannot connect to NATS at"]),
        ],
    )
    .await;
    assert_names_the_certificate("run trusting the wrong CA", &outputs[0]);
    role.drop_role().await;
}

/// The worker's role's connections as Cassandra lists them (`system_views.clients`): encrypted or
/// not, and the TLS protocol.
async fn connections_of(role: &CqlRole) -> Vec<(bool, Option<String>)> {
    let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
    let rows = admin
        .query_unpaged(
            "SELECT username, ssl_enabled, ssl_protocol FROM system_views.clients",
            (),
        )
        .await
        .expect("system_views.clients")
        .into_rows_result()
        .unwrap();
    rows.rows::<(Option<String>, Option<bool>, Option<String>)>()
        .unwrap()
        .map(Result::unwrap)
        .filter(|(user, _, _)| user.as_deref() == Some(role.user.as_str()))
        .map(|(_, ssl, protocol)| (ssl.unwrap_or(false), protocol))
        .collect()
}

/// 5. Token auth over TLS (CA only, no client certificate): works end to end and leaks nothing; a
/// wrong token fails clearly.
/// Database TLS: the pair's Cassandra takes TLS on its CQL port (optionally, so the other tests can
/// stay plaintext). With `scylla.tls` and the pair's CA the worker connects, and Cassandra lists every
/// connection of its role as encrypted (`system_views.clients`); trusting another CA fails clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tls_is_used_and_an_untrusted_ca_fails_clearly() {
    let role = CqlRole::create().await;
    let token = secret("token");
    let server = NatsServer::start(&ServerAuth::Token(token.clone()), None);
    let nats = NatsSide::plain(server.port).token(&token);
    let dir = tempfile::tempdir().unwrap();
    let (mut env, _) = worker_setup(&nats, &role.user, &role.password);
    set(&mut env, "SCYLLA__TLS__ENABLED", "true");
    set(&mut env, "SCYLLA__TLS__CA_FILE", cql_ca());
    let secrets = [token.as_str(), role.password.as_str()];
    migrate_ok("migrate over TLS", &env, dir.path()).await;
    let mut worker = Running::spawn(&env, dir.path());
    worker.wait_ready(READY_TIMEOUT).await;
    let mine = connections_of(&role).await;
    let out = worker.terminate(RUN_TIMEOUT).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_no_secret("`run` output", &out.all(), &secrets);
    assert!(
        !mine.is_empty() && mine.iter().all(|(ssl, _)| *ssl),
        "every connection of the worker's role is encrypted: {mine:?}"
    );

    let pki = tempfile::tempdir().unwrap();
    let other = Ca::new(pki.path(), "other");
    set(
        &mut env,
        "SCYLLA__TLS__CA_FILE",
        other.cert.to_string_lossy(),
    );
    let check = run_to_end(&["check"], &env, dir.path(), RUN_TIMEOUT).await;
    assert_clear_failure(
        "check trusting another CA for the database",
        &check,
        &["cannot connect to the database at"],
    );
    assert_names_the_certificate("check trusting another CA for the database", &check);
    eprintln!(
        "database TLS: {} connections of the worker's role, all encrypted ({:?})",
        mine.len(),
        mine.first().and_then(|(_, p)| p.clone())
    );
    role.drop_role().await;
}

/// Credentials-file (JWT) authentication: a nats-server in operator mode trusting one operator,
/// whose account signed the worker's user; the `.creds` file holds the user JWT and seed. A user
/// signed by an account the operator never signed is refused clearly; no seed shows in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_file_auth_works_and_an_untrusted_user_fails_clearly() {
    let role = CqlRole::create().await;
    let operator = Operator::new();
    let server = NatsServer::start(&ServerAuth::Operator(operator.server_config()), None);
    let files = tempfile::tempdir().unwrap();
    let (creds, seed) = user_creds(&operator.account, "score-worker");
    let good = files.path().join("worker.creds");
    std::fs::write(&good, creds).unwrap();
    let nats = NatsSide::plain(server.port).creds(&good);
    happy_path("creds", &nats, &seed, &role).await;

    let stranger = nkeys::KeyPair::new_account();
    let (creds, other_seed) = user_creds(&stranger, "intruder");
    let bad = files.path().join("intruder.creds");
    std::fs::write(&bad, creds).unwrap();
    let nats = NatsSide::plain(server.port).creds(&bad);
    assert_refused(
        "with a user the operator does not trust",
        (&nats, (&role.user, &role.password)),
        &[&seed, &other_seed, &role.password],
        &NATS_REFUSED[..1],
    )
    .await;
    role.drop_role().await;
}

/// NKey authentication: the server knows only the user's public key; the worker signs its nonce
/// with the seed from `nats.auth.nkey_seed`. Another user's seed is refused, clearly, and no seed
/// shows in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth_works_and_a_wrong_seed_fails_clearly() {
    let role = CqlRole::create().await;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("a user seed");
    let server = NatsServer::start(&ServerAuth::NKey(user.public_key()), None);
    let nats = NatsSide::plain(server.port).nkey(&seed);
    happy_path("nkey", &nats, &seed, &role).await;

    let other = nkeys::KeyPair::new_user().seed().expect("a user seed");
    let nats = NatsSide::plain(server.port).nkey(&other);
    let outputs = assert_refused(
        "with another user's NKey seed",
        (&nats, (&role.user, &role.password)),
        &[&seed, &other, &role.password],
        &NATS_REFUSED[..1],
    )
    .await;
    eprintln!(
        "nkey: the server trusts {}; another seed: exit {:?}",
        user.public_key(),
        outputs[0].code()
    );
    role.drop_role().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_over_tls_works_and_a_wrong_token_fails_clearly() {
    let role = CqlRole::create().await;
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let server_cert = ca.server();
    let token = secret("token");
    let server = NatsServer::start(
        &ServerAuth::Token(token.clone()),
        Some(&ServerTls::new(&ca, &server_cert, false)),
    );
    let nats = NatsSide::plain(server.port)
        .token(&token)
        .tls(&ca.cert, None);
    happy_path("token", &nats, &token, &role).await;

    let wrong = secret("token-wrong");
    let nats = NatsSide::plain(server.port)
        .token(&wrong)
        .tls(&ca.cert, None);
    assert_refused(
        "with a wrong token",
        (&nats, (&role.user, &role.password)),
        &[&token, &wrong, &role.password],
        NATS_REFUSED,
    )
    .await;
    role.drop_role().await;
}

/// 6. Credentials embedded in `nats.url` (`nats://user:password@host`, a form NATS clients commonly
/// accept; async-nats 0.51 parses but ignores them, so the connection is refused) are secrets too:
/// `check` and the logs must not print them, whether the password is right or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_nats_url_are_not_echoed() {
    let role = CqlRole::create().await;
    let dir = tempfile::tempdir().unwrap();
    let right = secret("url-right");
    let wrong = secret("url-wrong");
    let server = password_server(&right, None);
    let secrets = [right.as_str(), wrong.as_str(), role.password.as_str()];
    for password in [&right, &wrong] {
        let mut nats = NatsSide::plain(server.port);
        nats.url = format!("nats://svc:{password}@127.0.0.1:{}", server.port);
        let (env, _) = worker_setup(&nats, &role.user, &role.password);
        let check = run_to_end(&["check"], &env, dir.path(), RUN_TIMEOUT).await;
        assert_no_secret(
            "`check` output (password in nats.url)",
            &check.all(),
            &secrets,
        );
        let run = Running::spawn(&env, dir.path());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let out = format!("{}\n{}", run.stdout(), run.stderr());
        drop(run);
        assert_no_secret("`run` output (password in nats.url)", &out, &secrets);
    }
    role.drop_role().await;
}

/// 7. Configuration errors name the key but never echo a secret value (no servers needed).
#[tokio::test]
async fn invalid_configuration_never_echoes_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let typo = secret("typo");
    let cases: Vec<(&str, &str, String)> = vec![
        // A misspelt secret key: rejected as unknown, value not shown.
        ("NATS__AUTH__PASWORD", "pasword", typo.clone()),
        // Secrets that look like numbers or booleans (all-digit passwords and PINs exist).
        ("SCYLLA__PASSWORD", "", "839201746551".into()),
        ("NATS__AUTH__PASSWORD", "", "7734019925".into()),
        ("NATS__AUTH__TOKEN", "", "5550192837".into()),
    ];
    for (key, needle, value) in cases {
        let mut env = Env::new();
        set(&mut env, key, value.clone());
        if key == "NATS__AUTH__PASSWORD" {
            set(&mut env, "NATS__AUTH__USER", "svc");
        }
        set(&mut env, "NATS__URL", "nats://127.0.0.1:1");
        set(&mut env, "SCYLLA__NODES", "[\"127.0.0.1:1\"]");
        set(&mut env, "NATS__CONNECT_TIMEOUT", "1s");
        set(&mut env, "SCYLLA__CONNECT_TIMEOUT", "1s");
        let out = run_to_end(&["check"], &env, dir.path(), RUN_TIMEOUT).await;
        assert_ne!(out.code(), Some(0), "{key}: {out}");
        assert!(out.all().contains(needle), "{key}: {out}");
        assert_no_secret(
            &format!("the output for {key}={value}"),
            &out.all(),
            &[&value],
        );
    }
}

/// 9. One row the database refuses does not fail its flush-mates (issue 9.3). The database: the
/// password-auth Cassandra, where guardrails apply to an ordinary role such as the worker's, with
/// `maximum_timestamp_fail_threshold: 3d` (ScyllaDB's `restrict_future_timestamp`). The poison: one
/// event 30 days ahead, let through unclamped by a widened `validation.max_clock_skew` and
/// `validation.max_ahead_of_arrival` (otherwise it would be written at its arrival + 2 s); the flush is split until
/// it is found, it alone is dead-lettered as `write_rejected` with the database's message, the other
/// 29 events land. Statements go out one by one (`scylla.batch_max_bytes = 0`): Cassandra 5.0 was seen
/// to apply this guardrail to single statements only, not inside batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_dead_lettered_alone_and_its_flush_mates_land() {
    let role = CqlRole::create().await;
    let nats_password = secret("nats");
    let (_server, nats) = svc_with(&nats_password, &nats_password);
    let dir = tempfile::tempdir().unwrap();
    let (mut env, mut config) = worker_setup(&nats, &role.user, &role.password);
    set(&mut env, "VALIDATION__MAX_CLOCK_SKEW", "3650d");
    set(&mut env, "VALIDATION__MAX_AHEAD_OF_ARRIVAL", "3650d");
    set(&mut env, "BATCH__LINGER", "500ms");
    set(&mut env, "SCYLLA__BATCH_MAX_BYTES", "0");
    config.validation.max_clock_skew = Duration::from_secs(3650 * 86_400);
    config.validation.max_ahead_of_arrival = config.validation.max_clock_skew;
    migrate_ok("poison", &env, dir.path()).await;
    let mut worker = Running::spawn(&env, dir.path());
    worker.wait_ready(READY_TIMEOUT).await;

    let (mut events, poison, (client, js)) = publish_around_a_poison(&config).await;
    let rejected = "score_worker_dead_letters_total{reason=\"write_rejected\"}";
    let text = metrics_when("settled", &worker, |t| {
        metric(t, PROCESSED) >= Some(29.0) && metric(t, rejected) >= Some(1.0)
    })
    .await;
    assert_eq!(metric(&text, PROCESSED), Some(29.0));
    assert_eq!(metric(&text, rejected), Some(1.0));
    let error = the_dead_letter(&js, &config, "write_rejected", &poison.event_id).await;
    assert!(
        error.contains("maximum_timestamp"),
        "the database's message is in the error header: {error}"
    );
    eprintln!("write_rejected: 29 events written, the poison dead-lettered with: {error}");
    let session = cql_session(&role.user, &role.password).await;
    events.retain(|e| e.profile != poison.profile);
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
    let stopped = worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(stopped.code(), Some(0), "{stopped}");
    drop(client);
    role.drop_role().await;
}

/// Publishes 29 good events on a new board with, after the tenth, one of a new profile 30 days
/// ahead (the poison); returns the good events, the poison and the publisher.
async fn publish_around_a_poison(
    config: &Config,
) -> (
    Vec<Event>,
    Event,
    (async_nats::Client, async_nats::jetstream::Context),
) {
    let board = format!("sec-poison-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let events = events_for(&board, 29);
    let mut poison = events_for(&board, 1).remove(0);
    poison.profile = Uuid::new_v4();
    poison.wallet = wallet_of(poison.profile);
    poison.at_micros = chrono::Utc::now().timestamp_micros() + 30 * 86_400 * 1_000_000;
    let (client, js) = publisher(config).await;
    for e in events.iter().take(10) {
        publish(&js, config, e, &e.event_id).await;
    }
    publish(&js, config, &poison, &poison.event_id).await;
    for e in events.iter().skip(10) {
        publish(&js, config, e, &e.event_id).await;
    }
    client.flush().await.unwrap();
    (events, poison, (client, js))
}
