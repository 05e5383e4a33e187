//! TLS for clients: psql with sslmode=verify-full against a test CA, and a
//! proxy that requires TLS refusing a plain client.

use std::path::Path;
use std::process::Command;

use crate::harness::{Cluster, TABLES};

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `{name}.crt` and `{name}.key`.
pub fn make_ca(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subject = format!("/CN=Pieskieo Test CA {name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt,
            "-days", "2", "-subj", &subject,
        ],
    );
}

/// A server certificate `{name}.crt` / `{name}.key` in `dir`, signed by the
/// CA `{ca}.crt`, valid for `san` (subjectAltName syntax, e.g.
/// `DNS:localhost,IP:127.0.0.1`).
pub fn make_server_cert(dir: &Path, ca: &str, name: &str, san: &str) {
    let (crt, key, csr, ext) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.cnf"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// A CA, and a server certificate it signs for localhost and 127.0.0.1.
fn make_certs(dir: &Path) {
    make_ca(dir, "ca");
    make_server_cert(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
}

fn psql(port: u16, sslmode: &str, ca: &Path) -> (bool, String) {
    let conn = format!(
        "host=localhost port={port} dbname=app user=app sslmode={sslmode} sslrootcert={}",
        ca.display()
    );
    let out = Command::new("psql")
        .arg(conn)
        .args(["-X", "-A", "-t", "-c", "\\conninfo", "-c", "SELECT 40 + 2"])
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_and_required_tls() {
    let certs = std::env::temp_dir().join(format!("pieskieo-tls-{}", std::process::id()));
    make_certs(&certs);
    let tls = |require: bool| {
        format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nrequire = {require}\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display()
        )
    };
    let ca = certs.join("ca.crt");

    // TLS offered: verify-full succeeds and the session is encrypted.
    let c = Cluster::start_txn(1, TABLES, &tls(false)).await;
    let (ok, out) = psql(c.port(), "verify-full", &ca);
    assert!(ok, "{out}");
    assert!(out.contains("SSL connection"), "{out}");
    assert!(out.contains("42"), "{out}");
    // Plain clients are still welcome when TLS is not required.
    let (ok, out) = psql(c.port(), "disable", &ca);
    assert!(ok && !out.contains("SSL connection"), "{out}");
    drop(c);

    // TLS required: a plain client is refused, a TLS one served.
    let c = Cluster::start_txn(1, TABLES, &tls(true)).await;
    let (ok, out) = psql(c.port(), "disable", &ca);
    assert!(!ok && out.contains("requires TLS"), "{out}");
    let (ok, out) = psql(c.port(), "require", &ca);
    assert!(ok && out.contains("SSL connection"), "{out}");
    let _ = std::fs::remove_dir_all(&certs);
}
