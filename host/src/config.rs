//! Configuration: the `switchyard.toml` file, its defaults and its checks.
//!
//! A [`Config`] is read from TOML ([`Config::from_toml`] / [`Config::load`]),
//! then the binary applies its command-line flags on top. Unknown keys and bad
//! values are errors that name the key; [`Config::validate`] checks the rules
//! that span several keys. Paths in a file are relative to the file's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchyard_grammar::Mode;

/// Why a configuration cannot be used. Each message names the file, key or
/// folder it is about and says what is expected; all of them are the
/// user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The file is not valid TOML, or a key or value is unknown or has the
    /// wrong type.
    #[error("{}{message}", in_file(file.as_deref()))]
    Syntax {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// What is wrong and where.
        message: String,
    },
    /// A value breaks a rule (a range, or a rule between several keys).
    #[error("{}{message}", in_file(file.as_deref()))]
    Invalid {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The rule, with the keys and values involved.
        message: String,
    },
    /// The controllers folder cannot be read.
    #[error(
        "cannot read the controllers folder {}: {error}; create it or pass --controllers DIR",
        path.display()
    )]
    ControllersDir {
        /// The folder.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
}

fn in_file(file: Option<&Path>) -> String {
    file.map(|file| format!("config file {}: ", file.display()))
        .unwrap_or_default()
}

impl ConfigError {
    /// A broken rule, said by `message`.
    pub fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: None,
            message: message.into(),
        }
    }

    /// The same error, about `path`.
    fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                file: Some(path.to_owned()),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                file: Some(path.to_owned()),
                message,
            },
            other => other,
        }
    }
}

/// Returns [`ConfigError::Invalid`] with the formatted message unless
/// `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(ConfigError::invalid(format!($($message)+)));
        }
    };
}

/// How a route's connections are spread over instances. Read from the
/// config as `"shared"`, `"per-connection"` or `"keyed:<param>"`, parsed
/// once, there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum InstanceMode {
    /// One instance for every connection of the route.
    Shared,
    /// One instance per distinct value of this route parameter.
    Keyed(String),
    /// One instance per connection.
    PerConnection,
}

impl InstanceMode {
    /// Parses `shared`, `per-connection` or `keyed:<param>`.
    pub fn parse(text: &str) -> Result<InstanceMode, String> {
        Ok(match switchyard_grammar::instance_mode(text)? {
            Mode::Shared => InstanceMode::Shared,
            Mode::PerConnection => InstanceMode::PerConnection,
            Mode::Keyed(param) => InstanceMode::Keyed(param.to_owned()),
        })
    }
}

impl TryFrom<String> for InstanceMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        InstanceMode::parse(&text)
    }
}

impl std::fmt::Display for InstanceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceMode::Shared => f.write_str("shared"),
            InstanceMode::Keyed(param) => write!(f, "keyed:{param}"),
            InstanceMode::PerConnection => f.write_str("per-connection"),
        }
    }
}

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
    /// Tokens: where they come from, how they are verified, how roles
    /// are read.
    pub auth: Auth,
    /// Origins a browser may connect from, e.g. `https://app.example.com`.
    /// Empty (the default) accepts any origin. A request without an
    /// `Origin` header (not a browser) is never refused for its origin.
    pub allowed_origins: Vec<String>,
    /// permessage-deflate, for every route unless a route overrides it.
    pub compression: Compression,
    /// Settings for single routes, by route name (`[routes.chat]`); they
    /// override what the controller declares and the global limits.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Where compiled modules are kept between starts (relative to the
    /// config file); empty turns the cache off.
    pub module_cache: PathBuf,
    /// The folder whose files answer plain `GET`s that match no route
    /// (relative to the config file); empty (the default) serves none.
    pub public: PathBuf,
    /// The admin listener (metrics, health checks, the dashboard).
    pub admin: Admin,
    /// How log lines look.
    pub log_format: LogFormat,
    /// Several nodes serving one application over Redis; off (one node, no
    /// broker) when the section is absent.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: this node's place in a cluster of Switchyard nodes that
