//! What the measuring examples share: an in-process node on loopback ports the OS picks,
//! its gossip address for the next node's seeds, and a client connected to it.
#![allow(dead_code)] // each example uses its own part of this

use murmur::client::Client;
use murmur::config::Secret;
use murmur::{RunningNode, Settings};

pub const CLUSTER_KEY: &str = "kKDqibjKP6q35CdizaZgt5fZaJ7arAGkreGgPTWpROg";

/// Settings for node `name` of an example's cluster: every port on 127.0.0.1 picked by the
/// OS, the examples' cluster key, warnings only. Examples change what they measure.
pub fn loopback_settings(name: &str, seeds: Vec<String>) -> Settings {
    Settings {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        gossip: "127.0.0.1:0".parse().unwrap(),
        quic: "127.0.0.1:0".parse().unwrap(),
        seeds,
        cluster_key: Some(Secret(CLUSTER_KEY.into())),
        log: "warn".into(),
        ..Settings::default()
    }
}

/// Starts node `name` with [`loopback_settings`].
pub async fn node(name: &str, seeds: Vec<String>) -> RunningNode {
    RunningNode::start(loopback_settings(name, seeds))
        .await
        .expect("node starts")
}

/// The node's gossip address, as the next node's seed.
pub fn gossip(node: &RunningNode) -> String {
    let view = node.state().cluster.gossip.view.read();
    view.myself()
        .expect("a node knows itself")
        .gossip
        .to_string()
}

/// A WebSocket client on the node's client port.
pub async fn connect(node: &RunningNode) -> Client {
    Client::connect(&format!("ws://{}/ws", node.local_addr()))
        .await
        .expect("connects")
}
