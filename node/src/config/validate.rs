//! Checking settings: every combination that cannot work is refused at start, naming the
//! setting, and every setting a typo could make absurd has an upper bound.

use super::*;

impl Settings {
    /// Refuses combinations that cannot work, with the setting's name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return invalid("name", "must not be empty");
        }
        if let Err(err) = crate::cluster::security::validate_node_name(&self.name) {
            return invalid("name", &err.to_string());
        }
        let own_pki = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        if own_pki.iter().any(|p| p.is_some()) && !own_pki.iter().all(|p| p.is_some()) {
            return invalid("tls_ca/tls_cert/tls_key", "give all three, or none");
        }
        if self.client_tls_cert.is_some() != self.client_tls_key.is_some() {
            return invalid("client_tls_cert/client_tls_key", "give both, or neither");
        }
        if let Err(reason) = crate::frontdoor::origin::AllowedOrigins::parse(&self.allowed_origins)
        {
            return invalid("allowed_origins", &reason.to_string());
        }
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            return invalid("admin_listen", "must differ from listen");
        }
        if !(1..=MAX_CONNECTIONS_BOUND).contains(&self.max_connections) {
            return invalid("max_connections", "must be between 1 and 10000000");
        }
        if self.max_connections_per_ip > MAX_CONNECTIONS_BOUND {
            return invalid(
                "max_connections_per_ip",
                "must be at most 10000000 (0: no limit)",
            );
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > MAX_HANDSHAKE_TIMEOUT {
            return invalid("handshake_timeout", "must be more than zero and at most 5m");
        }
        self.effective_cluster_key()?;
        if !(MIN_REPLAY_WINDOW..=MAX_REPLAY_WINDOW).contains(&self.gossip_replay_window) {
            return invalid(
                "gossip_replay_window",
                "must be between 1s and 10m (node clocks must agree to within it)",
            );
        }
        if !(1..=MAX_REPLICATION).contains(&self.replication) {
            return invalid("replication", "must be between 1 (the owner itself) and 16");
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.publish_buffer_bytes) {
            return invalid(
                "publish_buffer_bytes",
                "must be between 1048576 (1 MiB) and 4294967296 (4 GiB)",
            );
        }
        if self.publish_buffer_bytes < 2 * self.max_frame_bytes {
            return invalid(
                "publish_buffer_bytes",
                "must hold at least two frames of max_frame_bytes",
            );
        }
        if !(1..=10_000_000).contains(&self.peer_queue) {
            return invalid("peer_queue", "must be between 1 and 10000000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.peer_stall_timeout)
        {
            return invalid("peer_stall_timeout", "must be between 1s and 1h");
        }
        if !(1024..=MAX_FRAME_BYTES_BOUND).contains(&self.max_frame_bytes) {
            return invalid(
                "max_frame_bytes",
                "must be between 1024 and 67108864 (64 MiB)",
            );
        }
        if !(1..=1_000_000).contains(&self.max_subscriptions) {
            return invalid("max_subscriptions", "must be between 1 and 1000000");
        }
        if self.outbound_queue > 1_000_000 {
            return invalid(
                "outbound_queue",
                "must be between 0 (no count bound: slow_consumer_bytes alone) and 1000000",
            );
        }
        if !(64 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.slow_consumer_bytes) {
            return invalid(
                "slow_consumer_bytes",
                "must be between 65536 (64 KiB) and 4294967296 (4 GiB)",
            );
        }
        if self.history_max_events > 100_000_000 {
            return invalid("history_max_events", "must be at most 100000000");
        }
        // A node cannot hold more than its memory: past 1 TiB a value is a typo.
        const MAX_HISTORY_BYTES: usize = 1 << 40;
        if !(1024..=MAX_HISTORY_BYTES).contains(&self.history_max_bytes) {
            return invalid(
                "history_max_bytes",
                "must be between 1024 and 1099511627776 (1 TiB)",
            );
        }
        if !(1024 * 1024..=MAX_HISTORY_BYTES).contains(&self.history_max_total_bytes) {
            return invalid(
                "history_max_total_bytes",
                "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)",
            );
        }
        if self.history_overrides.iter().any(|o| {
            o.max_bytes
                .is_some_and(|b| !(1024..=MAX_HISTORY_BYTES).contains(&b))
        }) {
            return invalid(
                "history_overrides",
                "max_bytes must be between 1024 and 1099511627776 (1 TiB)",
            );
        }
        if !(64..=1024 * 1024).contains(&self.ws_read_buffer) {
            return invalid("ws_read_buffer", "must be between 64 and 1048576 bytes");
        }
        if self.ws_write_buffer > 16 * 1024 * 1024 {
            return invalid("ws_write_buffer", "must be at most 16777216 bytes");
        }
        if !(1..=4096).contains(&self.max_topic_bytes) {
            // Peers refuse patterns over 4096 bytes: a longer one could never be forwarded.
            return invalid("max_topic_bytes", "must be between 1 and 4096");
        }
        if self.ping_interval.is_zero() {
            return invalid("ping_interval", "must be more than zero");
        }
        if self.idle_timeout <= self.ping_interval {
            return invalid(
                "idle_timeout",
                "must be longer than ping_interval, or healthy clients are cut off",
            );
        }
        if self.history_overrides.iter().any(|o| o.prefix.is_empty()) {
            return invalid(
                "history_overrides",
                "every override needs a non-empty prefix",
            );
        }
        if !(MIN_TOPIC_IDLE_FORGET..=MAX_TOPIC_IDLE_FORGET).contains(&self.topic_idle_forget) {
            return invalid("topic_idle_forget", "must be between 1s and 7days");
        }
        if self.storage == StorageMode::Disk && self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must name a directory with storage = \"disk\"");
        }
        if self.storage == StorageMode::Disk && !cfg!(feature = "disk") {
            return invalid(
                "storage",
                "this build has no disk backend (built without the `disk` feature)",
            );
        }
        if self.dedupe_window > MAX_DEDUPE_WINDOW {
            return invalid("dedupe_window", "must be at most 1day (0 turns it off)");
        }
        if !(1024 * 1024..=MAX_HISTORY_BYTES).contains(&self.dedupe_max_bytes) {
            return invalid(
                "dedupe_max_bytes",
                "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)",
            );
        }
        if !(1..=1_000_000).contains(&self.max_unacked) {
            return invalid("max_unacked", "must be between 1 and 1000000");
        }
        if !(16..=4096).contains(&self.max_id_bytes) {
            return invalid("max_id_bytes", "must be between 16 and 4096");
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return invalid(
                "publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        if self.write_timeout.is_zero() || self.ack_timeout.is_zero() {
            return invalid("write_timeout/ack_timeout", "must be more than zero");
        }
        let day = Duration::from_secs(24 * 3600);
        for (setting, value, max) in [
            (
                "ping_interval",
                self.ping_interval,
                Duration::from_secs(3600),
            ),
            ("idle_timeout", self.idle_timeout, day),
            (
                "write_timeout",
                self.write_timeout,
                Duration::from_secs(600),
            ),
            ("ack_timeout", self.ack_timeout, day),
            (
                "shutdown_grace",
                self.shutdown_grace,
                Duration::from_secs(600),
            ),
        ] {
            if value > max {
                return invalid(
                    setting,
                    &format!("must be at most {}", humantime::format_duration(max)),
                );
            }
        }
        self.validate_auth()
    }

    /// The client-authentication settings (key files are read later, by the authenticator).
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.token_leeway > MAX_TOKEN_LEEWAY {
            return invalid(
                "token_leeway",
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_TOKEN_LEEWAY)
                ),
            );
        }
        if self.hello_timeout.is_zero() || self.hello_timeout > MAX_HELLO_TIMEOUT {
            return invalid(
                "hello_timeout",
                format!(
                    "must be more than zero and at most {}",
                    humantime::format_duration(MAX_HELLO_TIMEOUT)
                ),
            );
        }
        if self.token_hmac_secret.is_some() && self.token_hmac_secret_file.is_some() {
            return invalid(
                "token_hmac_secret/token_hmac_secret_file",
                "give one of them, not both".into(),
            );
        }
        if let Some(secret) = &self.token_hmac_secret {
            crate::auth::check_hmac_secret(secret.0.as_bytes())
                .or_else(|reason| invalid("token_hmac_secret", reason))?;
        }
        if let Some(claim) = &self.anonymous_permissions
            && let Err(err) = crate::auth::Permissions::from_claim(claim, self.max_topic_bytes)
        {
            return invalid("anonymous_permissions", err.to_string());
        }
        if let Some(jwks) = &self.token_jwks
            && let Err(err) = crate::auth::jwks::JwksSource::parse(jwks)
        {
            return invalid("token_jwks", err.to_string());
        }
        let has_key_source = self.token_hmac_secret.is_some()
            || self.token_hmac_secret_file.is_some()
            || !self.token_public_keys.is_empty()
            || self.token_jwks.is_some();
        if self.auth == AuthMode::Token && !has_key_source {
            return invalid(
                "auth",
                "`token` needs a key to check tokens with: token_hmac_secret, \
                 token_hmac_secret_file, token_public_keys or token_jwks"
                    .into(),
            );
        }
        Ok(())
    }
}
