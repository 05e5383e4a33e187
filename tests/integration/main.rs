//! Integration tests: real PostgreSQL servers, the proxy in front, real clients.

mod harness;

mod admin;
mod auth;
mod bank;
mod chaos;
mod config;
mod consistent;
mod copy;
mod copy_encodings;
mod copy_extended;
mod copy_keys;
mod deadlocks;
mod demo;
mod differential_sessions;
mod dirty;
mod drivers;
mod extended;
mod faults;
mod hashing;
mod hostile;
mod insert_select;
mod keys;
mod merges;
mod metrics;
mod prepared_blocks;
mod prepared_simple;
mod psql;
mod restore;
mod review17;
mod review17b;

mod review18;
mod review18c;
mod review18d;
mod review18e;
mod routing;
mod sessions;
mod shard_tls;
mod startup;
mod subqueries;
mod timeouts;
mod tls;
mod transactions;
mod twophase;
mod writes;
