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