/// share broadcasts, groups and presence through one Redis server (see
/// `host/src/cluster/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// The broker, e.g. `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// This node's name in the cluster, unique among the live nodes.
    /// Empty (the default): `<host name>-<process id>-<random>`, new at
    /// every start.
    pub node_id: String,
    /// Prefix of every Redis key and channel, so that several applications
    /// can share one Redis.
    pub prefix: String,
    /// How often this node says it is alive and reads which nodes are.
    pub heartbeat_ms: u64,
    /// A node silent this long is dead: its connections leave every other
    /// node's view within this plus `heartbeat_ms`.
    pub node_timeout_ms: u64,
    /// How often a lost broker connection is retried (and the one log
    /// line saying so is written).
    pub retry_ms: u64,
    /// How often every other node's connections are read again in full,
    /// which bounds how long a lost presence update can leave the view
    /// wrong.
    pub resync_ms: u64,
    /// Messages waiting to go to the broker, and messages from the broker
    /// waiting to be delivered here; beyond either, messages are dropped
    /// and counted.
    pub queue_messages: usize,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            node_id: String::new(),
            prefix: "switchyard".to_owned(),
            heartbeat_ms: 1000,
            node_timeout_ms: 5000,
            retry_ms: 2000,
            resync_ms: 30_000,
            queue_messages: 65_536,
        }
    }
}

impl Cluster {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("cluster.heartbeat_ms", self.heartbeat_ms),
            ("cluster.retry_ms", self.retry_ms),
            ("cluster.resync_ms", self.resync_ms),
            ("cluster.queue_messages", self.queue_messages as u64),
        ] {
            ensure!(value > 0, "`{key}` must be greater than 0");
        }
        ensure!(
            self.node_timeout_ms >= 2 * self.heartbeat_ms,
            "`cluster.node_timeout_ms` ({}) must be at least twice `cluster.heartbeat_ms` ({}) \
             so that one late heartbeat does not make a live node look dead",
            self.node_timeout_ms,
            self.heartbeat_ms
        );
        ensure!(
            self.redis_url.starts_with("redis://")
                || self.redis_url.starts_with("rediss://")
                || self.redis_url.starts_with("redis+unix://")
                || self.redis_url.starts_with("unix://"),
            "`cluster.redis_url` ({:?}) must be a Redis URL such as redis://127.0.0.1:6379/",
            self.redis_url
        );
        if let Err(err) = redis::Client::open(self.redis_url.as_str()) {
            ensure!(
                false,
                "`cluster.redis_url` ({:?}) is not a usable Redis URL: {err}",
                self.redis_url
            );
        }
        ensure!(
            !self.prefix.is_empty() && !self.prefix.contains(char::is_whitespace),
            "`cluster.prefix` ({:?}) must be a non-empty word",
            self.prefix
        );
        ensure!(
            !self.node_id.contains(char::is_whitespace),
            "`cluster.node_id` ({:?}) must not contain spaces",
            self.node_id
        );
        Ok(())
    }
}

