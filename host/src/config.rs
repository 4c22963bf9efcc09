//! Configuration: the `switchyard.toml` file, its defaults and its checks.
//!
//! A [`Config`] is read from TOML ([`Config::from_toml`] / [`Config::load`]),
//! then the binary applies its command-line flags on top. Unknown keys and bad
//! values are errors that name the key; [`Config::validate`] checks the rules
//! that span several keys. Paths in a file are relative to the file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the server needs to know at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The folder holding controller modules (`*.wasm`) and, for `build`
    /// and `up`, their source crates.
    pub controllers: PathBuf,
    /// Watch the controllers folder and swap changed modules in live.
    pub hot_reload: bool,
    /// Limits on clients and connections.
    pub limits: Limits,
    /// Limits on guest code.
    pub sandbox: Sandbox,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            controllers: PathBuf::from("controllers"),
            hot_reload: true,
            limits: Limits::default(),
            sandbox: Sandbox::default(),
        }
    }
}

/// Limits on what clients and connections may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message, in bytes, a client may send or a controller may send;
    /// a larger incoming message closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Largest single frame payload a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Messages that may wait in one connection's outbound queue. A client
    /// whose queue is full is closed as a slow consumer (1008).
    pub outbound_queue_messages: usize,
    /// Bytes that may wait in one connection's outbound queue.
    pub outbound_queue_bytes: usize,
    /// Events that may wait for one controller instance before the readers
    /// of its connections stop reading (back-pressure to the clients).
    pub event_queue: usize,
    /// Time a client has to send a complete upgrade request.
    pub handshake_timeout_ms: u64,
    /// Time a peer has to answer our close frame before the socket is dropped.
    pub close_timeout_ms: u64,
    /// Time given to connections to close when the server shuts down.
    pub shutdown_timeout_ms: u64,
    /// Capacity of each connection's read buffer. Small keeps idle
    /// connections cheap; it grows for large messages as needed.
    pub read_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 4 << 20,
            event_queue: 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            read_buffer_bytes: 4096,
        }
    }
}

impl Limits {
    /// Time a client has to send a complete upgrade request.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Time a peer has to answer our close frame.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    /// Time given to connections to close when the server shuts down.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Limits on guest code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// CPU time one event may take before the instance is stopped.
    pub event_budget_ms: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Largest value (with its key) in an instance's key-value store.
    pub state_value_bytes: usize,
    /// Total size of keys and values in an instance's key-value store.
    pub state_total_bytes: usize,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            event_budget_ms: 500,
            max_memory_bytes: 64 << 20,
            state_value_bytes: 64 << 10,
            state_total_bytes: 16 << 20,
        }
    }
}

impl Config {
    /// Parses a TOML document. Paths stay as written.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|err| anyhow::anyhow!("{err}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a config file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read config file {}: {err}", path.display()))?;
        let mut config = Config::from_toml(&text)
            .map_err(|err| anyhow::anyhow!("config file {}: {err}", path.display()))?;
        if config.controllers.is_relative() {
            let base = path.parent().unwrap_or(Path::new(""));
            config.controllers = base.join(&config.controllers);
        }
        Ok(config)
    }

    /// Checks rules that involve more than one key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.limits;
        let positive = [
            ("limits.max_message_bytes", l.max_message_bytes as u64),
            ("limits.max_frame_bytes", l.max_frame_bytes as u64),
            (
                "limits.outbound_queue_messages",
                l.outbound_queue_messages as u64,
            ),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes as u64),
            ("limits.event_queue", l.event_queue as u64),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.close_timeout_ms", l.close_timeout_ms),
            ("limits.read_buffer_bytes", l.read_buffer_bytes as u64),
            ("sandbox.event_budget_ms", self.sandbox.event_budget_ms),
            (
                "sandbox.max_memory_bytes",
                self.sandbox.max_memory_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            anyhow::ensure!(value > 0, "`{key}` must be greater than 0");
        }
        anyhow::ensure!(
            l.max_frame_bytes <= l.max_message_bytes,
            "`limits.max_frame_bytes` ({}) must not exceed `limits.max_message_bytes` ({})",
            l.max_frame_bytes,
            l.max_message_bytes
        );
        anyhow::ensure!(
            l.outbound_queue_bytes >= l.max_message_bytes,
            "`limits.outbound_queue_bytes` ({}) must be at least `limits.max_message_bytes` ({}) \
             so that one largest message fits",
            l.outbound_queue_bytes,
            l.max_message_bytes
        );
        anyhow::ensure!(
            self.sandbox.state_value_bytes <= self.sandbox.state_total_bytes,
            "`sandbox.state_value_bytes` ({}) must not exceed `sandbox.state_total_bytes` ({})",
            self.sandbox.state_value_bytes,
            self.sandbox.state_total_bytes
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.controllers, PathBuf::from("controllers"));
        assert_eq!(config.limits.max_message_bytes, 1 << 20);
        assert_eq!(config.sandbox.event_budget_ms, 500);
    }

    #[test]
    fn sample_config_at_repo_root_parses() {
        let text = include_str!("../../switchyard.toml");
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn values_are_read() {
        let config = Config::from_toml(
            r#"
            listen = "0.0.0.0:9000"
            controllers = "mods"
            [limits]
            max_message_bytes = 2048
            max_frame_bytes = 1024
            outbound_queue_bytes = 4096
            [sandbox]
            event_budget_ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.controllers, PathBuf::from("mods"));
        assert_eq!(config.limits.max_message_bytes, 2048);
        assert_eq!(config.limits.max_frame_bytes, 1024);
        assert_eq!(config.sandbox.event_budget_ms, 50);
        assert_eq!(config.limits.event_queue, Limits::default().event_queue);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_mesage_bytes = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_mesage_bytes"), "{text}");
        let err = Config::from_toml("lissen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml("listen = \"not an address\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("listen"), "{text}");
        let err = Config::from_toml("[limits]\nevent_queue = -3\n").unwrap_err();
        assert!(err.to_string().contains("event_queue"), "{err}");
        let err = Config::from_toml("[limits]\nevent_queue = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("event_queue"), "{err}");
    }

    #[test]
    fn cross_key_rules() {
        let err = Config::from_toml("[limits]\nevent_queue = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.event_queue"), "{err}");
        let err = Config::from_toml("[limits]\nmax_frame_bytes = 4194304\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_frame_bytes"), "{err}");
        let err =
            Config::from_toml("[limits]\nmax_message_bytes = 8388608\nmax_frame_bytes = 1024\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("limits.outbound_queue_bytes"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, "controllers = \"mods\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.controllers, dir.path().join("mods"));
        let err = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
