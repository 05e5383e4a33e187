//! Client authentication: SCRAM-SHA-256 (server side, RFC 5802/7677 as
//! PostgreSQL speaks it), md5 and cleartext, against the configured users.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BufMut;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthMethod, User};
use crate::error::ClientError;
use crate::protocol::{authentication, read_frame, take_cstr};

const ITERATIONS: u32 = 4096;

/// SCRAM secrets derived from configured plain passwords, one salt per user as
/// PostgreSQL keeps them: the 4096-round key derivation runs once, not per login.
#[derive(Default)]
pub struct SecretCache {
    secrets: std::sync::Mutex<std::collections::HashMap<(String, String), ScramSecret>>,
}

impl SecretCache {
    fn secret(&self, user: &str, password: &str) -> ScramSecret {
        let key = (user.to_string(), password.to_string());
        if let Some(s) = self.secrets.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return s;
        }
        let s = ScramSecret::from_password(password, &random_bytes::<16>(), ITERATIONS);
        if let Ok(mut m) = self.secrets.lock() {
            m.insert(key, s.clone());
        }
        s
    }
}

pub use crate::config::ScramSecret;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// PBKDF2-HMAC-SHA-256, SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The secret's derivation lives with the SCRAM exchange; its text form with
/// the configuration (`config::scram`).
impl ScramSecret {
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(&client_key).to_vec(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<(), ClientError> {
    w.write_all(b)
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    w.flush()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Reads the client's next `PasswordMessage`-family message ('p').
async fn read_password_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ClientError> {
    let f = read_frame(r, 64 * 1024)
        .await
        .map_err(|e| ClientError::Protocol(format!("expected password response: {e}")))?;
    if f.tag != b'p' {
        return Err(ClientError::Protocol(format!(
            "expected password response, got message type {}",
            f.tag as char
        )));
    }
    Ok(f.body().to_vec())
}

/// Runs the configured exchange; `Ok` means the client proved the password.
/// An unknown user runs a SCRAM exchange against a random secret, so failure
/// looks the same as a wrong password.
pub async fn authenticate<R, W>(
    r: &mut R,
    w: &mut W,
    user_name: &str,
    user: Option<&User>,
    cache: &SecretCache,
) -> Result<(), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed = || ClientError::AuthFailed(user_name.to_string());
    let method = user.map(|u| u.auth).unwrap_or(AuthMethod::ScramSha256);
    match method {
        AuthMethod::Cleartext => {
            send(w, &authentication(3, &[])).await?;
            let body = read_password_message(r).await?;
            let given = take_cstr(&body).map(|x| x.0).unwrap_or_default();
            let expected = user
                .and_then(|u| u.password.as_deref())
                .ok_or_else(failed)?;
            if ct_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(failed())
            }
        }
        AuthMethod::Md5 => {
            let salt: [u8; 4] = random_bytes();
            send(w, &authentication(5, &salt)).await?;
            let body = read_password_message(r).await?;
            let given = take_cstr(&body).map(|x| x.0).unwrap_or_default();
            let password = user
                .and_then(|u| u.password.as_deref())
                .ok_or_else(failed)?;
            let expected = postgres_protocol::authentication::md5_hash(
                user_name.as_bytes(),
                password.as_bytes(),
                salt,
            );
            if ct_eq(given.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(failed())
            }
        }
        AuthMethod::ScramSha256 => {
            let secret = match user {
                Some(u) => match (&u.scram_verifier, &u.password) {
                    (Some(v), _) => ScramSecret::parse(v).ok_or_else(failed)?,
                    (None, Some(p)) => cache.secret(&u.name, p),
                    (None, None) => return Err(failed()),
                },
                None => ScramSecret::from_password(
                    &B64.encode(random_bytes::<16>()),
                    &random_bytes::<16>(),
                    ITERATIONS,
                ),
            };
            let ok = scram_exchange(r, w, &secret).await?;
            if ok && user.is_some() {
                Ok(())
            } else {
                Err(failed())
            }
        }
    }
}

async fn scram_exchange<R, W>(
    r: &mut R,
    w: &mut W,
    secret: &ScramSecret,
) -> Result<bool, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let bad = |m: &str| ClientError::Protocol(format!("malformed SCRAM message: {m}"));
    send(w, &authentication(10, b"SCRAM-SHA-256\0\0")).await?;

    // SASLInitialResponse: mechanism, length, client-first-message.
    let body = read_password_message(r).await?;
    let (mech, rest) = take_cstr(&body).ok_or_else(|| bad("no mechanism"))?;
    if mech != "SCRAM-SHA-256" {
        return Err(ClientError::Protocol(format!(
            "unsupported SASL mechanism \"{mech}\""
        )));
    }
    let data = rest.get(4..).ok_or_else(|| bad("short initial response"))?;
    let first = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
    // gs2 header: "n,," (no channel binding) or "y,," (client could, server can't).
    let (gs2, bare) = if let Some(b) = first.strip_prefix("n,,") {
        ("n,,", b)
    } else if let Some(b) = first.strip_prefix("y,,") {
        ("y,,", b)
    } else {
        return Err(ClientError::Protocol(
            "SCRAM channel binding is not supported".into(),
        ));
    };
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or_else(|| bad("no nonce"))?;
    let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&secret.salt),
        secret.iterations
    );
    send(w, &authentication(11, server_first.as_bytes())).await?;

    // SASLResponse: client-final-message.
    let body = read_password_message(r).await?;
    let fin = std::str::from_utf8(&body).map_err(|_| bad("not UTF-8"))?;
    let (without_proof, proof) = fin.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
    let mut cb = None;
    let mut rn = None;
    for a in without_proof.split(',') {
        if let Some(v) = a.strip_prefix("c=") {
            cb = Some(v);
        } else if let Some(v) = a.strip_prefix("r=") {
            rn = Some(v);
        }
    }
    if cb != Some(B64.encode(gs2).as_str()) || rn != Some(nonce.as_str()) {
        return Err(bad("channel binding or nonce mismatch"));
    }
    let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&secret.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Ok(false);
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !ct_eq(&Sha256::digest(&client_key), &secret.stored_key) {
        return Ok(false);
    }
    let server_signature = hmac(&secret.server_key, auth_message.as_bytes());
    let mut fin = Vec::new();
    fin.put_slice(b"v=");
    fin.put_slice(B64.encode(server_signature).as_bytes());
    send(w, &authentication(12, &fin)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trips() {
        let s = ScramSecret::from_password("pencil", b"0123456789abcdef", 4096);
        let v = s.verifier();
        let p = ScramSecret::parse(&v).unwrap();
        assert_eq!(p.stored_key, s.stored_key);
        assert!(ScramSecret::parse("md5abc").is_none());
    }

    #[test]
    fn hi_matches_rfc7677_vector() {
        // RFC 7677 example: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let s = ScramSecret::from_password("pencil", &salt, 4096);
        let salted = hi(b"pencil", &salt, 4096);
        let server_key = hmac(&salted, b"Server Key");
        assert_eq!(s.server_key, server_key);
        // ServerSignature from the RFC's exchange.
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        assert_eq!(
            B64.encode(hmac(&server_key, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
