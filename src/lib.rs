//! Pieskieo: a PostgreSQL wire-protocol proxy that shards tables across
//! ordinary PostgreSQL servers.
//!
//! # Layout
//!
//! In the order a client's statement flows through them:
//!
//! - [`frontend`]: the edge — the listener, TLS, startup, authentication
//!   (with passthrough lookups on a shard) and cancellation of clients, and
//!   the handles every session shares.
//! - `session`: one per client — the transaction-block state machine after
//!   PostgreSQL's `xact.c` (`session/state.rs`), the simple and extended
//!   query protocols, block control, settings that stay with their client;
//!   it decides what each message means and answers it.
//! - [`router`]: pure routing — statement text and shard map in, [`router::Plan`] out;
//!   PostgreSQL-compatible hash sharding.
//! - [`executor`]: runs a plan on server connections and relays or merges what
//!   the shards answer.
//! - [`txn`]: the coordinator — one-phase and two-phase commit with the
//!   decision stored on a participant shard, recovery of in-doubt
//!   transactions by any proxy, the control-plane pools, detection of
//!   deadlocks across shards.
//! - [`backend`]: hand-framed connections to the shards, their pools (a
//!   connection that is not clean is closed, never pooled) and the registry of
//!   this process's server backends.
//! - [`protocol`]: message framing shared by both sides.
//! - [`config`]: the TOML configuration and its validation.
//! - [`admin`]: the admin console, counters and the metrics endpoint.
//! - [`demo`]: `pieskieo demo`, a local cluster in one command.
//! - [`cluster`]: starting and stopping local PostgreSQL servers (`pieskieo demo`, tests).
//! - [`error`]: the crate error and SQLSTATE mapping.

pub mod admin;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod executor;
pub mod frontend;
#[doc(hidden)]
pub mod fuzz;
pub mod merge;
pub mod protocol;
pub mod router;
pub(crate) mod session;
pub mod txn;

pub use frontend::{serve, Proxy};
