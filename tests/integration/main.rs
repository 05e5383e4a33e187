//! Integration tests: real PostgreSQL servers, the proxy in front, real clients.

mod harness;

mod admin;
mod auth;
mod chaos;
mod config;
mod demo;
mod drivers;
mod extended;
mod faults;
mod hashing;
mod hostile;
mod merges;
mod psql;
mod routing;
mod tls;
mod transactions;
mod twophase;
mod writes;