/// The admin listener: Prometheus metrics at `/metrics`, `/healthz` and
/// `/readyz`, on an address of its own, never on the public port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Where to listen, e.g. `127.0.0.1:9090`; off when unset.
    pub listen: Option<SocketAddr>,
    /// Serve the dashboard at `/_switchyard/`: on the admin listener when
    /// there is one, otherwise on the public listener, where its live feed
    /// needs a token with one of `dashboard_roles`.
    pub dashboard: bool,
    /// Roles of which a client of the dashboard's feed on the public
    /// listener needs one. Never empty: the feed shows the whole server.
    pub dashboard_roles: Vec<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: None,
            dashboard: true,
            dashboard_roles: vec!["ROLE_ADMIN".to_owned()],
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// permessage-deflate (RFC 7692): negotiated with each client that offers
/// it, within these settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compression {
    /// Accept a client's offer of permessage-deflate.
    pub enabled: bool,
    /// Messages the server sends that are shorter than this go
    /// uncompressed (compressing a short message costs more CPU than the
    /// bytes it saves).
    pub min_bytes: usize,
    /// The deflate level, 0 (store) to 9 (smallest, slowest).
    pub level: u32,
    /// Keep the server's compression context from one message to the next:
    /// smaller messages, but about 300 KiB of compressor per connection, and
    /// a broadcast is compressed once per recipient instead of once.
    /// Without it (the default) compressors belong to the worker threads.
    pub server_context_takeover: bool,
    /// Let clients keep their compression context: smaller messages from
    /// them, but about 46 KiB of decompressor per connection that sends a
    /// compressed message. Without it (the default) decompressors belong to
    /// the worker threads.
    pub client_context_takeover: bool,
    /// The largest LZ77 window the server compresses with, 9 to 15 bits (a
    /// client may ask for less).
    pub server_max_window_bits: u8,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            enabled: true,
            min_bytes: 256,
            level: 1,
            server_context_takeover: false,
            client_context_takeover: false,
            server_max_window_bits: 15,
        }
    }
}

impl Compression {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        ensure!(
            self.level <= 9,
            "`{key}.level` must be 0 to 9, not {}",
            self.level
        );
        ensure!(
            (9..=15).contains(&self.server_max_window_bits),
            "`{key}.server_max_window_bits` must be 9 to 15, not {}",
            self.server_max_window_bits
        );
        Ok(())
    }
}

/// A route's changes to the global `[compression]` settings: each key set
/// replaces the global one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionOverride {
    /// See [`Compression::enabled`].
    pub enabled: Option<bool>,
    /// See [`Compression::min_bytes`].
    pub min_bytes: Option<usize>,
    /// See [`Compression::level`].
    pub level: Option<u32>,
    /// See [`Compression::server_context_takeover`].
    pub server_context_takeover: Option<bool>,
    /// See [`Compression::client_context_takeover`].
    pub client_context_takeover: Option<bool>,
    /// See [`Compression::server_max_window_bits`].
    pub server_max_window_bits: Option<u8>,
}

impl CompressionOverride {
    fn apply(&self, global: &Compression) -> Compression {
        Compression {
            enabled: self.enabled.unwrap_or(global.enabled),
            min_bytes: self.min_bytes.unwrap_or(global.min_bytes),
            level: self.level.unwrap_or(global.level),
            server_context_takeover: self
                .server_context_takeover
                .unwrap_or(global.server_context_takeover),
            client_context_takeover: self
                .client_context_takeover
                .unwrap_or(global.client_context_takeover),
            server_max_window_bits: self
                .server_max_window_bits
                .unwrap_or(global.server_max_window_bits),
        }
    }
}

/// Settings for one route, found by its name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Connections this route may hold at once (503 beyond); overrides
    /// `limits.max_connections_per_route`. 0 means no limit.
    pub max_connections: Option<usize>,
    /// Roles of which a client needs one; replaces the controller's own
    /// `is_granted`. An empty list makes the route public.
    pub is_granted: Option<Vec<String>>,
    /// Instance mode, replacing the controller's own: `"shared"`,
    /// `"per-connection"` or `"keyed:<route parameter>"`.
    pub instance: Option<InstanceMode>,
    /// Live instances this route may have at once (a keyed or
    /// per-connection route); overrides `limits.max_instances_per_route`.
    pub max_instances: Option<usize>,
    /// Changes to the global `[compression]` settings for this route.
    pub compression: Option<CompressionOverride>,
}

