//! Murmur: a distributed publish/subscribe node.
//!
//! - [`auth`]: client tokens (JWT) and per-topic permissions;
//! - [`routing`]: the I/O-free core: topics, the subscription index, sequencing;
//! - [`protocol`]: the client protocol v1, as JSON and as protobuf;
//! - [`broker`]: the routing core behind locks, fanning events out to connections;
//! - [`frontdoor`]: HTTP and WebSocket, one task per client connection;
//! - [`node`]: starting, serving and draining a node;
//! - [`config`]: settings from defaults, file, environment and flags;
//! - [`metrics`]: Prometheus metrics;
//! - [`cluster`]: gossip membership, the QUIC mesh, topic ownership;
//! - [`client`]: the WebSocket client behind `murmur sub` and `murmur pub`;
//! - [`publisher`]: `murmur pub`'s publishing with ids, sent again after `unavailable`;
//! - [`limits`]: rate limiters for log lines and publishes;
//! - [`tls_files`]: certificates and keys read from PEM files.

pub mod api_client;
pub mod auth;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod event;
pub mod frontdoor;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod publisher;
pub mod routing;
pub mod storage;
pub mod tls_files;

pub use config::Settings;
pub use node::RunningNode;
