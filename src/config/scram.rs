//! The SCRAM-SHA-256 verifier as PostgreSQL keeps it in
//! `pg_authid.rolpassword` (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`):
//! a configuration value, so its format is checked here; the exchange that
//! uses it is the frontend's (`frontend::auth`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// What the server keeps of a SCRAM password.
#[derive(Clone)]
pub struct ScramSecret {
    pub(crate) iterations: u32,
    pub(crate) salt: Vec<u8>,
    pub(crate) stored_key: Vec<u8>,
    pub(crate) server_key: Vec<u8>,
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(v: &str) -> Option<ScramSecret> {
        let rest = v.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let s = ScramSecret {
            iterations: iter.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (s.stored_key.len() == 32 && s.server_key.len() == 32 && s.iterations > 0).then_some(s)
    }

    pub fn verifier(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}