/// How clients prove who they are: JSON Web Tokens, checked at the upgrade.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Shared secret for HS256 tokens (at least 32 bytes); enables HS256.
    pub hs256_secret: Option<String>,
    /// Name of an environment variable holding the HS256 secret, to keep
    /// it out of the file; enables HS256.
    pub hs256_secret_env: Option<String>,
    /// PEM file with an RSA public key; enables RS256.
    pub rs256_public_key: Option<PathBuf>,
    /// PEM file with a P-256 public key; enables ES256.
    pub es256_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Claim holding the roles: a list of strings or one space-separated
    /// string.
    pub roles_claim: String,
    /// Cookie read for a token when neither the `Authorization` header nor
    /// the `access_token` query parameter has one. Unset: cookies are not read.
    pub cookie: Option<String>,
    /// Close a connection with 1008 when its token expires.
    pub close_on_expiry: bool,
    /// Roles that include other roles, e.g. `ROLE_ADMIN = ["ROLE_USER"]`.
    /// Applied transitively before the route's roles are checked.
    pub role_hierarchy: BTreeMap<String, Vec<String>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            hs256_secret: None,
            hs256_secret_env: None,
            rs256_public_key: None,
            es256_public_key: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
            roles_claim: "roles".to_owned(),
            cookie: None,
            close_on_expiry: false,
            role_hierarchy: BTreeMap::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            controllers: PathBuf::from("controllers"),
            hot_reload: true,
            limits: Limits::default(),
            sandbox: Sandbox::default(),
            auth: Auth::default(),
            allowed_origins: Vec::new(),
            compression: Compression::default(),
            routes: BTreeMap::new(),
            module_cache: PathBuf::from(".switchyard/modules"),
            public: PathBuf::new(),
            admin: Admin::default(),
            log_format: LogFormat::Text,
            cluster: None,
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
    /// Messages that may wait in one connection's outbound queue, the
    /// broadcasts it has not read yet included (not its own, which it does
    /// not get). A client whose queue is
    /// full is closed as a slow consumer (1008).
    pub outbound_queue_messages: usize,
    /// Bytes that may wait in one connection's outbound queue, counted the
    /// same way.
    pub outbound_queue_bytes: usize,
    /// Time a client has to send a complete upgrade request.
    pub handshake_timeout_ms: u64,
    /// Time a peer has to answer our close frame before the socket is dropped.
    pub close_timeout_ms: u64,
    /// After a close the host started while the peer may still be sending
    /// (a message too large, a protocol error, a slow consumer), the host
    /// reads and discards up to this many bytes (within `close_timeout_ms`)
    /// until the peer closes, so that the peer receives the close frame
    /// rather than a reset. 0 drops the socket at once.
    pub close_linger_bytes: usize,
    /// Time given to connections to close when the server shuts down.
    pub shutdown_timeout_ms: u64,
    /// Bytes read from a socket per system call at most. They are read
    /// into a buffer of the worker thread's, not of the connection's, so
    /// a large value costs no memory per connection.
    pub read_buffer_bytes: usize,
    /// A connection that has received nothing for this long gets a ping
    /// from the server. 0 turns pings off.
    pub ping_interval_ms: u64,
    /// A connection that has received nothing (not even a pong) for this
    /// long is closed with 1001. 0 turns the idle timeout off.
    pub idle_timeout_ms: u64,
    /// Connections the server holds at once; beyond, upgrades get 503.
    pub max_connections: usize,
    /// Connections one route may hold at once (503 beyond); 0 means no
    /// limit but the global one. `[routes.NAME] max_connections` overrides it.
    pub max_connections_per_route: usize,
    /// Connections one client IP address may hold at once (429 beyond);
    /// 0 means no limit.
    pub max_connections_per_ip: usize,
    /// Live instances one keyed or per-connection route may have at once;
    /// a connection that would need one more gets 503.
    pub max_instances_per_route: usize,
    /// Accepted connections that have not finished their upgrade, server
    /// wide; beyond, a new connection is answered 503 and closed at once.
    pub max_handshakes: usize,
    /// Upgrades in progress from one client IP address; beyond, a new
    /// connection from it is answered 429 and closed at once. 0: no limit.
    pub max_handshakes_per_ip: usize,
    /// How long the key-value store of a keyed instance outlives its last
    /// connection, so a room that empties briefly keeps its state.
    pub keyed_state_keep_ms: u64,
    /// Stores of emptied keys one route keeps at most; beyond, the oldest
    /// is forgotten. 0 keeps none.
    pub keyed_state_keep_keys: usize,
    /// Bytes (keys and values) of the stores of emptied keys one route
    /// keeps at most; beyond, the oldest are forgotten.
    pub keyed_state_keep_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            outbound_queue_messages: 1024,
            outbound_queue_bytes: 4 << 20,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            close_linger_bytes: 16 << 20,
            shutdown_timeout_ms: 10_000,
            read_buffer_bytes: 64 << 10,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_connections: 50_000,
            max_connections_per_route: 0,
            max_connections_per_ip: 0,
            max_instances_per_route: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_ip: 64,
            keyed_state_keep_ms: 60_000,
            keyed_state_keep_keys: 10_000,
            keyed_state_keep_bytes: 64 << 20,
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

    /// How long a keyed instance's key-value store outlives it.
    pub fn keyed_state_keep(&self) -> Duration {
        Duration::from_millis(self.keyed_state_keep_ms)
    }

    /// Quiet time before the server pings, if pings are on.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_ms > 0).then(|| Duration::from_millis(self.ping_interval_ms))
    }

    /// Quiet time before the server closes a connection, if that is on.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
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
    /// When an event grows an instance's memory past this percentage of
    /// `max_memory_bytes`, the instance is replaced by a fresh one after
    /// that event, as a hot reload replaces it: every connection stays
    /// open, and what the instance kept in its own memory is gone (what it
    /// keeps in the host stays). A guest that leaks (ComponentizeJS 0.23
    /// leaks about 1 KiB per call) keeps serving instead of reaching the
    /// cap, where the event that hits it fails with 1011. 0 turns it off.
    pub recycle_memory_percent: u8,
    /// Largest value (with its key) in an instance's key-value store.
    pub state_value_bytes: usize,
    /// Total size of keys and values in an instance's key-value store.
    pub state_total_bytes: usize,
    /// Largest attachment of one connection (`host.set-attachment`).
    pub attachment_bytes: usize,
    /// Reuse pre-allocated instance slots (wasmtime's pooling allocator)
    /// so that creating an instance costs microseconds. Needs virtual
    /// address space; falls back to on-demand allocation if unavailable.
    pub pooling: bool,
    /// Instances the pool holds slots for, across all routes;
    /// [`RESERVED_INSTANCES`] of them are kept for loading and swapping
    /// modules, so connections may need at most `pool_instances -
    /// RESERVED_INSTANCES` instances.
    pub pool_instances: u32,
}

