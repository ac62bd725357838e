//! Node settings: one struct, resolved in one place from command-line flags, `RINGKV_*`
//! environment variables and a TOML file (API.md §1).
//!
//! Precedence: a flag beats its environment variable (clap), and both beat the file; the
//! file beats the built-in default. Every bound the node keeps is a field here, named with
//! its unit last.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::constants::{
    DEFAULT_MAX_VALUE_BYTES, DEFAULT_N, DEFAULT_PARTITIONS, MAX_N, MAX_PARTITIONS,
};
use serde::Deserialize;

/// How long gossip keeps the state of a dead node. Each restart of a node leaves its previous
/// generation behind as a dead node, and every gossip message lists the known nodes for half
/// this time, so it bounds what a node restarting over and over (a crash loop) adds to gossip:
/// with a week, one node restarting every five minutes put about 1,000 dead generations in
/// every message within 3.5 days, past the 613 (64-byte ids) to 1,399 (5-byte ids) nodes a
/// node learns (docs/design.md §12); with an hour, at most 6. A member down
/// for longer stays in the ring and in `/status`; its gossip state returns when it does.
pub const DEAD_NODE_GRACE_DEFAULT: Duration = Duration::from_secs(3600);

/// Which storage engine keeps the node's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fjall,
    Memory,
}

/// Which home replicas a read asks (an addition to API.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadFanout {
    /// Every reachable home replica, answering after the first R (Dynamo §4.5, Riak): every
    /// read compares, and repairs, all N copies.
    All,
    /// R replicas (this node first), more only when one fails or is slow (Cassandra,
    /// Garage): a third fewer messages per read at N = 3, R = 2; read repair reaches only
    /// the replicas asked, anti-entropy the rest.
    Quorum,
}

