//! Query cancellation. A client's `CancelRequest` names the key Pieskieo gave
//! it; Pieskieo forwards a cancel to every server connection that client holds
//! at that moment, and to nothing of anyone else; and it wakes the client's
//! session, whose waits in the proxy itself (the consistent-read fence) end
//! with PostgreSQL's `57014`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use tracing::{info, warn};

/// A server backend that can be cancelled: its shard and key.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub endpoint: Arc<crate::backend::Endpoint>,
    pub process_id: i32,
    pub secret_key: i32,
}

/// The server connections one client holds.
pub type Targets = Arc<Mutex<Vec<CancelTarget>>>;

/// A client's cancel requests as they reach its session: a count of them
/// and a wake-up. The session compares the count with the one it saw when
/// it read the client's last message, so a cancel that came while it was
/// idle does nothing, as in PostgreSQL (which ignores a cancel while it
/// reads a command).
#[derive(Default)]
pub struct CancelSignal {
    requests: AtomicU64,
    notify: Notify,
}

impl CancelSignal {
    /// How many cancel requests have come so far.
    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    fn raise(&self) {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Resolves once a cancel request newer than `seen` (a [`count`]) has
    /// come. Cancel-safe.
    ///
    /// [`count`]: CancelSignal::count
    pub async fn after(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() > seen {
                return;
            }
            notified.await;
        }
    }
}

/// What a client's cancel reaches: its server connections and its session.
type Client = (i32, Targets, Arc<CancelSignal>);

/// Client keys and what each client holds.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, Client>>,
}

impl CancelRegistry {
    pub fn register(&self, process_id: i32, secret_key: i32) -> (Targets, Arc<CancelSignal>) {
        let targets = Targets::default();
        let signal = Arc::new(CancelSignal::default());
        if let Ok(mut m) = self.clients.lock() {
            m.insert(process_id, (secret_key, targets.clone(), signal.clone()));
        }
        (targets, signal)
    }

    pub fn unregister(&self, process_id: i32) {
        if let Ok(mut m) = self.clients.lock() {
            m.remove(&process_id);
        }
    }

    /// Forwards a client's cancel; a wrong key cancels nothing, silently, as
    /// PostgreSQL does.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let targets = match self.clients.lock() {
            Ok(m) => match m.get(&process_id) {
                Some((secret, t, signal)) if *secret == secret_key => {
                    // What runs when the cancel came, read before the
                    // session is woken: woken, it may end the statement and
                    // name the next one's backends, which a cancel sent on
                    // would reach as they start it.
                    let targets = t.lock().map(|t| t.clone()).unwrap_or_default();
                    signal.raise();
                    targets
                }
                _ => {
                    warn!(process_id, "cancel request with an unknown key");
                    return;
                }
            },
            Err(_) => return,
        };
        info!(
            process_id,
            servers = targets.len(),
            "forwarding cancel request"
        );
        for t in targets {
            if let Err(e) =
                crate::backend::send_cancel(&t.endpoint, t.process_id, t.secret_key).await
            {
                warn!(addr = %t.endpoint, error = %e, "cannot reach shard to cancel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancel_wakes_only_a_wait_that_began_before_it() {
        let s = Arc::new(CancelSignal::default());
        let seen = s.count();
        let quiet = tokio::time::timeout(Duration::from_millis(20), s.after(seen)).await;
        assert!(quiet.is_err(), "no cancel yet: the wait goes on");
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.after(seen).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.raise();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the cancel wakes the wait")
            .unwrap();
        // A cancel already seen (it came while the session was idle) does nothing.
        let later = tokio::time::timeout(Duration::from_millis(20), s.after(s.count())).await;
        assert!(later.is_err());
    }
}
