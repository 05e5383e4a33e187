//! This proxy's live server connections by (shard, backend pid), so the
//! deadlock detector can tell which server backends are ours and cancel one
//! with the answer its client should get.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::Endpoint;
use crate::router::ShardId;

/// The ErrorResponse a connection's client gets instead of the
/// "canceling statement" error a cancel will produce, once the deadlock
/// detector has chosen its transaction. Cleared when the server reports the
/// transaction over.
pub type Verdict = Arc<Mutex<Option<Bytes>>>;

/// One of our server backends, as the detector needs it.
#[derive(Clone)]
pub struct Ours {
    pub verdict: Verdict,
    /// Where a `CancelRequest` for it goes, and its key.
    pub endpoint: Arc<Endpoint>,
    pub secret_key: i32,
}

struct Entry {
    verdict: Weak<Mutex<Option<Bytes>>>,
    endpoint: Arc<Endpoint>,
    secret_key: i32,
}

/// Every pooled connection of this process, registered when it is made.
/// Entries die with their connection (a weak reference).
#[derive(Default)]
pub struct Backends {
    map: Mutex<HashMap<(ShardId, i32), Entry>>,
}

impl Backends {
    pub fn register(
        &self,
        shard: ShardId,
        pid: i32,
        verdict: &Verdict,
        endpoint: Arc<Endpoint>,
        key: i32,
    ) {
        let Ok(mut m) = self.map.lock() else {
            return;
        };
        // Drop the dead now and then: amortized O(1) per connection made.
        if m.len() >= 64 && m.len().is_power_of_two() {
            m.retain(|_, e| e.verdict.strong_count() > 0);
        }
        m.insert(
            (shard, pid),
            Entry {
                verdict: Arc::downgrade(verdict),
                endpoint,
                secret_key: key,
            },
        );
    }

    /// Backend `pid` on `shard`, if a live connection of ours serves it.
    pub fn ours(&self, shard: ShardId, pid: i32) -> Option<Ours> {
        let m = self.map.lock().ok()?;
        let e = m.get(&(shard, pid))?;
        Some(Ours {
            verdict: e.verdict.upgrade()?,
            endpoint: e.endpoint.clone(),
            secret_key: e.secret_key,
        })
    }
}