/// `ringkv server` flags. Every field is optional here so the file can fill gaps.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerArgs {
    /// Stable, unique name of this node: [A-Za-z0-9_.-]{1,64}.
    #[arg(long, env = "RINGKV_NODE_ID")]
    pub node_id: Option<String>,
    /// Inter-node address (replication over TCP, gossip over UDP, same port).
    #[arg(long, env = "RINGKV_LISTEN")]
    pub listen: Option<String>,
    /// Client HTTP API address.
    #[arg(long, env = "RINGKV_HTTP")]
    pub http: Option<String>,
    /// Redis-protocol API address (off when absent).
    #[arg(long, env = "RINGKV_RESP")]
    pub resp: Option<String>,
    /// Where this node keeps everything.
    #[arg(long, env = "RINGKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Inter-node address of an existing member; repeatable.
    #[arg(long = "seed", env = "RINGKV_SEED", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// TOML file with the same settings (`node_id = "n1"`, ...).
    #[arg(long, env = "RINGKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Storage engine.
    #[arg(long, env = "RINGKV_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// Failure domain used to spread replicas.
    #[arg(long, env = "RINGKV_ZONE")]
    pub zone: Option<String>,
    /// Relative capacity: share of partitions this node should own.
    #[arg(long, env = "RINGKV_WEIGHT")]
    pub weight: Option<u32>,
    /// Q, ring partitions (a power of two); read only when a new cluster is created.
    #[arg(long, env = "RINGKV_PARTITIONS")]
    pub partitions: Option<u32>,
    /// N, replicas per key; read only when a new cluster is created.
    #[arg(long, env = "RINGKV_N")]
    pub n: Option<u8>,
    /// Default read quorum.
    #[arg(long, env = "RINGKV_R")]
    pub r: Option<u8>,
    /// Default write quorum.
    #[arg(long, env = "RINGKV_W")]
    pub w: Option<u8>,
    #[arg(long, env = "RINGKV_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_INTERVAL_MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    #[arg(long, env = "RINGKV_HINT_INTERVAL_MS")]
    pub hint_interval_ms: Option<u64>,
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Most hints kept for unreachable replicas (an addition to API.md §1).
    #[arg(long, env = "RINGKV_HINT_BACKLOG_MAX")]
    pub hint_backlog_max: Option<usize>,
    /// Most bytes per second this node receives by partition handoff (an addition to
    /// API.md §1).
    #[arg(long, env = "RINGKV_HANDOFF_BYTES_PER_SECOND")]
    pub handoff_bytes_per_second: Option<u64>,
    /// Partitions this node receives at once during a join or leave (an addition).
    #[arg(long, env = "RINGKV_HANDOFF_CONCURRENCY")]
    pub handoff_concurrency: Option<usize>,
    /// How often handoff work (receiving, confirming, dropping handed-over data) is checked.
    #[arg(long, env = "RINGKV_HANDOFF_INTERVAL_MS")]
    pub handoff_interval_ms: Option<u64>,
    /// How long a deleted key's tombstone must stay identical on every home replica, with
    /// every member up and no hint for it anywhere, before it is purged (an addition to
    /// API.md §1). It covers messages still in flight when stability is first seen.
    #[arg(long, env = "RINGKV_TOMBSTONE_GRACE_MS")]
    pub tombstone_grace_ms: Option<u64>,
    /// Which home replicas a read asks: `all` (default) or `quorum` (an addition to API.md
    /// §1).
    #[arg(long, env = "RINGKV_READ_FANOUT", value_enum)]
    pub read_fanout: Option<ReadFanout>,
    /// Bytes of recently read values kept decoded in memory in front of fjall; 0 turns the
    /// cache off (an addition to API.md §1).
    #[arg(long, env = "RINGKV_READ_CACHE_BYTES")]
    pub read_cache_bytes: Option<usize>,
    /// FOR TESTS ONLY: turn off hinted handoff delivery, anti-entropy and read repair, so
    /// that the fault harness can show it detects the losses this causes.
    #[arg(long, hide = true)]
    pub test_disable_repair: bool,
    /// FOR TESTS ONLY: how long gossip keeps the state of a dead node (or of a restarted
    /// node's previous generation), instead of `DEAD_NODE_GRACE_DEFAULT`.
    #[arg(long, hide = true)]
    pub test_dead_node_grace_ms: Option<u64>,
    /// FOR TESTS ONLY: `Limits::http_concurrency_max`, so that a test fills it cheaply.
    #[arg(long, hide = true)]
    pub test_http_concurrency_max: Option<usize>,
    /// FOR TESTS ONLY: `Limits::http_connections_max`.
    #[arg(long, hide = true)]
    pub test_http_connections_max: Option<usize>,
    /// FOR TESTS ONLY: `Limits::http_header_read_timeout`, in milliseconds.
    #[arg(long, hide = true)]
    pub test_http_header_read_timeout_ms: Option<u64>,
    /// FOR TESTS ONLY: `Limits::http_body_timeout`, in milliseconds.
    #[arg(long, hide = true)]
    pub test_http_body_timeout_ms: Option<u64>,
    /// FOR TESTS ONLY: `Limits::resp_command_timeout`, in milliseconds.
    #[arg(long, hide = true)]
    pub test_resp_command_timeout_ms: Option<u64>,
}

/// A TOML value that is one string or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The same settings as read from `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    node_id: Option<String>,
    listen: Option<String>,
    http: Option<String>,
    resp: Option<String>,
    data_dir: Option<PathBuf>,
    /// `seed` as the flag is named (one address or a list); `seeds` is accepted too.
    #[serde(default, alias = "seeds", deserialize_with = "one_or_many")]
    seed: Vec<String>,
    storage: Option<StorageKind>,
    zone: Option<String>,
    weight: Option<u32>,
    partitions: Option<u32>,
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    gossip_interval_ms: Option<u64>,
    anti_entropy_interval_ms: Option<u64>,
    hint_interval_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_value_bytes: Option<usize>,
    hint_backlog_max: Option<usize>,
    handoff_bytes_per_second: Option<u64>,
    handoff_concurrency: Option<usize>,
    handoff_interval_ms: Option<u64>,
    tombstone_grace_ms: Option<u64>,
    read_fanout: Option<ReadFanout>,
    read_cache_bytes: Option<usize>,
    /// The `[limits]` table: any `Limits` field, durations in milliseconds (`_ms`).
    #[serde(default)]
    limits: FileLimits,
}

