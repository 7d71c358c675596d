//! Throng: a high-density WebSocket push server.
//!
//! Data flows one way: the acceptor upgrades sockets and hands them to the [`shard`]
//! that owns the user; the push [`api`] turns requests into commands for the shards that
//! need them. Shards own their connections outright.

#![warn(missing_docs, unreachable_pub)]

pub(crate) mod acceptor;
pub(crate) mod admission;
pub mod api;
pub mod auth;
pub mod broker;
pub(crate) mod command;
pub mod config;
pub mod deflate;
pub mod demo;
pub mod doctor;
pub mod events;
pub mod fdlimit;
pub mod frame;
pub mod handshake;
pub(crate) mod http;
pub(crate) mod json_check;
pub mod kafka;
pub(crate) mod link;
pub(crate) mod log_gate;
pub(crate) mod memory;
pub mod messages;
pub mod metrics;
pub mod reactor;
pub mod route;
pub mod server;
pub mod shard;
pub mod slots;
pub mod tls;
pub mod topic;
pub mod wheel;
pub mod wire;

pub use config::Config;
pub use server::Server;
