//! Reading a CA file the configuration names (`shards[].sslrootcert`): the
//! certificates a shard's certificate must chain to.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls::RootCertStore;

/// The trust anchors in the PEM file at `path`: at least one, and every
/// certificate in it usable as one. The error says what is wrong with the
/// file (the caller names the field).
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // Read first, so a missing or unreadable file says so in the OS's words.
    let pem = std::fs::read(path).map_err(|e| at(&e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| at(&e))?;
    if certs.is_empty() {
        return Err(at(
            &"no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if bad > 0 {
        return Err(at(&format!(
            "{bad} certificate(s) in it cannot be parsed as X.509"
        )));
    }
    Ok(roots)
}
