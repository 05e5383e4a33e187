//! TLS from the proxy to its shards: shards with `ssl = on` and a test CA
//! (certificates made with openssl, as in `tls.rs`), each `sslmode` on the
//! relayed connections and the control plane alike, checked on the shard
//! itself through `pg_stat_ssl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{
    config_text, connect, exec, rows, value, Cluster, ProxyProcess, Servers, TABLES,
};
use crate::tls::{make_ca, make_server_cert};

/// Certificates of one test, removed with it.
struct Certs(PathBuf);

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("pieskieo-shardtls-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Certs(dir)
    }

    fn ca(self, name: &str) -> Certs {
        make_ca(&self.0, name);
        self
    }

    fn server(self, ca: &str, name: &str, san: &str) -> Certs {
        make_server_cert(&self.0, ca, name, san);
        self
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` shards with `ssl = on`, serving the certificate `{name}.crt`.
fn ssl_shards(n: usize, certs: &Certs, name: &str) -> Servers {
    let (crt, key) = (
        certs.path(&format!("{name}.crt")),
        certs.path(&format!("{name}.key")),
    );
    Servers::start_with_files(
        n,
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "'server.crt'"),
            ("ssl_key_file", "'server.key'"),
        ],
        &[("server.crt", &crt), ("server.key", &key)],
    )
}

/// The test configuration over `ports`, every shard with `sslmode` (and
/// `sslrootcert` when given); the admin console for `plain`; JSON logs.
fn tls_config(ports: &[u16], sslmode: &str, rootcert: Option<&Path>) -> String {
    let tables = format!("admin_users = [\"plain\"]\nlog_format = \"json\"\n{TABLES}");
    let mut shard = format!("pool_size = 8\nsslmode = \"{sslmode}\"\n");
    if let Some(ca) = rootcert {
        shard.push_str(&format!("sslrootcert = \"{}\"\n", ca.display()));
    }
    config_text(ports, &tables).replace("pool_size = 8\n", &shard)
}

/// The proxy's sessions on shard `i` as the shard sees them:
/// (application_name, ssl) of every other client backend.
async fn proxy_sessions(c: &Cluster, i: usize) -> Vec<(String, bool)> {
    let shard = c.shard(i).await;
    rows(
        &shard,
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
         ORDER BY 1",
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap_or_default(),
            r[1].as_deref() == Some("t"),
        )
    })
    .collect()
}

/// Asserts that the proxy holds both relayed (`pieskieo`) and control
/// (`pieskieo-control`) sessions on shard `i`, every one with `ssl` as given.
async fn assert_sessions(c: &Cluster, i: usize, ssl: bool) {
    let sessions = proxy_sessions(c, i).await;
    for kind in ["pieskieo", "pieskieo-control"] {
        assert!(
            sessions.iter().any(|(app, _)| app == kind),
            "shard {i}: no {kind} session: {sessions:?}"
        );
    }
    assert!(
        sessions.iter().all(|(_, s)| *s == ssl),
        "shard {i}: every session of the proxy should have ssl = {ssl}: {sessions:?}"
    );
}

/// The rows of an admin console command.
async fn console(c: &Cluster, command: &str) -> Vec<Vec<Option<String>>> {
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=plain password=plainpass dbname=pieskieo",
        c.port()
    ))
    .await
    .unwrap();
    rows(&admin, command).await
}

/// A counter of `SHOW STATS`.
async fn stat(c: &Cluster, name: &str) -> String {
    console(c, "SHOW STATS")
        .await
        .iter()
        .find(|r| r.first().and_then(|x| x.as_deref()) == Some(name))
        .and_then(|r| r.get(1).cloned().flatten())
        .unwrap_or_default()
}

/// The SQLSTATE and message of a statement expected to fail.
async fn failure(c: &tokio_postgres::Client, sql: &str) -> (String, String) {
    match c.simple_query(sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => server_error(e),
    }
}

fn server_error(e: tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The error a client of the proxy at `url` gets when its shard cannot be
/// reached: at connect (the proxy asks the default shard for its
/// parameters then) or at its first statement.
async fn refused(url: &str) -> (String, String) {
    match connect(url).await {
        Err(e) => server_error(e),
        Ok(client) => failure(&client, "SELECT 1").await,
    }
}

/// Starts a proxy over `shards` with `sslmode` (and `sslrootcert`), whose
/// first statement must fail with 08006: the message, and the proxy's log.
async fn refused_under(shards: &Servers, sslmode: &str, ca: Option<&Path>) -> (String, String) {
    let p = ProxyProcess::start_text(shards, &tls_config(&shards.ports(), sslmode, ca)).await;
    let (code, message) = refused(&p.url()).await;
    assert_eq!(code, "08006", "{sslmode}: {message}");
    let log = std::fs::read_to_string(&p.log).unwrap();
    (message, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_encrypts_statements_two_phase_commit_and_the_control_plane() {
    let certs = Certs::new("full")
        .ca("ca")
        .server("ca", "good", "DNS:localhost,IP:127.0.0.1");
    let shards = ssl_shards(2, &certs, "good");
    let text = tls_config(&shards.ports(), "verify-full", Some(&certs.path("ca.crt")));
    let c = Cluster::over(shards, &text).await;

    let keys = c.accounts(2, 100).await;
    let client = c.client().await;
    let before: u64 = stat(&c, "commits (two-phase)").await.parse().unwrap();
    exec(
        &client,
        &format!(
            "BEGIN; UPDATE accounts SET balance = balance - 30 WHERE id = {}; \
             UPDATE accounts SET balance = balance + 30 WHERE id = {}; COMMIT",
            keys[0], keys[1]
        ),
    )
    .await;
    let after: u64 = stat(&c, "commits (two-phase)").await.parse().unwrap();
    assert_eq!(after, before + 1, "the transfer committed with 2PC");
    assert_eq!(crate::harness::balance(&client, keys[0]).await, "70");
    assert_eq!(crate::harness::balance(&client, keys[1]).await, "130");
    assert_eq!(c.shard_sum("SELECT sum(balance) FROM accounts").await, 200);
    for i in 0..2 {
        assert_eq!(crate::harness::prepared(&c.shard(i).await).await, 0);
        assert_sessions(&c, i, true).await;
    }
    // SHOW SHARDS says how each shard is reached.
    for r in console(&c, "SHOW SHARDS").await {
        assert_eq!(r[6].as_deref(), Some("verify-full"), "{r:?}");
    }

    // A cancel reaches the shard too (over TLS, as the shard's sessions).
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let (code, _) = failure(&client, "SELECT pg_sleep(30)").await;
    assert_eq!(code, "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_shard_without_tls_and_prefer_uses_it_plain() {
    let shards = Servers::start(1);

    // require: the statement fails with 08006 naming the shard and why,
    // and the proxy's log says the same.
    let (message, log) = refused_under(&shards, "require", None).await;
    assert!(
        message.contains("shard 0") && message.contains("does not support TLS"),
        "{message}"
    );
    assert!(message.contains("sslmode is require"), "{message}");
    assert!(
        log.lines()
            .any(|l| l.contains("shard 0") && l.contains("does not support TLS")),
        "{log}"
    );
    // The control plane refused it too (at startup): nothing plain went out.
    assert!(
        log.lines()
            .any(|l| l.contains("unreachable at startup")
                && l.contains("server does not support TLS")),
        "{log}"
    );

    // prefer: plain, everything works.
    let text = tls_config(&shards.ports(), "prefer", None);
    let c = Cluster::over(shards, &text).await;
    c.accounts(1, 5).await;
    let client = c.client().await;
    assert_eq!(
        value(&client, "SELECT sum(balance) FROM accounts").await,
        "5"
    );
    assert_sessions(&c, 0, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_uses_tls_when_the_shard_offers_it() {
    let certs = Certs::new("prefer")
        .ca("ca")
        .server("ca", "good", "DNS:localhost,IP:127.0.0.1");
    let shards = ssl_shards(1, &certs, "good");
    // No sslmode at all: the default.
    let text = config_text(&shards.ports(), TABLES);
    assert!(!text.contains("sslmode"));
    let c = Cluster::over(shards, &text).await;
    c.accounts(1, 5).await;
    assert_eq!(
        value(&c.client().await, "SELECT count(*) FROM accounts").await,
        "1"
    );
    assert_sessions(&c, 0, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let certs = Certs::new("foreign").ca("ca").ca("other").server(
        "other",
        "foreign",
        "DNS:localhost,IP:127.0.0.1",
    );
    let shards = ssl_shards(1, &certs, "foreign");
    let ca = certs.path("ca.crt");

    for mode in ["verify-ca", "verify-full"] {
        let (message, log) = refused_under(&shards, mode, Some(&ca)).await;
        assert!(
            message.contains("shard 0")
                && message.contains("not signed by a CA in sslrootcert")
                && message.contains(&ca.display().to_string()),
            "{mode}: {message}"
        );
        assert!(
            log.lines().any(|l| !l.contains("unreachable at startup")
                && l.contains("shard 0")
                && l.contains("not signed by a CA in sslrootcert")),
            "{mode}: {log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("unreachable at startup") && l.contains("UnknownIssuer")),
            "{mode}: the control plane checks the certificate too: {log}"
        );
    }
    // Nothing of the proxy's got through, encrypted or not.
    let shard = shards.connect(0).await;
    let n = value(
        &shard,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pieskieo%'",
    )
    .await;
    assert_eq!(n, "0");
    let decisions = value(
        &shard,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'pieskieo'",
    )
    .await;
    assert_eq!(decisions, "0", "the control plane never set up the shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_is_refused_by_verify_full_and_accepted_by_verify_ca() {
    let certs = Certs::new("name")
        .ca("ca")
        .server("ca", "misnamed", "DNS:elsewhere.example");
    let shards = ssl_shards(1, &certs, "misnamed");
    let ca = certs.path("ca.crt");

    let (message, log) = refused_under(&shards, "verify-full", Some(&ca)).await;
    assert!(
        message.contains("shard 0")
            && message.contains("does not name the configured host")
            && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(
        log.lines().any(|l| l.contains("unreachable at startup")
            && l.contains("certificate not valid for name")),
        "{log}"
    );

    // verify-ca checks the chain only: served, encrypted.
    let text = tls_config(&shards.ports(), "verify-ca", Some(&ca));
    let c = Cluster::over(shards, &text).await;
    c.accounts(1, 5).await;
    assert_eq!(
        value(&c.client().await, "SELECT count(*) FROM accounts").await,
        "1"
    );
    assert_sessions(&c, 0, true).await;
}

/// `pieskieo check` names the field for each bad TLS setting of a shard.
#[test]
fn check_names_the_shard_tls_field() {
    let certs = Certs::new("check");
    std::fs::write(certs.path("empty.pem"), "not a certificate\n").unwrap();
    let base = config_text(&[5432], TABLES);
    let with = |extra: &str| base.replace("pool_size = 8\n", &format!("pool_size = 8\n{extra}\n"));
    let check = |text: String| {
        let path = certs.path("pieskieo.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pieskieo"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = certs.path("missing.crt");
    let empty = certs.path("empty.pem");
    let cases = [
        (
            with("sslmode = \"verify-full\""),
            vec!["shards[0].sslrootcert", "needs `sslrootcert`"],
        ),
        (
            with("sslmode = \"verify-ca\""),
            vec!["shards[0].sslrootcert", "verify-ca"],
        ),
        (
            with(&format!(
                "sslmode = \"verify-full\"\nsslrootcert = \"{}\"",
                missing.display()
            )),
            vec!["shards[0].sslrootcert", "missing.crt", "No such file"],
        ),
        (
            with(&format!(
                "sslmode = \"require\"\nsslrootcert = \"{}\"",
                empty.display()
            )),
            vec!["shards[0].sslrootcert", "no PEM certificate"],
        ),
        (
            with("sslmode = \"prefer\"\nsslrootcert = \"/x.crt\""),
            vec!["shards[0].sslrootcert", "sslmode is prefer"],
        ),
        (
            with("sslmode = \"verify_full\""),
            vec!["sslmode", "verify-full"],
        ),
    ];
    for (text, wanted) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "{out}");
        for w in wanted {
            assert!(out.contains(w), "{w:?} not in: {out}");
        }
    }
    let (ok, out) = check(with("sslmode = \"disable\""));
    assert!(ok, "{out}");
}