/// The `[limits]` table of the config file: each field overrides the `Limits` default of the
/// same name (a duration `x` is given as `x_ms`). Every value must be at least 1.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_frame_bytes: Option<usize>,
    peer_inflight_max: Option<usize>,
    inbound_inflight_max: Option<usize>,
    inbound_connections_max: Option<usize>,
    inbound_connections_per_ip_max: Option<usize>,
    inbound_hello_timeout_ms: Option<u64>,
    inbound_idle_timeout_ms: Option<u64>,
    peer_idle_timeout_ms: Option<u64>,
    http_concurrency_max: Option<usize>,
    http_connections_max: Option<usize>,
    http_header_read_timeout_ms: Option<u64>,
    http_body_timeout_ms: Option<u64>,
    resp_command_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    reconnect_backoff_max_ms: Option<u64>,
    request_timeout_max_ms: Option<u64>,
    peer_timeout_max_ms: Option<u64>,
    read_speculate_after_ms: Option<u64>,
}

/// The smallest `max_frame_bytes` allowed: a frame must carry a ring of the largest Q and a
/// handoff chunk, whatever the value limit.
pub const MIN_FRAME_BYTES: usize = 1024 * 1024;

/// Everything a node needs to know about itself, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub resp: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub storage: StorageKind,
    pub zone: String,
    pub weight: u32,
    pub partitions: u32,
    pub n: u8,
    /// The default R and W as configured (2 unless given); `Node::default_r` / `default_w`
    /// are what a request naming no quorum uses.
    pub r: u8,
    pub w: u8,
    /// Whether R and W were given (flag, file or environment) rather than defaulted.
    pub quorums_given: (bool, bool),
    pub gossip_interval: Duration,
    pub anti_entropy_interval: Duration,
    pub hint_interval: Duration,
    pub request_timeout: Duration,
    pub max_value_bytes: usize,
    /// Most hints held for unreachable replicas; past it new hints are refused and counted.
    pub hint_backlog_max: usize,
    /// Handoff throttle: most record bytes received per second.
    pub handoff_bytes_per_second: u64,
    /// Partitions received at once.
    pub handoff_concurrency: usize,
    pub handoff_interval: Duration,
    /// How long a tombstone stays causally stable before it is purged.
    pub tombstone_grace: Duration,
    /// Which home replicas a read asks.
    pub read_fanout: ReadFanout,
    /// Budget of the storage engine's read cache (0: off).
    pub read_cache_bytes: usize,
    /// Tests only: no hinted handoff delivery, anti-entropy or read repair.
    pub disable_repair: bool,
    /// How long gossip keeps a dead node's state (every restart leaves one behind).
    pub dead_node_grace: Duration,
    pub limits: Limits,
}

/// Bounds that are not on the command line but are still named and explicit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest inter-node frame, in bytes.
    pub max_frame_bytes: usize,
    /// Requests in flight to one peer at once; more wait for a slot until their deadline.
    pub peer_inflight_max: usize,
    /// Requests served concurrently on one inbound inter-node connection.
    pub inbound_inflight_max: usize,
    /// Inbound inter-node connections open at once; more are closed on accept.
    pub inbound_connections_max: usize,
    /// Inbound inter-node connections open at once from one source address; more from it are
    /// closed on accept, so one host cannot take every slot. Peers on one host (a local
    /// cluster on 127.0.0.1) share it: each holds one connection to this node.
    pub inbound_connections_per_ip_max: usize,
    /// How long an inbound inter-node connection has to send its first frame, which must be a
    /// `Hello`; then it is closed (one that never speaks would hold its slot for ever).
    pub inbound_hello_timeout: Duration,
    /// An inbound inter-node connection with no request in flight that receives nothing for
    /// this long is closed. Longer than `peer_idle_timeout`, after which a peer closes its own
    /// unused connection first, so a real peer's call never races this close.
    pub inbound_idle_timeout: Duration,
    /// An outbound connection with no call in flight that has sent nothing for this long is
    /// closed; the next call opens another.
    pub peer_idle_timeout: Duration,
    /// Client HTTP requests the node works on at once, counted from when a request's body
    /// has arrived; one more waits for a slot until its deadline, then answers 503.
    pub http_concurrency_max: usize,
    /// Client HTTP connections open at once; one more is answered 503 and closed. Each holds
    /// at most one request body (HTTP/1.1), so this also bounds the bodies held.
    pub http_connections_max: usize,
    /// How long a client HTTP connection may take to send a request's headers, counted from
    /// when the node starts waiting for them: it also closes a keep-alive connection idle
    /// this long.
    pub http_header_read_timeout: Duration,
    /// How long a client HTTP request's body may take to arrive, counted from its headers;
    /// past it the request answers 408.
    pub http_body_timeout: Duration,
    /// How long the node waits for the rest of a RESP command it has begun to receive (time
    /// spent running earlier commands or writing replies does not count); past it the
    /// connection is told and closed.
    pub resp_command_timeout: Duration,
    /// Timeout for establishing an inter-node connection.
    pub connect_timeout: Duration,
    /// Largest backoff between reconnection attempts to a peer.
    pub reconnect_backoff_max: Duration,
    /// Largest timeout a client may ask for with `timeout_ms`.
    pub request_timeout_max: Duration,
    /// Longest a node works on one request of a peer, whatever deadline the peer sent: the
    /// request holds one of the connection's `inbound_inflight_max` slots until then.
    pub peer_timeout_max: Duration,
    /// With `--read-fanout quorum`: how long a read waits for the replicas it asked before it
    /// asks the remaining home replicas too (a speculative read).
    pub read_speculate_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024 * 1024,
            peer_inflight_max: 1024,
            inbound_inflight_max: 1024,
            inbound_connections_max: 1024,
            inbound_connections_per_ip_max: 64,
            inbound_hello_timeout: Duration::from_secs(5),
            inbound_idle_timeout: Duration::from_secs(300),
            peer_idle_timeout: Duration::from_secs(120),
            http_concurrency_max: 4096,
            http_connections_max: 4096,
            http_header_read_timeout: Duration::from_secs(30),
            http_body_timeout: Duration::from_secs(30),
            resp_command_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_millis(500),
            reconnect_backoff_max: Duration::from_secs(2),
            request_timeout_max: Duration::from_secs(60),
            peer_timeout_max: Duration::from_secs(300),
            read_speculate_after: Duration::from_millis(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "missing required setting `{0}` (flag --{1}, env RINGKV_{2}, or `{0}` in the config file)"
    )]
    Missing(&'static str, &'static str, &'static str),
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn invalid(name: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        name,
        reason: reason.into(),
    }
}

