//! TLS to the shards: a shard's `sslmode` and `sslrootcert` made into one
//! rustls client configuration, shared by the relayed connections and the
//! control plane, and the certificate check it carries.
//!
//! rustls' own verifier always checks the host name; libpq's `verify-ca`
//! checks the chain only, and `prefer`/`require` (without a CA) nothing, so
//! one small verifier covers the three levels with rustls' own functions.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::{Shard, SslMode};

/// What is checked of a shard's certificate.
#[derive(Debug)]
enum Check {
    /// Nothing (`prefer`, `require` without `sslrootcert`): encrypted,
    /// not authenticated.
    Nothing,
    /// The chain ends at one of these roots (`verify-ca`, `require` with
    /// `sslrootcert`).
    Chain(Arc<RootCertStore>),
    /// The chain, and the certificate names the host (`verify-full`).
    ChainAndName(Arc<RootCertStore>),
}

#[derive(Debug)]
struct ShardVerifier {
    check: Check,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ShardVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let (roots, name) = match &self.check {
            Check::Nothing => return Ok(ServerCertVerified::assertion()),
            Check::Chain(roots) => (roots, false),
            Check::ChainAndName(roots) => (roots, true),
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)?;
        if name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake's signatures are checked whatever the level: the
    // server proves it holds the key of the certificate it sent.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The rustls configuration for `shard`, or `None` under `sslmode =
/// "disable"`. Reads `sslrootcert`; the error names the file.
pub fn client_config(shard: &Shard) -> Result<Option<Arc<ClientConfig>>, String> {
    let roots = |path: &Option<std::path::PathBuf>| -> Result<Option<Arc<RootCertStore>>, String> {
        match path {
            Some(p) => Ok(Some(Arc::new(crate::config::read_roots(p)?))),
            None => Ok(None),
        }
    };
    let check = match (shard.sslmode, roots(&shard.sslrootcert)?) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(r)) => Check::Chain(r),
        (SslMode::VerifyFull, Some(r)) => Check::ChainAndName(r),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "sslmode {} needs sslrootcert",
                shard.sslmode.as_str()
            ))
        }
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = ShardVerifier {
        check,
        algs: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // As libpq 17 does; servers before PostgreSQL 17 ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A failed handshake in words an operator acts on, with rustls' own.
pub fn describe_handshake_error(e: &std::io::Error, rootcert: Option<&Path>) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
    let hint = match (inner, rootcert) {
        (Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)), Some(ca)) => {
            format!(
                "its certificate is not signed by a CA in sslrootcert {}: ",
                ca.display()
            )
        }
        (
            Some(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )),
            _,
        ) => "its certificate does not name the configured host: ".to_string(),
        _ => String::new(),
    };
    format!("{hint}{e}")
}
