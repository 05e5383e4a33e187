//! Session settings that stay with their client: applied to whichever
//! pooled connection serves it, recorded when a block commits, and read back
//! from a connection after a statement that may have changed them unseen.

use super::*;
use crate::error::SqlState;

impl Session {
    /// Records setting changes that took effect, in the session and on the
    /// server connections that ran them.
    pub(super) fn apply_changes(&mut self, changes: &[SettingChange], conns: &mut [Participant]) {
        for ch in changes {
            match ch {
                SettingChange::Set(name, stmt) => {
                    self.settings.insert(name.clone(), stmt.clone());
                    for p in conns.iter_mut() {
                        p.conn.applied.insert(name.clone(), stmt.clone());
                    }
                }
                SettingChange::Reset(name) => {
                    match self.startup_settings.get(name) {
                        Some(s) => self.settings.insert(name.clone(), s.clone()),
                        None => self.settings.remove(name),
                    };
                    for p in conns.iter_mut() {
                        p.conn.applied.remove(name);
                    }
                }
                SettingChange::ResetAll => {
                    self.settings = self.startup_settings.clone();
                    for p in conns.iter_mut() {
                        p.conn.applied.clear();
                    }
                }
            }
        }
    }

    /// After a block committed: settings a statement in it may have changed
    /// unseen are read back from the shard where it ran.
    pub(super) async fn learn_after_commit(&mut self, parts: &mut [Participant]) {
        let Some(shard) = self.learn_at_commit.take() else {
            return;
        };
        if let Some(p) = parts.iter_mut().find(|p| p.shard() == shard) {
            if p.conn.status == b'I'
                && learn_settings(&mut p.conn, &mut self.settings)
                    .await
                    .is_err()
            {
                p.conn.mark_broken();
            }
        }
    }
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(Clone)]
pub(super) enum SettingChange {
    Set(String, String),
    Reset(String),
    ResetAll,
}

/// Makes a connection's settings equal the client's: `SET` what differs,
/// `RESET` what the client does not have. One round trip, only when needed.
/// A deadlock tag an earlier block left on the server session
/// ([`ServerConn::untag`]) is given back in the same round trip.
pub(super) async fn sync_settings(
    conn: &mut ServerConn,
    want: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let mut batch = Vec::new();
    if std::mem::take(&mut conn.settings_unknown) {
        // Another client may have changed anything here: start from scratch.
        batch.push("RESET ALL".to_string());
        conn.applied.clear();
    }
    for (name, stmt) in want {
        if conn.applied.get(name) != Some(stmt) {
            batch.push(stmt.clone());
        }
    }
    for name in conn.applied.keys() {
        if !want.contains_key(name) {
            batch.push(reset(name));
        }
    }
    // (Last: under the settings the client will have, not another's.)
    if let Some(untag) = conn.untag.take() {
        batch.push(untag);
    }
    if batch.is_empty() {
        return Ok(());
    }
    match conn.simple(&batch.join("; ")).await? {
        Ok(_) => {
            conn.applied = want.clone();
            Ok(())
        }
        Err(e) => {
            conn.mark_broken();
            // A setting the shard refuses (a name it does not know, a bad
            // value): the shard's own error, as PostgreSQL gives it at
            // startup. Anything else means the connection cannot be used.
            match SqlState::of_setting(&e.code) {
                Some(code) => Err(Error::Setting {
                    code,
                    message: e.message,
                }),
                None => Err(Error::Backend(BackendError::Protocol {
                    shard: conn.shard,
                    message: format!(
                        "applying the client's session settings failed: {}",
                        e.message
                    ),
                })),
            }
        }
    }
}

/// The statement that takes back the setting `name` at session level.
fn reset(name: &str) -> String {
    format!("RESET {}", quote_ident(name))
}

/// After a statement that may have changed settings unseen, on the
/// connection that ran it (outside a block): the settings the client now has
/// are whatever this server holds at session level, which become the
/// client's (and this connection's, so it needs no reset).
pub(super) async fn learn_settings(
    conn: &mut ServerConn,
    settings: &mut BTreeMap<String, String>,
) -> Result<(), Error> {
    const SESSION_SETTINGS: &str =
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'";
    let frames = match conn.simple(SESSION_SETTINGS).await? {
        Ok(f) => f,
        Err(_) => {
            conn.settings_unknown = true;
            return Ok(());
        }
    };
    let mut learnt = BTreeMap::new();
    for row in ServerConn::text_values(&frames) {
        let [Some(name), Some(value)] = row.as_slice() else {
            continue;
        };
        let name = String::from_utf8_lossy(name).to_lowercase();
        let value = String::from_utf8_lossy(value);
        learnt.insert(
            name.clone(),
            format!("SET {} = {}", quote_ident(&name), quote_literal(&value)),
        );
    }
    *settings = learnt.clone();
    conn.applied = learnt;
    conn.settings_unknown = false;
    Ok(())
}
