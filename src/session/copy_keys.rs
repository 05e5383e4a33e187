//! A COPY into a sharded table whose column list leaves out the shard key:
//! the router holds its rows in batches, and each batch gets its keys from
//! the cluster (`keys.rs`, one round trip to the sequence shard) before its
//! rows are queued for their shards. Any failure is the ErrorResponse to
//! give and the client line it is about, which the COPY reports as a
//! refused row.

use bytes::Bytes;

use super::copy_feed::{feed_some, place_keys, route_error, Feed};
use super::keys::CopyKeySource;
use super::*;
use crate::router::{CopyIn, RowRouter};

impl Session {
    /// A keyless COPY's CopyData: rows are read into batches; each full
    /// batch gets its keys (one round trip) and goes to its rows' shards.
    /// `Err`: the ErrorResponse to give, and the line it is about.
    pub(super) async fn route_keyless(
        &self,
        copy: &CopyIn,
        keys: Option<&CopyKeySource>,
        r: &mut RowRouter,
        feeds: &mut [Feed],
        mut data: &[u8],
    ) -> Result<(), (Bytes, u64)> {
        loop {
            let used = feed_some(r, feeds, data).map_err(|e| {
                let line = e.line;
                (
                    protocol::error_with_hint(e.sqlstate, &e.message, e.hint, &e.context),
                    line,
                )
            })?;
            data = data.get(used..).unwrap_or_default();
            if r.batch_full() {
                self.place_waiting(copy, keys, r, feeds).await?;
            }
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// The keys for a keyless router's waiting rows, from the cluster (one
    /// round trip to the sequence shard, the values in row order), and the
    /// rows queued for their shards.
    pub(super) async fn place_waiting(
        &self,
        copy: &CopyIn,
        source: Option<&CopyKeySource>,
        r: &mut RowRouter,
        feeds: &mut [Feed],
    ) -> Result<(), (Bytes, u64)> {
        let line = r.waiting_from().unwrap_or(u64::MAX - 1);
        let Some(source) = source else {
            // A keyless router is made only with its source: never here, but
            // the rows must not wait for ever.
            let e = RouteError::Unsupported("keys for the COPY could not be chosen".into());
            return Err((route_error(&e), line));
        };
        let keys = if r.waiting() == 0 {
            Vec::new()
        } else {
            self.copy_keys(&copy.table, source, r.waiting())
                .await
                .map_err(|e| {
                    let e = protocol::error_response(
                        Severity::Error,
                        e.sqlstate(),
                        &e.to_string(),
                        None,
                    );
                    (e, line)
                })?
        };
        place_keys(r, feeds, &keys).map_err(|e| {
            (
                protocol::error_with_hint(e.sqlstate, &e.message, e.hint, &e.context),
                e.line,
            )
        })
    }
}
