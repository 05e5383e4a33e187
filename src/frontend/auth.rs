//! Client authentication: SCRAM-SHA-256 (server side, RFC 5802/7677 as
//! PostgreSQL speaks it), md5, cleartext and trust, against the configured
//! users or, for users not configured, the password `auth_query` finds on a
//! shard (`passthrough`). A user with nothing to check against runs a mock
//! SCRAM exchange that costs as little as a real one and fails as a wrong
//! password does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BufMut;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::passthrough::{Found, LookupError, PasswordLookup};
use crate::config::{AuthMethod, Config, User};
use crate::error::ClientError;
use crate::protocol::authentication;
use pgwire::messages::startup::Authentication as Auth;

const ITERATIONS: u32 = 4096;

/// SCRAM secrets derived from configured plain passwords, one salt per user as
/// PostgreSQL keeps them: the 4096-round key derivation runs once, not per
/// login. Also the per-process key of mock salts.
pub struct SecretCache {
    secrets: std::sync::Mutex<std::collections::HashMap<(String, String), ScramSecret>>,
    /// Mixed into mock salts (PostgreSQL's `mock_auth_nonce`): an unknown
    /// user's salt is the same at every attempt, as a real user's is, but
    /// cannot be computed outside this process.
    mock_key: [u8; 32],
}

impl Default for SecretCache {
    fn default() -> Self {
        SecretCache {
            secrets: Default::default(),
            mock_key: random_bytes(),
        }
    }
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

    /// The secret a user with no password is "checked" against, as
    /// PostgreSQL's `scram_mock_salt`: the salt is a hash of the name and
    /// the process's key, the keys are random and no key derivation runs,
    /// so a guess costs the proxy a few hashes and the answer says nothing.
    fn mock(&self, user: &str) -> ScramSecret {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update(self.mock_key);
        ScramSecret {
            iterations: ITERATIONS,
            salt: h.finalize()[..16].to_vec(),
            stored_key: random_bytes::<32>().to_vec(),
            server_key: random_bytes::<32>().to_vec(),
        }
    }
}

/// Why a user has nothing to check a password against (for the log; the
/// client sees a wrong password either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Not in `users`, and no `[auth_query]`.
    NotConfigured,
    /// `auth_query` found no row (no such role, or one that cannot log in).
    NotFound,
    /// No password to check: none in the configuration, or `auth_query`
    /// found the role with a NULL one (none set, or expired under the
    /// default query).
    NoPassword,
    /// `auth_query` found something neither a SCRAM verifier nor an md5 hash.
    Unusable,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::NotConfigured => "no such user",
            Miss::NotFound => "auth_query found no role that can log in",
            Miss::NoPassword => "no valid password is set",
            Miss::Unusable => "auth_query returned neither a SCRAM verifier nor an md5 hash",
        }
    }
}

/// What a client's password is checked against, found before the exchange
/// (its kind decides which exchange runs).
#[derive(Clone)]
pub enum Credential {
    /// No password asked (`auth = "trust"`).
    Trust,
    /// The password itself (`auth = "cleartext"`).
    Cleartext(String),
    /// `md5` and the hex MD5 of password and user name, as PostgreSQL stores it.
    Md5(String),
    Scram(ScramSecret),
    /// Nothing: a mock SCRAM exchange runs, then fails as a wrong password.
    Missing(Miss),
}

/// A refused login: what the client is told, and why for the log.
pub struct Refusal {
    pub error: ClientError,
    pub miss: Option<Miss>,
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Self {
        Refusal { error, miss: None }
    }
}

/// The credential of `user`: its `[[users]]` entry, else what `lookup`
/// finds on its shard, else nothing.
pub(crate) async fn credential(
    config: &Config,
    lookup: Option<&PasswordLookup>,
    user: &str,
    cache: &SecretCache,
) -> Result<Credential, ClientError> {
    if let Some(u) = config.users.iter().find(|u| u.name == user) {
        return Ok(configured(u, cache));
    }
    let Some(lookup) = lookup else {
        return Ok(Credential::Missing(Miss::NotConfigured));
    };
    match lookup.stored_password(user).await {
        Ok(Found::NoRow) => Ok(Credential::Missing(Miss::NotFound)),
        Ok(Found::NoPassword) => Ok(Credential::Missing(Miss::NoPassword)),
        Ok(Found::Password(stored)) => Ok(stored_credential(&stored)),
        Err(LookupError::Unavailable { .. }) => {
            Err(ClientError::AuthLookupUnavailable(user.to_string()))
        }
        Err(LookupError::Failed { .. }) => Err(ClientError::AuthLookupFailed(user.to_string())),
    }
}

