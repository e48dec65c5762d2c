//! What the security tests need beyond the shared harness: throw-away certificates (openssl CLI), a
//! private nats-server with auth and TLS, the password-authenticated Cassandra pair (the `secure` set, or the
//! ports `SCORE_WORKER_*_PORT` name), roles with the grants a test needs, and the real `score-worker` binary as
//! a child process whose output is captured and searched for secrets.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use score_worker::config::Config;
use score_worker::store;
use scylla::client::session::Session;
use secrecy::SecretString;
use tempfile::TempDir;
use tokio::sync::{Mutex, OnceCell};
use uuid::Uuid;

/// The worker binary under test: cargo's, or `SCORE_WORKER_SECURITY_BIN` (e.g. a release build).
pub fn bin() -> String {
    std::env::var("SCORE_WORKER_SECURITY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_score-worker").to_string())
}

/// The security pair: the `secure` set of environments.toml (the one `make security` starts), moved by
/// `SCORE_WORKER_LOCAL`, `SCORE_WORKER_*_PORT` and `SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE` when set
/// (a pair of one's own).
fn pair() -> xtask::environments::Environment {
    xtask::environments::Environment::load("secure").expect("environments.toml")
}

/// The password-authenticated Cassandra of the security pair (see [`ensure_secure_cassandra`]).
pub fn cql_node() -> String {
    pair().cql_node()
}

/// The pair's state directory.
fn pair_local() -> String {
    pair().state_dir.display().to_string()
}

/// The CA that signed that Cassandra's certificate (its CQL port takes TLS too).
pub fn cql_ca() -> String {
    format!("{}/tls/ca.pem", pair_local())
}

pub const CQL_SUPERUSER: (&str, &str) = ("cassandra", "cassandra");

/// A distinctive secret that cannot appear in any output by accident.
pub fn secret(what: &str) -> String {
    format!("s3cr3t-{what}-{}", Uuid::new_v4().simple())
}

/// Asserts that none of `secrets` occurs in `text` (named `what` in the failure).
pub fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        if let Some(at) = text.find(s) {
            let mut start = at.saturating_sub(300);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (at + s.len() + 300).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            panic!(
                "a secret ({s}) appears in {what}:\n...{}...",
                &text[start..end]
            );
        }
    }
}

// ------------------------------------------------------------------------------------------ processes

/// Waits for `child` at most `timeout` without blocking the test runtime; None when it takes longer.
async fn wait_bounded_async(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------------------------------- openssl

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("/usr/bin/openssl");
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    crate::support::output_ok(&mut cmd, &format!("openssl {args:?}"));
}

/// `openssl req` `mode` (`-x509` for a self-signed certificate, `-new` for a request) with a new
/// unencrypted P-256 key written to `key` and the certificate or request to `out`; `more` options.
fn openssl_req_new_key(dir: &Path, mode: &str, (key, out): (&str, &str), more: &[&str]) {
    let mut args = vec!["req", mode, "-newkey", "ec", "-pkeyopt"];
    args.extend(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]);
    args.extend(["-out", out]);
    args.extend(more);
    openssl(dir, &args);
}

/// A throw-away certificate authority in a directory of its own.
pub struct Ca {
    pub dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
    serial: std::cell::Cell<u32>,
}

