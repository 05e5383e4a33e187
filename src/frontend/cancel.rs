//! Query cancellation. A client's `CancelRequest` names the key Pieskieo gave
//! it; Pieskieo forwards a cancel to every server connection that client holds
//! at that moment, and to nothing of anyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Client keys and what each client holds.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, Targets)>>,
}

impl CancelRegistry {
    pub fn register(&self, process_id: i32, secret_key: i32) -> Targets {
        let targets = Targets::default();
        if let Ok(mut m) = self.clients.lock() {
            m.insert(process_id, (secret_key, targets.clone()));
        }
        targets
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
                Some((secret, t)) if *secret == secret_key => {
                    t.lock().map(|t| t.clone()).unwrap_or_default()
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
