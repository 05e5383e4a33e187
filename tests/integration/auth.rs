//! Client authentication against the configured users.

use crate::harness::{connect, value, Cluster};

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_per_method() {
    let c = Cluster::start(1).await;
    // SCRAM (default), md5 and cleartext users log in with the right password...
    for (user, pw) in [
        ("app", "secret"),
        ("md5user", "md5pass"),
        ("plain", "plainpass"),
    ] {
        let client = connect(&c.url_for(user, pw))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(value(&client, "SELECT 1").await, "1");
    }
    // ...and are refused with 28P01 otherwise; unknown users look the same.
    for (user, pw) in [
        ("app", "wrong"),
        ("md5user", "x"),
        ("plain", "x"),
        ("nobody", "secret"),
    ] {
        let e = connect(&c.url_for(user, pw))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in"));
        assert_eq!(code(&e), "28P01", "{user}");
    }
    // Unknown database: 3D000.
    let url = format!(
        "host=127.0.0.1 port={} user=app password=secret dbname=other",
        c.port()
    );
    let e = connect(&url).await.err().unwrap();
    assert_eq!(code(&e), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_in_config() {
    use pieskieo::frontend::auth::ScramSecret;
    let verifier = ScramSecret::from_password("hunter2", b"0123456789abcdef", 4096).verifier();
    assert!(!verifier.contains("hunter2"));
    let tables = format!(
        "{}\n[[users]]\nname = \"v\"\nscram_verifier = \"{verifier}\"\n",
        crate::harness::TABLES
    );
    let c = Cluster::start_with(1, &tables).await;
    let ok = connect(&c.url_for("v", "hunter2")).await.unwrap();
    assert_eq!(value(&ok, "SELECT 2").await, "2");
    assert!(connect(&c.url_for("v", "hunter3")).await.is_err());
}

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::harness::{field, ProxyProcess, RawClient, Servers, TABLES};

/// The message of a refused login.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Sends a startup packet for `user`; the client and the proxy's first
/// Authentication request code.
async fn start_login(port: u16, user: &str) -> (RawClient, i32) {
    let mut c = RawClient::start(port, &[("user", user), ("database", "app")]).await;
    let (t, b) = c.read().await;
    assert_eq!(t, b'R', "{user}: expected an authentication request");
    (c, i32::from_be_bytes(b[..4].try_into().unwrap()))
}

/// Runs a SCRAM exchange for `user` with a made-up proof: the salt the
/// proxy offered, and the (SQLSTATE, message) it refused with.
async fn scram_with_bad_proof(port: u16, user: &str) -> (String, (String, String)) {
    let (mut c, code) = start_login(port, user).await;
    assert_eq!(code, 10, "{user}: SCRAM is asked for");
    let first = "n,,n=,r=abcdefghijklmnopqrstuvwx";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first.as_bytes());
    c.send(b'p', &body).await;
    let (t, b) = c.read().await;
    assert_eq!((t, &b[..4]), (b'R', &11i32.to_be_bytes()[..]), "{user}");
    let server_first = String::from_utf8(b[4..].to_vec()).unwrap();
    let attr = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    assert_eq!(attr("i="), "4096");
    let fin = format!("c=biws,r={},p={}", attr("r="), B64.encode([7u8; 32]));
    c.send(b'p', fin.as_bytes()).await;
    let (t, b) = c.read().await;
    assert_eq!(t, b'E', "{user}: the bad proof is refused");
    (attr("s="), (field(&b, b'C'), field(&b, b'M')))
}

fn refused(user: &str) -> (String, String) {
    (
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_get_a_mock_exchange_like_a_real_one() {
    let c = Cluster::start(1).await;
    // An unknown user is offered the same salt at every attempt, as a real
    // user is (a fresh random one would give it away), and each user its own.
    let (ghost, e) = scram_with_bad_proof(c.port(), "ghost").await;
    assert_eq!(e, refused("ghost"));
    let (again, _) = scram_with_bad_proof(c.port(), "ghost").await;
    assert_eq!(ghost, again, "the mock salt is stable per user");
    let (other, _) = scram_with_bad_proof(c.port(), "ghost2").await;
    assert_ne!(ghost, other, "the mock salt depends on the name");
    assert_eq!(B64.decode(&ghost).unwrap().len(), 16);
    // A real user fails a bad proof the same way.
    let (app, e) = scram_with_bad_proof(c.port(), "app").await;
    assert_eq!(e, refused("app"));
    assert_eq!(app, scram_with_bad_proof(c.port(), "app").await.0);
}

/// psql as `user` with no password anywhere (`-w`: never prompt).
fn psql_without_password(port: u16, user: &str, sql: &str) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .arg(format!("host=127.0.0.1 port={port} user={user} dbname=app"))
        .args(["-X", "-w", "-At", "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .expect("psql is installed (apt-get install -y postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TRUST_USER: &str = "\n[[users]]\nname = \"trusted\"\nauth = \"trust\"\n";
const TRUST_WARNING: &str = "trust users log in without a password";

/// Waits up to 5 s for `pred` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(mut pred: impl FnMut() -> F) -> bool {
    for _ in 0..50 {
        if pred().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// The proxy's log without its colour codes.
fn log_of(p: &ProxyProcess) -> String {
    let raw = std::fs::read_to_string(&p.log).unwrap();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_users_need_no_password_and_are_warned_about_off_loopback() {
    let servers = Servers::start(1);
    let with_trust = format!("{TABLES}{TRUST_USER}");

    // On loopback: no warning; the trust user logs in with no password, the others still need theirs.
    let local = ProxyProcess::start_with(&servers, &with_trust, "").await;
    let (ok, out, err) = psql_without_password(local.port, "trusted", "SELECT 40 + 2");
    assert!(ok, "{err}");
    assert_eq!(out, "42");
    let (ok, _, err) = psql_without_password(local.port, "app", "SELECT 1");
    assert!(!ok && err.contains("no password supplied"), "{err}");
    let url = |u: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={u} password={pw} dbname=app",
            local.port
        )
    };
    let e = connect(&url("app", "wrong")).await.err().unwrap();
    assert_eq!(code(&e), "28P01");
    assert_eq!(
        value(&connect(&url("app", "secret")).await.unwrap(), "SELECT 3").await,
        "3"
    );
    assert!(
        !log_of(&local).contains(TRUST_WARNING),
        "{}",
        log_of(&local)
    );

    // On every interface: warned at startup, naming the user.
    let open = ProxyProcess::start_on(&servers, "0.0.0.0", &with_trust, "").await;
    let (ok, out, err) = psql_without_password(open.port, "trusted", "SELECT 7");
    assert!(ok && out == "7", "{err}");
    let log = log_of(&open);
    let line = log
        .lines()
        .find(|l| l.contains(TRUST_WARNING))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("WARN") && line.contains("trusted") && line.contains("0.0.0.0"),
        "{line}"
    );

    // A trust user added by a reload is warned about too.
    let reloaded = ProxyProcess::start_on(&servers, "0.0.0.0", TABLES, "").await;
    assert!(!log_of(&reloaded).contains(TRUST_WARNING));
    let (ok, _, _) = psql_without_password(reloaded.port, "trusted", "SELECT 1");
    assert!(!ok, "not a user yet");
    let text = std::fs::read_to_string(&reloaded.config).unwrap();
    std::fs::write(&reloaded.config, format!("{text}{TRUST_USER}")).unwrap();
    reloaded.signal("HUP");
    assert!(
        eventually(|| async { log_of(&reloaded).contains(TRUST_WARNING) }).await,
        "{}",
        log_of(&reloaded)
    );
    let (ok, out, err) = psql_without_password(reloaded.port, "trusted", "SELECT 8");
    assert!(ok && out == "8", "{err}");
}

/// Roles on the lookup shard, one per kind of stored password or refusal.
const ROLES: &str = "
SET password_encryption = 'scram-sha-256';
CREATE ROLE bob LOGIN PASSWORD 'bobpw';
CREATE ROLE nolog NOLOGIN PASSWORD 'x';
CREATE ROLE expired LOGIN PASSWORD 'x' VALID UNTIL '2001-01-01';
CREATE ROLE nopw LOGIN;
CREATE ROLE app LOGIN PASSWORD 'shardpw';
SET password_encryption = 'md5';
CREATE ROLE carol LOGIN PASSWORD 'carolpw';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_checks_the_password_stored_on_the_shard() {
    let c = Cluster::start_with(1, &format!("{TABLES}\n[auth_query]\n")).await;
    let shard = c.shard(0).await;
    shard.batch_execute(ROLES).await.unwrap();
    let stored = |role: &'static str| {
        let shard = &shard;
        async move {
            value(
                shard,
                &format!("SELECT left(rolpassword, 5) FROM pg_authid WHERE rolname = '{role}'"),
            )
            .await
        }
    };
    assert_eq!(stored("bob").await, "SCRAM");
    assert!(stored("carol").await.starts_with("md5"));

    // The right password logs in, and statements run (on the shard's own user).
    for (user, pw) in [("bob", "bobpw"), ("carol", "carolpw")] {
        let client = connect(&c.url_for(user, pw))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(value(&client, "SELECT 40 + 2").await, "42");
        assert_eq!(value(&client, "SELECT current_user").await, "postgres");
    }
    // The exchange follows what is stored: SCRAM for bob, md5 (with a salt) for carol.
    assert_eq!(start_login(c.port(), "bob").await.1, 10);
    assert_eq!(start_login(c.port(), "carol").await.1, 5);

    // A wrong password, and every user without a usable password, get
    // PostgreSQL's own refusal; the misses after a full SCRAM exchange.
    for (user, pw) in [
        ("bob", "wrong"),
        ("carol", "wrong"),
        ("nobody", "x"),
        ("nolog", "x"),
        ("expired", "x"),
        ("nopw", "x"),
    ] {
        let e = connect(&c.url_for(user, pw)).await.err().unwrap();
        assert_eq!((code(&e), message(&e)), refused(user), "{user}");
    }
    for user in ["nobody", "nolog", "expired", "nopw"] {
        let (salt, e) = scram_with_bad_proof(c.port(), user).await;
        assert_eq!(e, refused(user));
        assert_eq!(salt, scram_with_bad_proof(c.port(), user).await.0, "{user}");
    }
    // A configured user is checked against the configuration, not the shard.
    assert!(connect(&c.url_for("app", "shardpw")).await.is_err());
    connect(&c.url_for("app", "secret")).await.unwrap();

    // Nothing is cached: a change on the shard counts from the next login.
    shard
        .batch_execute("ALTER ROLE bob PASSWORD 'bobpw2'; DROP ROLE carol")
        .await
        .unwrap();
    let e = connect(&c.url_for("bob", "bobpw")).await.err().unwrap();
    assert_eq!((code(&e), message(&e)), refused("bob"));
    connect(&c.url_for("bob", "bobpw2")).await.unwrap();
    let e = connect(&c.url_for("carol", "carolpw")).await.err().unwrap();
    assert_eq!((code(&e), message(&e)), refused("carol"));
    shard
        .batch_execute("ALTER ROLE bob VALID UNTIL '2001-01-01'")
        .await
        .unwrap();
    let e = connect(&c.url_for("bob", "bobpw2")).await.err().unwrap();
    assert_eq!((code(&e), message(&e)), refused("bob"));
}

/// A lookup role and function as PgBouncer's documentation suggests, so
/// the proxy's lookup needs no superuser.
const LOOKUP: &str = "
CREATE ROLE pieskieo_auth LOGIN PASSWORD 'lookuppw';
CREATE FUNCTION public.pieskieo_lookup(u name, OUT usename name, OUT passwd text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
  $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = u AND rolcanlogin $$;
REVOKE ALL ON FUNCTION public.pieskieo_lookup(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pieskieo_lookup(name) TO pieskieo_auth;
CREATE ROLE bob LOGIN PASSWORD 'one';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_lookup_failures_are_clear_and_reload_moves_it() {
    let servers = Servers::start(2);
    servers
        .connect(1)
        .await
        .batch_execute(LOOKUP)
        .await
        .unwrap();
    let settings = |password: &str| {
        format!(
            "{TABLES}\n[auth_query]\nshard = 1\nuser = \"pieskieo_auth\"\npassword = \"{password}\"\nquery = \"SELECT usename, passwd FROM public.pieskieo_lookup($1)\"\n"
        )
    };
    let proxy = ProxyProcess::start_with(&servers, &settings("lookuppw"), "").await;
    let url = |u: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={u} password={pw} dbname=app",
            proxy.port
        )
    };
    // Looked up on shard 1 as the lookup role, through its function.
    let bob = connect(&url("bob", "one")).await.unwrap();
    assert_eq!(value(&bob, "SELECT 5").await, "5");
    let e = connect(&url("bob", "two")).await.err().unwrap();
    assert_eq!((code(&e), message(&e)), refused("bob"));
    // The client cannot tell a missing role from a wrong password; the log can.
    let e = connect(&url("nobody", "x")).await.err().unwrap();
    assert_eq!((code(&e), message(&e)), refused("nobody"));
    let log = log_of(&proxy);
    assert!(
        log.lines().any(|l| l.contains("authentication failed")
            && l.contains("user=nobody")
            && l.contains("no valid password is set")),
        "{log}"
    );

    // The lookup role's own login failing is an error of the proxy's, not a wrong password.
    let config = proxy.config.clone();
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, base.replace("lookuppw", "wrongpw")).unwrap();
    proxy.signal("HUP");
    assert!(
        eventually(|| async {
            matches!(connect(&url("bob", "one")).await, Err(e) if code(&e) == "XX000")
        })
        .await
    );
    let e = connect(&url("bob", "one")).await.err().unwrap();
    assert!(message(&e).contains("auth_query failed"), "{}", message(&e));
    std::fs::write(&config, &base).unwrap();
    proxy.signal("HUP");
    assert!(eventually(|| async { connect(&url("bob", "one")).await.is_ok() }).await);

    // The lookup shard down: 08006, the log names the shard; configured users are unaffected.
    servers.servers[1].stop("immediate").unwrap();
    let e = connect(&url("bob", "one")).await.err().unwrap();
    assert_eq!(code(&e), "08006", "{e:?}");
    assert_eq!(
        message(&e),
        "could not look up the password of user \"bob\": the auth_query shard is unavailable"
    );
    let log = log_of(&proxy);
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("auth_query lookup failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("shard=1") && line.contains("bob"), "{line}");
    assert!(
        !log.contains("lookuppw") && !log.contains("wrongpw"),
        "no password in the log"
    );
    let app = connect(&url("app", "secret")).await.unwrap();
    assert_eq!(value(&app, "SELECT 6").await, "6");

    // A reload moves the lookup to shard 0 (defaults: its own user and the catalog).
    servers
        .connect(0)
        .await
        .batch_execute("CREATE ROLE bob LOGIN PASSWORD 'zero'")
        .await
        .unwrap();
    let start = base.find("[auth_query]").unwrap();
    let end = base[start..].find("\n[").map_or(base.len(), |i| start + i);
    std::fs::write(
        &config,
        format!("{}[auth_query]\n{}", &base[..start], &base[end + 1..]),
    )
    .unwrap();
    proxy.signal("HUP");
    assert!(eventually(|| async { connect(&url("bob", "zero")).await.is_ok() }).await);
}