fn parse_addr(name: &'static str, text: &str) -> Result<SocketAddr, SettingsError> {
    text.to_socket_addrs()
        .map_err(|e| invalid(name, format!("{text:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid(name, format!("{text:?} resolves to no address")))
}

/// The default R and W when none is given (API.md §1).
pub const DEFAULT_QUORUM: u8 = 2;

impl Settings {
    /// Whether `addr` is this node's own inter-node address: the same, or, when the node
    /// listens on every interface (`0.0.0.0` / `::`), a loopback address with its port.
    pub fn is_own_address(&self, addr: &SocketAddr) -> bool {
        *addr == self.listen
            || (self.listen.ip().is_unspecified()
                && addr.ip().is_loopback()
                && addr.port() == self.listen.port())
    }

    /// Whether this node starts a new cluster (no seed, or only itself) if it has no ring yet.
    pub fn founds_cluster(&self) -> bool {
        self.seeds.iter().all(|s| self.is_own_address(s))
    }

    /// The default quorum, R or W (`configured`, given or not), for a cluster of N = `n`.
    pub fn default_quorum(&self, configured: u8, given: bool, n: u8) -> u8 {
        if given { configured } else { configured.min(n) }
    }

    /// Resolves flags (and their env vars) over the config file over the defaults.
    pub fn resolve(args: ServerArgs) -> Result<Settings, SettingsError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| SettingsError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            None => FileSettings::default(),
        };
        let limits = limits(&file.limits, &args)?;
        let node_id = args
            .node_id
            .or(file.node_id)
            .ok_or(SettingsError::Missing("node_id", "node-id", "NODE_ID"))?;
        let node_id = NodeId::new(node_id).map_err(|e| invalid("node_id", e.to_string()))?;
        let listen = args
            .listen
            .or(file.listen)
            .ok_or(SettingsError::Missing("listen", "listen", "LISTEN"))?;
        let http = args
            .http
            .or(file.http)
            .ok_or(SettingsError::Missing("http", "http", "HTTP"))?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or(SettingsError::Missing("data_dir", "data-dir", "DATA_DIR"))?;
        let seeds = if args.seeds.is_empty() {
            file.seed
        } else {
            args.seeds
        };
        let seeds = seeds
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_addr("seed", s.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let settings = Settings {
            node_id,
            listen: parse_addr("listen", &listen)?,
            http: parse_addr("http", &http)?,
            resp: args
                .resp
                .or(file.resp)
                .map(|r| parse_addr("resp", &r))
                .transpose()?,
            data_dir,
            seeds,
            storage: args.storage.or(file.storage).unwrap_or(StorageKind::Fjall),
            zone: args.zone.or(file.zone).unwrap_or_else(|| "default".into()),
            weight: args.weight.or(file.weight).unwrap_or(1),
            partitions: args
                .partitions
                .or(file.partitions)
                .unwrap_or(DEFAULT_PARTITIONS),
            n: args.n.or(file.n).unwrap_or(DEFAULT_N),
            r: args.r.or(file.r).unwrap_or(DEFAULT_QUORUM),
            w: args.w.or(file.w).unwrap_or(DEFAULT_QUORUM),
            quorums_given: (args.r.or(file.r).is_some(), args.w.or(file.w).is_some()),
            gossip_interval: ms(args
                .gossip_interval_ms
                .or(file.gossip_interval_ms)
                .unwrap_or(1000)),
            anti_entropy_interval: ms(args
                .anti_entropy_interval_ms
                .or(file.anti_entropy_interval_ms)
                .unwrap_or(60_000)),
            hint_interval: ms(args
                .hint_interval_ms
                .or(file.hint_interval_ms)
                .unwrap_or(1000)),
            request_timeout: ms(args
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(2000)),
            max_value_bytes: args
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(DEFAULT_MAX_VALUE_BYTES),
            hint_backlog_max: args
                .hint_backlog_max
                .or(file.hint_backlog_max)
                .unwrap_or(100_000),
            handoff_bytes_per_second: args
                .handoff_bytes_per_second
                .or(file.handoff_bytes_per_second)
                .unwrap_or(32 * 1024 * 1024),
            handoff_concurrency: args
                .handoff_concurrency
                .or(file.handoff_concurrency)
                .unwrap_or(2),
            handoff_interval: ms(args
                .handoff_interval_ms
                .or(file.handoff_interval_ms)
                .unwrap_or(1000)),
            tombstone_grace: ms(args
                .tombstone_grace_ms
                .or(file.tombstone_grace_ms)
                .unwrap_or(60_000)),
            read_fanout: args
                .read_fanout
                .or(file.read_fanout)
                .unwrap_or(ReadFanout::All),
            read_cache_bytes: args
                .read_cache_bytes
                .or(file.read_cache_bytes)
                .unwrap_or(ringkv_storage::DEFAULT_READ_CACHE_BYTES),
            disable_repair: args.test_disable_repair,
            dead_node_grace: args
                .test_dead_node_grace_ms
                .map_or(DEAD_NODE_GRACE_DEFAULT, ms),
            limits,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if !self.partitions.is_power_of_two() || self.partitions > MAX_PARTITIONS {
            return Err(invalid(
                "partitions",
                format!(
                    "must be a power of two up to {MAX_PARTITIONS}, got {}",
                    self.partitions
                ),
            ));
        }
        if self.n == 0 || self.n > MAX_N {
            return Err(invalid("n", format!("must be 1..={MAX_N}, got {}", self.n)));
        }
        // A default R or W that was not given is 2, or N if the cluster's N is smaller; one
        // given is checked against this node's N when it founds the cluster (a joining node
        // learns N from the ring), and answered 400 by requests if the cluster's N is smaller.
        let given = [
            ("r", self.r, self.quorums_given.0),
            ("w", self.w, self.quorums_given.1),
        ];
        for (name, q, given) in given {
            let most = if self.founds_cluster() { self.n } else { MAX_N };
            if given && (q == 0 || q > most) {
                return Err(invalid(name, format!("must be 1..=N ({most}), got {q}")));
            }
        }
        if self.weight == 0 || self.weight > 1000 {
            return Err(invalid(
                "weight",
                format!("must be 1..=1000, got {}", self.weight),
            ));
        }
        if self.zone.is_empty() || self.zone.len() > 64 {
            return Err(invalid("zone", "must be 1 to 64 characters"));
        }
        for (name, d) in [
            ("gossip_interval_ms", self.gossip_interval),
            ("hint_interval_ms", self.hint_interval),
            ("request_timeout_ms", self.request_timeout),
            ("anti_entropy_interval_ms", self.anti_entropy_interval),
            ("handoff_interval_ms", self.handoff_interval),
            ("tombstone_grace_ms", self.tombstone_grace),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if self.handoff_bytes_per_second < 1024 {
            return Err(invalid("handoff_bytes_per_second", "must be at least 1024"));
        }
        if self.handoff_concurrency == 0 || self.handoff_concurrency > 64 {
            return Err(invalid("handoff_concurrency", "must be 1..=64"));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes >= self.limits.max_frame_bytes / 4 {
            return Err(invalid(
                "max_value_bytes",
                format!("must be 1..{}", self.limits.max_frame_bytes / 4),
            ));
        }
        Ok(())
    }
}

/// `Limits::default()` under the config file's `[limits]` table under the `--test-*` flags;
/// every value at least 1, and the relations the transport relies on kept.
fn limits(file: &FileLimits, args: &ServerArgs) -> Result<Limits, SettingsError> {
    fn at_least_one<T: PartialEq + From<u8>>(
        name: &'static str,
        v: Option<T>,
    ) -> Result<Option<T>, SettingsError> {
        match v {
            Some(v) if v == T::from(0) => Err(invalid(name, "must be at least 1")),
            v => Ok(v),
        }
    }
    let count = |name: &'static str, v: Option<usize>, default: usize| {
        at_least_one(name, v).map(|v| v.unwrap_or(default))
    };
    let millis = |name: &'static str, v: Option<u64>, default: Duration| {
        at_least_one(name, v).map(|v| v.map_or(default, ms))
    };
    let d = Limits::default();
    let f = file;
    let limits = Limits {
        max_frame_bytes: count("max_frame_bytes", f.max_frame_bytes, d.max_frame_bytes)?,
        peer_inflight_max: count(
            "peer_inflight_max",
            f.peer_inflight_max,
            d.peer_inflight_max,
        )?,
        inbound_inflight_max: count(
            "inbound_inflight_max",
            f.inbound_inflight_max,
            d.inbound_inflight_max,
        )?,
        inbound_connections_max: count(
            "inbound_connections_max",
            f.inbound_connections_max,
            d.inbound_connections_max,
        )?,
        inbound_connections_per_ip_max: count(
            "inbound_connections_per_ip_max",
            f.inbound_connections_per_ip_max,
            d.inbound_connections_per_ip_max,
        )?,
        inbound_hello_timeout: millis(
            "inbound_hello_timeout_ms",
            f.inbound_hello_timeout_ms,
            d.inbound_hello_timeout,
        )?,
        inbound_idle_timeout: millis(
            "inbound_idle_timeout_ms",
            f.inbound_idle_timeout_ms,
            d.inbound_idle_timeout,
        )?,
        peer_idle_timeout: millis(
            "peer_idle_timeout_ms",
            f.peer_idle_timeout_ms,
            d.peer_idle_timeout,
        )?,
        http_concurrency_max: count(
            "test_http_concurrency_max",
            args.test_http_concurrency_max,
            count(
                "http_concurrency_max",
                f.http_concurrency_max,
                d.http_concurrency_max,
            )?,
        )?,
        http_connections_max: count(
            "test_http_connections_max",
            args.test_http_connections_max,
            count(
                "http_connections_max",
                f.http_connections_max,
                d.http_connections_max,
            )?,
        )?,
        http_header_read_timeout: millis(
            "test_http_header_read_timeout_ms",
            args.test_http_header_read_timeout_ms,
            millis(
                "http_header_read_timeout_ms",
                f.http_header_read_timeout_ms,
                d.http_header_read_timeout,
            )?,
        )?,
        http_body_timeout: millis(
            "test_http_body_timeout_ms",
            args.test_http_body_timeout_ms,
            millis(
                "http_body_timeout_ms",
                f.http_body_timeout_ms,
                d.http_body_timeout,
            )?,
        )?,
        resp_command_timeout: millis(
            "test_resp_command_timeout_ms",
            args.test_resp_command_timeout_ms,
            millis(
                "resp_command_timeout_ms",
                f.resp_command_timeout_ms,
                d.resp_command_timeout,
            )?,
        )?,
        connect_timeout: millis(
            "connect_timeout_ms",
            f.connect_timeout_ms,
            d.connect_timeout,
        )?,
        reconnect_backoff_max: millis(
            "reconnect_backoff_max_ms",
            f.reconnect_backoff_max_ms,
            d.reconnect_backoff_max,
        )?,
        request_timeout_max: millis(
            "request_timeout_max_ms",
            f.request_timeout_max_ms,
            d.request_timeout_max,
        )?,
        peer_timeout_max: millis(
            "peer_timeout_max_ms",
            f.peer_timeout_max_ms,
            d.peer_timeout_max,
        )?,
        read_speculate_after: millis(
            "read_speculate_after_ms",
            f.read_speculate_after_ms,
            d.read_speculate_after,
        )?,
    };
    if limits.max_frame_bytes < MIN_FRAME_BYTES {
        return Err(invalid(
            "max_frame_bytes",
            format!("must be at least {MIN_FRAME_BYTES}"),
        ));
    }
    // A peer closes its own idle connection before this node does, so a real peer's call
    // never races the inbound idle close (`Limits::inbound_idle_timeout`).
    if limits.inbound_idle_timeout <= limits.peer_idle_timeout {
        return Err(invalid(
            "inbound_idle_timeout_ms",
            "must be longer than peer_idle_timeout_ms",
        ));
    }
    if limits.inbound_connections_per_ip_max > limits.inbound_connections_max {
        return Err(invalid(
            "inbound_connections_per_ip_max",
            "must be at most inbound_connections_max",
        ));
    }
    Ok(limits)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServerArgs {
        ServerArgs {
            node_id: Some("n1".into()),
            listen: Some("127.0.0.1:7001".into()),
            http: Some("127.0.0.1:8001".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::resolve(base()).unwrap();
        assert_eq!((s.partitions, s.n, s.r, s.w), (1024, 3, 2, 2));
        assert_eq!(s.storage, StorageKind::Fjall);
        assert_eq!(s.zone, "default");
        assert_eq!(s.request_timeout, Duration::from_millis(2000));
        assert_eq!(s.max_value_bytes, 1_048_576);
        assert!(s.resp.is_none());
        assert_eq!(
            s.read_fanout,
            ReadFanout::All,
            "reads ask every home replica"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("ringkv-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\nzone = \"z9\"\nw = 3\nseeds = [\"127.0.0.1:7002\"]\n\
             read_fanout = \"quorum\"\n",
        )
        .unwrap();
        let mut args = base();
        args.config = Some(path);
        args.zone = Some("z1".into());
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.node_id.as_str(), "n1", "the flag wins");
        assert_eq!(s.zone, "z1");
        assert_eq!(s.w, 3, "the file fills what flags leave out");
        assert_eq!(s.seeds, vec!["127.0.0.1:7002".parse().unwrap()]);
        assert_eq!(s.read_fanout, ReadFanout::Quorum);
    }

    #[test]
    fn default_quorums_follow_the_clusters_n_and_given_ones_are_checked_when_founding() {
        // `--n 1` alone: R and W default to N, not to an impossible 2.
        let mut a = base();
        a.n = Some(1);
        let s = Settings::resolve(a).unwrap();
        assert_eq!(s.quorums_given, (false, false));
        assert_eq!(s.default_quorum(s.r, false, 1), 1);
        assert_eq!(s.default_quorum(s.w, false, 5), 2, "2 when N allows it");
        // Given: as given. Founding, it must fit this node's N; joining, the cluster's N
        // is not known yet.
        let mut a = base();
        a.r = Some(4);
        assert!(Settings::resolve(a).unwrap_err().to_string().contains("r"));
        let mut a = base();
        a.r = Some(4);
        a.seeds = vec!["127.0.0.1:7002".into()];
        let s = Settings::resolve(a).unwrap();
        assert_eq!(s.default_quorum(s.r, s.quorums_given.0, 5), 4);
        let mut a = base();
        a.w = Some(0);
        a.seeds = vec!["127.0.0.1:7002".into()];
        assert!(Settings::resolve(a).is_err(), "0 is never a quorum");
    }

    #[test]
    fn a_seed_naming_this_node_on_loopback_founds_the_cluster() {
        let mut a = base();
        a.listen = Some("0.0.0.0:7001".into());
        a.seeds = vec!["127.0.0.1:7001".into()];
        let s = Settings::resolve(a).unwrap();
        assert!(s.founds_cluster());
        let mut a = base();
        a.listen = Some("0.0.0.0:7001".into());
        a.seeds = vec!["127.0.0.1:7009".into()];
        assert!(!Settings::resolve(a).unwrap().founds_cluster());
        let mut a = base();
        a.seeds = vec!["127.0.0.1:7001".into()];
        assert!(
            Settings::resolve(a).unwrap().founds_cluster(),
            "exactly itself"
        );
    }

    #[test]
    fn the_file_names_seeds_as_the_flag_does() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("seed = \"127.0.0.1:7002\"", vec!["127.0.0.1:7002"]),
            (
                "seed = [\"127.0.0.1:7002\", \"127.0.0.1:7003\"]",
                vec!["127.0.0.1:7002", "127.0.0.1:7003"],
            ),
            ("seeds = [\"127.0.0.1:7004\"]", vec!["127.0.0.1:7004"]),
        ] {
            let path = dir.path().join("node.toml");
            std::fs::write(&path, text).unwrap();
            let mut args = base();
            args.config = Some(path);
            let s = Settings::resolve(args).unwrap();
            let want: Vec<SocketAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(s.seeds, want, "{text}");
        }
    }

    #[test]
    fn the_files_limits_table_sets_limits_under_the_test_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "zone = \"z1\"\n[limits]\nhttp_connections_max = 100\nhttp_concurrency_max = 50\n\
             resp_command_timeout_ms = 1500\npeer_inflight_max = 7\n\
             inbound_idle_timeout_ms = 9000\npeer_idle_timeout_ms = 8000\n",
        )
        .unwrap();
        let mut args = base();
        args.config = Some(path);
        args.test_http_concurrency_max = Some(3);
        let s = Settings::resolve(args).unwrap();
        let d = Limits::default();
        assert_eq!(s.zone, "z1");
        assert_eq!(s.limits.http_connections_max, 100);
        assert_eq!(s.limits.http_concurrency_max, 3, "the test flag wins");
        assert_eq!(s.limits.resp_command_timeout, Duration::from_millis(1500));
        assert_eq!(s.limits.peer_inflight_max, 7);
        assert_eq!(s.limits.inbound_idle_timeout, Duration::from_secs(9));
        assert_eq!(s.limits.peer_idle_timeout, Duration::from_secs(8));
        assert_eq!(
            s.limits.max_frame_bytes, d.max_frame_bytes,
            "the rest default"
        );
        assert_eq!(s.limits.read_speculate_after, d.read_speculate_after);
    }

    #[test]
    fn bad_limits_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (text, named) in [
            ("[limits]\nhttp_connections_max = 0", "http_connections_max"),
            ("[limits]\nconnect_timeout_ms = 0", "connect_timeout_ms"),
            ("[limits]\nhttp_conections_max = 5", "unknown field"),
            ("[limits]\nmax_frame_bytes = 1000", "max_frame_bytes"),
            (
                "[limits]\npeer_idle_timeout_ms = 300000",
                "inbound_idle_timeout_ms",
            ),
            (
                "[limits]\ninbound_connections_per_ip_max = 2000",
                "inbound_connections_per_ip_max",
            ),
            // A value limit a frame cannot carry is refused by the existing check.
            (
                "max_value_bytes = 1000000\n[limits]\nmax_frame_bytes = 2000000",
                "max_value_bytes",
            ),
        ] {
            let path = dir.path().join("node.toml");
            std::fs::write(&path, text).unwrap();
            let mut args = base();
            args.config = Some(path);
            let e = Settings::resolve(args).unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
        let mut args = base();
        args.test_resp_command_timeout_ms = Some(0);
        assert!(
            Settings::resolve(args)
                .unwrap_err()
                .to_string()
                .contains("test_resp_command_timeout_ms")
        );
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let mut a = base();
        a.w = Some(4);
        assert!(Settings::resolve(a).unwrap_err().to_string().contains("w"));
        let mut a = base();
        a.partitions = Some(1000);
        assert!(
            Settings::resolve(a)
                .unwrap_err()
                .to_string()
                .contains("power of two")
        );
        let mut a = base();
        a.node_id = Some("bad id".into());
        assert!(Settings::resolve(a).is_err());
        let mut a = base();
        a.http = None;
        assert!(
            Settings::resolve(a)
                .unwrap_err()
                .to_string()
                .contains("--http")
        );
    }
}