fn configured(u: &User, cache: &SecretCache) -> Credential {
    let none = Credential::Missing(Miss::NoPassword);
    match (u.auth, &u.password, &u.scram_verifier) {
        (AuthMethod::Trust, _, _) => Credential::Trust,
        (AuthMethod::Cleartext, Some(p), _) => Credential::Cleartext(p.clone()),
        (AuthMethod::Md5, Some(p), _) => Credential::Md5(md5_stored(&u.name, p)),
        (AuthMethod::ScramSha256, _, Some(v)) => {
            ScramSecret::parse(v).map_or(none, Credential::Scram)
        }
        (AuthMethod::ScramSha256, Some(p), None) => Credential::Scram(cache.secret(&u.name, p)),
        // Refused by validation; never a login without a password.
        (AuthMethod::Cleartext | AuthMethod::Md5 | AuthMethod::ScramSha256, None, _) => none,
    }
}

/// A password as `pg_authid.rolpassword` stores it.
fn stored_credential(stored: &str) -> Credential {
    if let Some(s) = ScramSecret::parse(stored) {
        return Credential::Scram(s);
    }
    match stored.strip_prefix("md5") {
        Some(h) if h.len() == 32 && h.bytes().all(|c| c.is_ascii_hexdigit()) => {
            Credential::Md5(stored.to_ascii_lowercase())
        }
        _ => Credential::Missing(Miss::Unusable),
    }
}