/// A certificate and its key, signed by a [`Ca`].
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// Creates a CA named `name` under `parent/name`.
    pub fn new(parent: &Path, name: &str) -> Ca {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl_req_new_key(
            &dir,
            "-x509",
            ("ca.key", "ca.pem"),
            &[
                "-days",
                "2",
                "-subj",
                &format!("/CN=score-worker test CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            dir,
            serial: std::cell::Cell::new(1),
        }
    }

    fn issue(&self, name: &str, cn: &str, extensions: &str) -> Leaf {
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(&ext, extensions).unwrap();
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let subject = format!("/CN={cn}");
        openssl_req_new_key(&self.dir, "-new", (&key, &csr), &["-subj", &subject]);
        self.serial.set(self.serial.get() + 1);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &self.cert.to_string_lossy(),
                "-CAkey",
                &self.key.to_string_lossy(),
                "-set_serial",
                &self.serial.get().to_string(),
                "-days",
                "2",
                "-extfile",
                &ext.to_string_lossy(),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        Leaf {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Leaf {
        self.issue(
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate for the worker.
    pub fn client(&self) -> Leaf {
        self.issue(
            "client",
            "score-worker",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
    }
}

// --------------------------------------------------------------------------------------- nats-server

/// How the private nats-server authenticates clients.
pub enum ServerAuth {
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// One user, known by its NKey public key (`U...`): clients sign the server's nonce with the seed.
    NKey(String),
    /// Operator (JWT) mode: the configuration lines of an [`Operator`] (trusted operator, preloaded accounts).
    Operator(String),
}

/// TLS of the private nats-server.
pub struct ServerTls<'a> {
    pub ca: &'a Ca,
    pub cert: &'a Leaf,
    /// Require and verify client certificates.
    pub verify: bool,
}

impl<'a> ServerTls<'a> {
    /// TLS with `cert` signed by `ca`; `verify`: require and verify client certificates.
    pub fn new(ca: &'a Ca, cert: &'a Leaf, verify: bool) -> ServerTls<'a> {
        ServerTls { ca, cert, verify }
    }
}

/// A nats-server process of this test (JetStream in a temp dir, auth, optional TLS) on a free
/// loopback port; killed and cleaned up on drop.
pub struct NatsServer {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl NatsServer {
    pub fn start(auth: &ServerAuth, tls: Option<&ServerTls>) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let mut last_log = String::new();
        // The port is free when chosen but may be taken before nats-server binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let q = |p: &Path| format!("{:?}", p.to_string_lossy());
            let mut conf = format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: {}, max_memory_store: 64MB, max_file_store: 256MB }}\n",
                q(&dir.path().join("js"))
            );
            conf += &match auth {
                ServerAuth::UserPassword { user, password } => {
                    format!("authorization {{ user: {user:?}, password: {password:?} }}\n")
                }
                ServerAuth::Token(token) => format!("authorization {{ token: {token:?} }}\n"),
                ServerAuth::NKey(public) => {
                    format!("authorization {{ users: [ {{ nkey: {public:?} }} ] }}\n")
                }
                ServerAuth::Operator(lines) => lines.clone(),
            };
            if let Some(tls) = tls {
                conf += &format!(
                    "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: {}, timeout: 5 }}\n",
                    q(&tls.cert.cert),
                    q(&tls.cert.key),
                    q(&tls.ca.cert),
                    tls.verify
                );
            }
            let conf_path = dir.path().join("nats.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = dir.path().join("nats.log");
            let mut child = Command::new("nats-server")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(File::create(&log).unwrap())
                .stderr(Stdio::from(
                    File::options().append(true).open(&log).unwrap(),
                ))
                .spawn()
                .expect("nats-server on PATH (apt-get install nats-server)");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait().unwrap().is_some() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                let ready = std::fs::read_to_string(&log)
                    .map(|l| l.contains("Server is ready"))
                    .unwrap_or(false);
                if ready && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return NatsServer {
                        port,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nats-server did not become ready within 15 s:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("nats-server failed to start 5 times; last log:\n{last_log}");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------------------------------- Cassandra

static PAIR_UP: OnceCell<()> = OnceCell::const_new();
/// `migrate` of the shared keyspace runs one at a time.
pub static MIGRATE: Mutex<()> = Mutex::const_new(());

/// Starts (or reuses) the security pair (password-authenticated Cassandra with TLS) through the xtask
/// library. A server that cannot be started fails the test.
pub async fn ensure_secure_cassandra() {
    PAIR_UP
        .get_or_init(|| async {
            let up = tokio::task::spawn_blocking(|| pair().services(&["up"])).await;
            let up = up.expect("services task");
            if let Err(e) = up {
                panic!("could not start the security pair ({}): {e}", cql_node());
            }
        })
        .await;
}

/// A session on the security Cassandra as `user`/`password`.
pub async fn cql_session(user: &str, password: &str) -> Session {
    let mut config = Config::defaults();
    config.scylla.nodes = vec![cql_node()];
    config.scylla.user = user.into();
    config.scylla.password = SecretString::from(password.to_string());
    store::connect(&config.scylla)
        .await
        .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", cql_node()))
}

/// A login role created for one test with a distinctive password; dropped by [`CqlRole::drop_role`].
pub struct CqlRole {
    pub user: String,
    pub password: String,
}

impl CqlRole {
    /// A role that may do anything in every keyspace (create the keyspace, migrate, run).
    pub async fn create() -> CqlRole {
        CqlRole::create_with(&["ALL PERMISSIONS ON ALL KEYSPACES"]).await
    }

    /// A role with exactly `grants` (each `<permission> ON <resource>`, as after `GRANT`).
    pub async fn create_with(grants: &[&str]) -> CqlRole {
        ensure_secure_cassandra().await;
        let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
        let user = format!("sw_sec_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let password = secret("cql");
        admin
            .query_unpaged(
                format!("CREATE ROLE {user} WITH PASSWORD = '{password}' AND LOGIN = true"),
                (),
            )
            .await
            .expect("create role");
        let role = CqlRole { user, password };
        for grant in grants {
            role.grant(grant).await;
        }
        role
    }

    /// `GRANT <what> TO` this role, as the superuser.
    pub async fn grant(&self, what: &str) {
        self.admin(&format!("GRANT {what} TO {}", self.user)).await;
    }

    /// `REVOKE <what> FROM` this role, as the superuser.
    pub async fn revoke(&self, what: &str) {
        self.admin(&format!("REVOKE {what} FROM {}", self.user))
            .await;
    }

    async fn admin(&self, cql: &str) {
        let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
        admin
            .query_unpaged(cql.to_string(), ())
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }

    pub async fn drop_role(self) {
        let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
        let _ = admin
            .query_unpaged(format!("DROP ROLE IF EXISTS {}", self.user), ())
            .await;
    }
}

// ------------------------------------------------------------------------------------ the worker binary

/// Environment for the binary: `SCORE_WORKER__...` pairs.
pub type Env = Vec<(String, String)>;

/// Sets `key` (e.g. `NATS__AUTH__PASSWORD`) in `env`, replacing an earlier value.
pub fn set(env: &mut Env, key: &str, value: impl Into<String>) {
    let key = format!("SCORE_WORKER__{key}");
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
}

fn command(args: &[&str], env: &Env, dir: &Path, name: &str) -> (Command, PathBuf, PathBuf) {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap());
    // Only what the test sets: nothing inherited from the developer's shell.
    for (key, _) in std::env::vars() {
        if key.starts_with("SCORE_WORKER__") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    // A panic shows its message, not a page of backtrace.
    cmd.env("RUST_BACKTRACE", "0");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    (cmd, stdout, stderr)
}

/// The result of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `score-worker ARGS` to completion (at most `timeout`, else killed and failed).
pub async fn run_to_end(args: &[&str], env: &Env, dir: &Path, timeout: Duration) -> Output {
    let name = format!("{}-{}", args.join("_"), Uuid::new_v4().simple());
    let (mut cmd, stdout, stderr) = command(args, env, dir, &name);
    let mut child = cmd.spawn().expect("spawn score-worker");
    let status = wait_bounded_async(&mut child, timeout).await;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout: read(&stdout),
            stderr: read(&stderr),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "score-worker {args:?} did not exit within {timeout:?} (hang; killed)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read(&stdout),
                read(&stderr)
            );
        }
    }
}

/// `score-worker run` as a child process; killed on drop.
pub struct Running {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    pub http: SocketAddr,
}

impl Running {
    /// Starts `run` with `env` plus an HTTP listener on a free port.
    pub fn spawn(env: &Env, dir: &Path) -> Running {
        let mut env = env.clone();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        set(&mut env, "HTTP__LISTEN", http.to_string());
        let (mut cmd, stdout, stderr) = command(&["run"], &env, dir, "run");
        let child = cmd.spawn().expect("spawn score-worker run");
        Running {
            child: Some(child),
            stdout,
            stderr,
            http,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn output_so_far(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits (bounded) until `/readyz` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "score-worker run exited ({status}) before it was ready\n{}",
                    self.output_so_far()
                );
            }
            if self.stderr().contains("HTTP listening") {
                if let Some((200, _)) = http_get(self.http, "/readyz").await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "score-worker run not ready within {timeout:?}\n{}",
                self.output_so_far()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) for the process to exit on its own, e.g. after a start-up failure.
    pub async fn wait_exit(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().unwrap();
        let status = wait_bounded_async(&mut child, timeout).await;
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "score-worker run did not exit within {timeout:?} (hang; killed)\n{}",
                self.output_so_far()
            );
        };
        Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub async fn terminate(self, timeout: Duration) -> Output {
        let pid = self.child.as_ref().unwrap().id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(timeout).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` over HTTP/1.1; `None` when nothing answers within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    crate::support::http_try(addr, path, Duration::from_secs(5)).await
}

/// The value of an unlabelled metric in Prometheus text.
pub use crate::support::sample_value as metric;

/// The sum of every series of metric `name` that carries the label pair `label` (`kind="permanent"`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix(name)?.strip_prefix('{')?.split_once("} ")?;
            labels.split(',').any(|kv| kv == label).then_some(())?;
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

// ------------------------------------------------------------------------------- NATS JWT (operator mode)

/// A NATS operator with a system account and one JetStream-enabled account, as signed JWTs (what
/// `nsc` makes), for credentials-file authentication: the server trusts the operator and has the
/// account JWTs preloaded; a user's `.creds` file holds its JWT (signed by the account) and seed.
pub struct Operator {
    operator: nkeys::KeyPair,
    system: nkeys::KeyPair,
    pub account: nkeys::KeyPair,
}

impl Operator {
    pub fn new() -> Operator {
        Operator {
            operator: nkeys::KeyPair::new_operator(),
            system: nkeys::KeyPair::new_account(),
            account: nkeys::KeyPair::new_account(),
        }
    }

    /// The server configuration lines: trusted operator, system account, memory resolver.
    pub fn server_config(&self) -> String {
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
        });
        let account = |kp: &nkeys::KeyPair, name: &str, limits: serde_json::Value| {
            jwt(
                &self.operator,
                &kp.public_key(),
                name,
                serde_json::json!({"type": "account", "version": 2, "limits": limits}),
            )
        };
        let operator = jwt(
            &self.operator,
            &self.operator.public_key(),
            "score-worker-test",
            serde_json::json!({"type": "operator", "version": 2, "system_account": self.system.public_key()}),
        );
        format!(
            "operator: {operator:?}\nsystem_account: {:?}\nresolver: MEMORY\nresolver_preload: {{\n  {:?}: {:?}\n  {:?}: {:?}\n}}\n",
            self.system.public_key(),
            self.system.public_key(),
            account(&self.system, "SYS", serde_json::json!({"subs": -1, "data": -1, "payload": -1, "conn": -1})),
            self.account.public_key(),
            account(&self.account, "APP", unlimited),
        )
    }
}

/// A user of `account` (whoever holds that key): the contents of its `.creds` file, and its seed.
pub fn user_creds(account: &nkeys::KeyPair, name: &str) -> (String, String) {
    let user = nkeys::KeyPair::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let seed = user.seed().expect("a user seed");
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    (creds, seed)
}

/// A NATS JWT: `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims, the issuer's ed25519 signature of both.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "jti": Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("an ed25519 signature");
    format!("{signed}.{}", b64.encode(signature))
}
