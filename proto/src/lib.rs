//! Protobuf types shared by Murmur nodes and clients.
//!
//! `client::v1` is the client protocol carried in WebSocket binary frames: the same operations
//! as the JSON text frames, described in `docs/protocol.md`. Every client → node frame is one
//! [`client::v1::ClientFrame`]; every node → client frame is one [`client::v1::ServerFrame`].
//!
//! `cluster::v1` is what nodes say to each other over QUIC: interest and forwarded events.

pub mod client {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/murmur.client.v1.rs"));
    }
}

pub mod cluster {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/murmur.cluster.v1.rs"));

        /// The inter-node protocol version this build speaks. 2: publishes travel on a
        /// second stream of their own.
        pub const VERSION: u32 = 2;
    }
}