/// `md5` and MD5(password, user) in hex: what PostgreSQL stores for md5.
fn md5_stored(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// What a client proving an md5 password sends: `md5` and
/// MD5(hex of MD5(password, user), salt), computed from the stored hash alone.
fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(stored.strip_prefix("md5").unwrap_or(stored).as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the credential of `user` and runs its exchange; `Ok` means the
/// client may log in.
pub(crate) async fn login<R, W>(
    r: &mut R,
    w: &mut W,
    user: &str,
    config: &Config,
    lookup: Option<&PasswordLookup>,
    cache: &SecretCache,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let c = credential(config, lookup, user, cache).await?;
    authenticate(r, w, user, &c, cache)
        .await
        .map_err(|error| Refusal {
            error,
            miss: match c {
                Credential::Missing(m) => Some(m),
                _ => None,
            },
        })
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

/// PostgreSQL's limit on an authentication message, its length word
/// included (`PG_MAX_AUTH_TOKEN_LENGTH`).
const MAX_AUTH_TOKEN: usize = 65_535;

/// Reads the body of the client's next `PasswordMessage`-family message
/// ('p'), which only the exchange in progress can tell apart (password,
/// SASL initial response, SASL response); `expected` names it for the
/// error. Read by hand, as PostgreSQL reads them: pgwire's decoder takes
/// at most 10,000 bytes, accepts bytes after a password, and reads past the
/// end of a truncated SASL initial response. Too long a message, or the
/// client gone, closes the connection without an answer, as in PostgreSQL.
async fn read_password_message<R: AsyncRead + Unpin>(
    r: &mut R,
    expected: &str,
) -> Result<Vec<u8>, ClientError> {
    let gone =
        |e: std::io::Error| ClientError::Dropped(format!("expected {expected} response: {e}"));
    // The type first: a wrong one is refused before its length is read.
    let tag = r.read_u8().await.map_err(gone)?;
    if tag != b'p' {
        return Err(ClientError::Protocol(format!(
            "expected {expected} response, got message type {tag}"
        )));
    }
    let len = r.read_i32().await.map_err(gone)?;
    if len < 4 || len as usize > MAX_AUTH_TOKEN {
        return Err(ClientError::Dropped(format!(
            "expected {expected} response: invalid message length {len}"
        )));
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.map_err(gone)?;
    Ok(body)
}

/// The password of a `PasswordMessage`: one string filling the body, as
/// bytes (PostgreSQL compares bytes, whatever the encoding).
fn password_of(body: &[u8]) -> Result<&[u8], ClientError> {
    match body.split_last() {
        Some((0, text)) if !text.contains(&0) => {
            if text.is_empty() {
                return Err(ClientError::EmptyPassword);
            }
            Ok(text)
        }
        _ => Err(ClientError::Protocol("invalid password packet size".into())),
    }
}

/// A SASLInitialResponse: the mechanism (SCRAM-SHA-256, the one offered),
/// then the length of the client's first message (-1: none) and the
/// message, and nothing after it.
fn sasl_initial(body: &[u8]) -> Result<Option<&[u8]>, ClientError> {
    let bad = |m: &str| ClientError::Protocol(m.to_string());
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("invalid string in message"))?;
    // PostgreSQL checks the mechanism before it reads any further.
    if &body[..nul] != b"SCRAM-SHA-256" {
        return Err(bad(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let rest = &body[nul + 1..];
    let len = rest
        .get(..4)
        .ok_or_else(|| bad("insufficient data left in message"))?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let rest = &rest[4..];
    let data = match len {
        -1 => None,
        n if n >= 0 && n as usize <= rest.len() => Some(&rest[..n as usize]),
        _ => return Err(bad("insufficient data left in message")),
    };
    if rest.len() != data.map_or(0, <[u8]>::len) {
        return Err(bad("invalid message format"));
    }
    Ok(data)
}

/// Runs the exchange `credential` asks for; `Ok` means the client proved the
/// password (or none was asked). A missing credential runs a SCRAM
/// exchange against a mock secret, so failure looks the same as a wrong
/// password.
pub async fn authenticate<R, W>(
    r: &mut R,
    w: &mut W,
    user_name: &str,
    credential: &Credential,
    cache: &SecretCache,
) -> Result<(), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed = || ClientError::AuthFailed(user_name.to_string());
    match credential {
        Credential::Trust => Ok(()),
        Credential::Cleartext(expected) => {
            send(w, &authentication(Auth::CleartextPassword)).await?;
            let given = read_password_message(r, "password").await?;
            if ct_eq(password_of(&given)?, expected.as_bytes()) {
                Ok(())
            } else {
                Err(failed())
            }
        }
        Credential::Md5(stored) => {
            let salt: [u8; 4] = random_bytes();
            send(w, &authentication(Auth::MD5Password(salt.to_vec()))).await?;
            let given = read_password_message(r, "password").await?;
            let expected = md5_response(stored, salt);
            if ct_eq(password_of(&given)?, expected.as_bytes()) {
                Ok(())
            } else {
                Err(failed())
            }
        }
        // A SASL message that cannot be read (too long, cut off) fails the
        // login, as in PostgreSQL, where a password message closes quietly.
        Credential::Scram(secret) => match scram_exchange(r, w, secret).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(ClientError::Dropped(_)) => Err(failed()),
            Err(e) => Err(e),
        },
        Credential::Missing(_) => match scram_exchange(r, w, &cache.mock(user_name)).await {
            Ok(_) | Err(ClientError::Dropped(_)) => Err(failed()),
            Err(e) => Err(e),
        },
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
    send(w, &authentication(Auth::SASL(vec!["SCRAM-SHA-256".into()]))).await?;

    // SASLInitialResponse: mechanism, length, client-first-message.
    let body = read_password_message(r, "SASL").await?;
    let data = sasl_initial(&body)?;
    // A client may hold its first message back (length -1); PostgreSQL then
    // asks for it with an empty SASLContinue. No known client does; refused.
    let data = data.ok_or_else(|| bad("no client-first-message"))?;
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
    send(
        w,
        &authentication(Auth::SASLContinue(server_first.clone().into())),
    )
    .await?;

    // SASLResponse: client-final-message.
    let body = read_password_message(r, "SASL").await?;
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
    send(w, &authentication(Auth::SASLFinal(fin.into()))).await?;
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
    fn md5_checks_against_the_stored_hash_as_libpq_answers() {
        let salt = [0x2a, 0x3d, 0x8f, 0xe0];
        let stored = md5_stored("md5_user", "password");
        // What PostgreSQL stores for this user and password.
        assert_eq!(stored, "md57cd2b9a92689eab2e58caf2da80afa15");
        let client = postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt);
        assert_eq!(md5_response(&stored, salt), client);
        assert_ne!(md5_response(&stored, [0, 0, 0, 0]), client);
    }

    #[test]
    fn stored_passwords_are_read_as_postgresql_writes_them() {
        let v = ScramSecret::from_password("x", b"0123456789abcdef", 4096).verifier();
        assert!(matches!(stored_credential(&v), Credential::Scram(_)));
        let md5 = md5_stored("bob", "x");
        assert!(matches!(stored_credential(&md5), Credential::Md5(h) if h == md5));
        for junk in ["x", "md5abc", "SCRAM-SHA-256$4096:bad", ""] {
            assert!(
                matches!(stored_credential(junk), Credential::Missing(Miss::Unusable)),
                "{junk}"
            );
        }
    }

    #[test]
    fn mock_salt_is_stable_per_user_and_private_to_the_process() {
        let a = SecretCache::default();
        let b = SecretCache::default();
        assert_eq!(a.mock("ghost").salt, a.mock("ghost").salt);
        assert_eq!(a.mock("ghost").salt.len(), 16);
        assert_ne!(a.mock("ghost").salt, a.mock("ghost2").salt);
        assert_ne!(a.mock("ghost").salt, b.mock("ghost").salt);
        // The keys no client can match are not derived from anything.
        assert_ne!(a.mock("ghost").stored_key, a.mock("ghost").stored_key);
        assert_eq!(a.mock("ghost").iterations, ITERATIONS);
    }

    #[test]
    fn a_mock_secret_costs_far_less_than_a_key_derivation() {
        // Best of several runs on each side, so a busy machine does not decide.
        let best = |f: &dyn Fn()| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed()
                })
                .min()
                .unwrap()
        };
        let cache = SecretCache::default();
        let hundred_mocks = best(&|| {
            for i in 0..100 {
                std::hint::black_box(cache.mock(&format!("ghost{i}")));
            }
        });
        let one_derivation = best(&|| {
            std::hint::black_box(hi(b"pw", b"0123456789abcdef", ITERATIONS));
        });
        assert!(
            hundred_mocks < one_derivation,
            "100 mock secrets took {hundred_mocks:?}, one PBKDF2 {one_derivation:?}"
        );
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