/// Instance slots of `sandbox.pool_instances` never given to a
/// connection's instance: loading a module (its `describe()`) and swapping
/// a version in need them even when connections have taken the rest.
pub const RESERVED_INSTANCES: u32 = 8;

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            event_budget_ms: 500,
            max_memory_bytes: 64 << 20,
            recycle_memory_percent: 75,
            state_value_bytes: 64 << 10,
            state_total_bytes: 16 << 20,
            attachment_bytes: 16 << 10,
            pooling: true,
            pool_instances: 1_000,
        }
    }
}

impl Config {
    /// Parses a TOML document. Paths stay as written.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            file: None,
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The connection limit of route `name`, if it has one.
    pub fn route_max_connections(&self, name: &str) -> Option<usize> {
        let limit = self
            .routes
            .get(name)
            .and_then(|route| route.max_connections)
            .unwrap_or(self.limits.max_connections_per_route);
        (limit > 0).then_some(limit)
    }

    /// The roles route `name` requires: the config's `is_granted` for it if
    /// set, else what the controller declares.
    pub fn route_is_granted<'a>(&'a self, name: &str, declared: &'a [String]) -> &'a [String] {
        self.routes
            .get(name)
            .and_then(|route| route.is_granted.as_deref())
            .unwrap_or(declared)
    }

    /// The instance mode of route `name`: the config's if set (checked
    /// against `pattern`), else what the controller declares.
    pub fn route_instance(
        &self,
        name: &str,
        declared: &InstanceMode,
        pattern: &crate::routing::router::RoutePattern,
    ) -> Result<InstanceMode, ConfigError> {
        let mode = self
            .routes
            .get(name)
            .and_then(|route| route.instance.clone())
            .unwrap_or_else(|| declared.clone());
        if let InstanceMode::Keyed(param) = &mode {
            ensure!(
                pattern.captures(param),
                "route {name}: instances keyed by `{param}`, but the pattern {pattern} captures no `{{{param}}}`"
            );
        }
        Ok(mode)
    }

    /// The compression settings of route `name`.
    pub fn route_compression(&self, name: &str) -> Compression {
        match self.routes.get(name).and_then(|r| r.compression.as_ref()) {
            Some(changes) => changes.apply(&self.compression),
            None => self.compression.clone(),
        }
    }

    /// Live instances route `name` may have at once.
    pub fn route_max_instances(&self, name: &str) -> usize {
        self.routes
            .get(name)
            .and_then(|route| route.max_instances)
            .unwrap_or(self.limits.max_instances_per_route)
    }

    /// Reads a config file; relative paths in it are taken from its folder
    /// and made absolute, so that every part of the server (the loader, the
    /// folder watchers, the builder) sees each path in one form, whatever
    /// the working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut config = Config::from_toml(&text).map_err(|err| err.in_file(path))?;
        let path = std::path::absolute(path).map_err(read)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let resolve = |file: &mut PathBuf| {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        };
        resolve(&mut config.controllers);
        if config.module_cache().is_some() {
            resolve(&mut config.module_cache);
        }
        if config.public().is_some() {
            resolve(&mut config.public);
        }
        let auth = &mut config.auth;
        for key in [&mut auth.rs256_public_key, &mut auth.es256_public_key] {
            key.iter_mut().for_each(resolve);
        }
        Ok(config)
    }

    /// The folder of static files, unless they are off.
    pub fn public(&self) -> Option<&Path> {
        (!self.public.as_os_str().is_empty()).then_some(self.public.as_path())
    }

    /// Where compiled modules are cached, unless the cache is off.
    pub fn module_cache(&self) -> Option<&Path> {
        (!self.module_cache.as_os_str().is_empty()).then_some(self.module_cache.as_path())
    }

    /// The controllers folder in its one canonical form (absolute, links
    /// resolved). Module files are named, watched and compared by paths
    /// under it: notify reports absolute paths under the folder it watches,
    /// so a relative or differently spelled folder would make the same file
    /// look like two.
    pub fn controllers_dir(&self) -> Result<PathBuf, ConfigError> {
        std::fs::canonicalize(&self.controllers).map_err(|error| ConfigError::ControllersDir {
            path: self.controllers.clone(),
            error,
        })
    }

    /// Checks rules that involve more than one key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compression.validate("compression")?;
        for name in self.routes.keys() {
            self.route_compression(name)
                .validate(&format!("routes.{name}.compression"))?;
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_message_bytes", l.max_message_bytes as u64),
            ("limits.max_frame_bytes", l.max_frame_bytes as u64),
            (
                "limits.outbound_queue_messages",
                l.outbound_queue_messages as u64,
            ),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes as u64),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.close_timeout_ms", l.close_timeout_ms),
            ("limits.read_buffer_bytes", l.read_buffer_bytes as u64),
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_handshakes", l.max_handshakes as u64),
            (
                "limits.max_instances_per_route",
                l.max_instances_per_route as u64,
            ),
            (
                "sandbox.pool_instances",
                u64::from(self.sandbox.pool_instances),
            ),
            ("sandbox.event_budget_ms", self.sandbox.event_budget_ms),
            (
                "sandbox.max_memory_bytes",
                self.sandbox.max_memory_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            ensure!(value > 0, "`{key}` must be greater than 0");
        }
        ensure!(
            self.sandbox.recycle_memory_percent < 100,
            "`sandbox.recycle_memory_percent` ({}) must be below 100 (0 turns recycling off)",
            self.sandbox.recycle_memory_percent
        );
        ensure!(
            self.sandbox.pool_instances > RESERVED_INSTANCES,
            "`sandbox.pool_instances` ({}) must be more than {RESERVED_INSTANCES}: that many slots \
             are kept for loading and swapping modules",
            self.sandbox.pool_instances
        );
        ensure!(
            l.max_frame_bytes <= l.max_message_bytes,
            "`limits.max_frame_bytes` ({}) must not exceed `limits.max_message_bytes` ({})",
            l.max_frame_bytes,
            l.max_message_bytes
        );
        ensure!(
            l.outbound_queue_bytes >= l.max_message_bytes,
            "`limits.outbound_queue_bytes` ({}) must be at least `limits.max_message_bytes` ({}) \
             so that one largest message fits",
            l.outbound_queue_bytes,
            l.max_message_bytes
        );
        if l.ping_interval_ms > 0 && l.idle_timeout_ms > 0 {
            ensure!(
                l.idle_timeout_ms > l.ping_interval_ms,
                "`limits.idle_timeout_ms` ({}) must be longer than `limits.ping_interval_ms` ({}) \
                 so that a live client has time to answer a ping",
                l.idle_timeout_ms,
                l.ping_interval_ms
            );
        }
        if let Some(secret) = &self.auth.hs256_secret {
            ensure!(
                secret.len() >= 32,
                "`auth.hs256_secret` is {} bytes; use at least 32 random bytes",
                secret.len()
            );
        }
        ensure!(
            !self.auth.roles_claim.is_empty(),
            "`auth.roles_claim` must not be empty"
        );
        ensure!(
            !self.admin.dashboard_roles.is_empty(),
            "`admin.dashboard_roles` must name at least one role: the dashboard shows the whole \
             server (turn it off with `admin.dashboard = false`)"
        );
        ensure!(
            self.sandbox.state_value_bytes <= self.sandbox.state_total_bytes,
            "`sandbox.state_value_bytes` ({}) must not exceed `sandbox.state_total_bytes` ({})",
            self.sandbox.state_value_bytes,
            self.sandbox.state_total_bytes
        );
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
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
        assert_eq!(config.compression, Compression::default());
        assert_eq!(
            config.limits.close_linger_bytes,
            Limits::default().close_linger_bytes
        );
        assert_eq!(config.module_cache, Config::default().module_cache);
        assert_eq!(config.admin, Admin::default());
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.public(), Some(Path::new("public")));
        assert_eq!(Config::default().public(), None);
    }

    #[test]
    fn the_dashboard_needs_a_role_and_public_follows_the_file() {
        let err = Config::from_toml("[admin]\ndashboard_roles = []\n").unwrap_err();
        assert!(err.to_string().contains("admin.dashboard_roles"), "{err}");
        let off = Config::from_toml("[admin]\ndashboard = false\n").unwrap();
        assert!(!off.admin.dashboard);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, "public = \"site\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().public(),
            Some(dir.path().join("site").as_path())
        );
    }

    #[test]
    fn admin_log_format_and_cache_keys() {
        let config = Config::from_toml(
            "log_format = \"json\"\nmodule_cache = \"\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
        )
        .unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.module_cache(), None);
        assert_eq!(config.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let err = Config::from_toml("log_format = \"yaml\"\n").unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
        let err = Config::from_toml("[admin]\nport = 9090\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn the_cluster_section_is_off_by_default_and_checked_when_present() {
        assert!(Config::from_toml("").unwrap().cluster.is_none());
        let config = Config::from_toml("[cluster]\nnode_id = \"a\"\n").unwrap();
        config.validate().unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.redis_url, "redis://127.0.0.1:6379/");
        assert_eq!(
            (cluster.node_id.as_str(), cluster.prefix.as_str()),
            ("a", "switchyard")
        );
        for (text, key) in [
            ("redis_url = \"http://x\"", "cluster.redis_url"),
            ("redis_url = \"redis://[::1\"", "cluster.redis_url"),
            (
                "heartbeat_ms = 1000\nnode_timeout_ms = 1500",
                "cluster.node_timeout_ms",
            ),
            ("prefix = \"\"", "cluster.prefix"),
            ("node_id = \"a b\"", "cluster.node_id"),
            ("queue_messages = 0", "cluster.queue_messages"),
        ] {
            let err = Config::from_toml(&format!("[cluster]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = Config::from_toml("[cluster]\nredis = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("redis"), "{err}");
    }

    #[test]
    fn a_route_changes_only_the_compression_keys_it_sets() {
        let config = Config::from_toml(
            r#"
            [compression]
            level = 6
            min_bytes = 100
            [routes.chat.compression]
            enabled = false
            [routes.feed.compression]
            server_max_window_bits = 10
            "#,
        )
        .unwrap();
        let chat = config.route_compression("chat");
        assert!(!chat.enabled);
        assert_eq!((chat.level, chat.min_bytes), (6, 100));
        let feed = config.route_compression("feed");
        assert!(feed.enabled);
        assert_eq!((feed.level, feed.server_max_window_bits), (6, 10));
        assert_eq!(config.route_compression("echo"), config.compression);

        let err = Config::from_toml(
            "[compression]
level = 10
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("compression.level"), "{err}");
        let err = Config::from_toml(
            "[routes.a.compression]
server_max_window_bits = 8
",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("routes.a.compression.server_max_window_bits"),
            "{err}"
        );
        let err = Config::from_toml(
            "[compression]
window = 9
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
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
        assert_eq!(
            config.limits.outbound_queue_messages,
            Limits::default().outbound_queue_messages
        );
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
        let err = Config::from_toml("[limits]\noutbound_queue_messages = -3\n").unwrap_err();
        assert!(err.to_string().contains("outbound_queue_messages"), "{err}");
        let err = Config::from_toml("[limits]\noutbound_queue_messages = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("outbound_queue_messages"), "{err}");
    }

    #[test]
    fn cross_key_rules() {
        let err = Config::from_toml("[limits]\noutbound_queue_messages = 0\n").unwrap_err();
        assert!(
            err.to_string().contains("limits.outbound_queue_messages"),
            "{err}"
        );
        let err = Config::from_toml("[limits]\nmax_frame_bytes = 4194304\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_frame_bytes"), "{err}");
        let err =
            Config::from_toml("[limits]\nmax_message_bytes = 8388608\nmax_frame_bytes = 1024\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("limits.outbound_queue_bytes"),
            "{err}"
        );
        let err = Config::from_toml("[sandbox]\npool_instances = 8\n").unwrap_err();
        assert!(err.to_string().contains("must be more than 8"), "{err}");
        Config::from_toml("[sandbox]\npool_instances = 9\n").unwrap();
    }

    #[test]
    fn route_sections_override_limits() {
        let config = Config::from_toml(
            r#"
            [limits]
            max_connections_per_route = 100
            [routes.chat]
            max_connections = 5
            [routes.echo]
            max_connections = 0
            "#,
        )
        .unwrap();
        assert_eq!(config.route_max_connections("chat"), Some(5));
        assert_eq!(config.route_max_connections("echo"), None);
        assert_eq!(config.route_max_connections("other"), Some(100));
        assert_eq!(Config::default().route_max_connections("chat"), None);
        let err = Config::from_toml(
            "[routes.chat]
max_conections = 5
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let err = Config::from_toml(
            "[limits]
ping_interval_ms = 1000
idle_timeout_ms = 1000
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("limits.idle_timeout_ms"), "{err}");
        let config = Config::from_toml(
            "[limits]
ping_interval_ms = 0
idle_timeout_ms = 500
",
        )
        .unwrap();
        assert_eq!(config.limits.ping_interval(), None);
        assert_eq!(
            config.limits.idle_timeout(),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, "controllers = \"mods\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.controllers, dir.path().join("mods"));
        assert_eq!(config.module_cache, dir.path().join(".switchyard/modules"));
        let err = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
