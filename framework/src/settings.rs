//! Settings from a TOML file, `CLUSTERFUNK_*` environment variables and command-line flags, with
//! the same names everywhere (docs/operations.md, "Configuration"): the key `replica_factor` is
//! `CLUSTERFUNK_REPLICA_FACTOR` and `--replica-factor`. Later sources win: file, then
//! environment, then flags. An unknown key or a bad value is refused with the source, the key
//! and the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Builder, ConfigError, Mode, Rebalance};

/// Every setting a node takes, each optional: what is not set keeps the builder's default.
///
/// ```
/// use clusterfunk::Settings;
/// let file: Settings = "shards = 256\ngossip_interval = \"100ms\"\n".parse().unwrap();
/// let mut flags = Settings::default();
/// flags.shards = Some(512);
/// let s = file.overlay(flags);
/// assert_eq!(s.shards, Some(512));
/// assert_eq!(s.gossip_interval, Some(std::time::Duration::from_millis(100)));
/// let builder = clusterfunk::Cluster::builder().settings(&s).unwrap();
/// # let _ = builder;
/// ```
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// Cluster key ([`Builder::name`]).
    pub name: Option<String>,
    /// Environment ([`Builder::env`]).
    pub env: Option<String>,
    /// Data directory ([`Builder::data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// `host:port` to listen on for other nodes ([`Builder::listen`]).
    pub listen: Option<String>,
    /// The host (or `host:port`) other nodes and links use for this node ([`Builder::advertise`]).
    pub advertise: Option<String>,
    /// Seeds ([`Builder::join`]).
    pub join: Option<Vec<String>>,
    /// Dashboard and management API `host:port` ([`Builder::dashboard`]).
    pub dashboard: Option<String>,
    /// Create a new cluster ([`Builder::bootstrap`]).
    pub bootstrap: Option<bool>,
    /// mDNS discovery ([`Builder::mdns`]).
    pub mdns: Option<bool>,
    /// Whether this node serves non-member clients ([`Builder::accept_clients`]).
    pub accept_clients: Option<bool>,
    /// The service's own HTTP server `host:port` ([`Builder::http`]).
    pub http: Option<String>,
    /// Its worker threads ([`Builder::http_workers`]).
    pub http_workers: Option<usize>,
    /// Shard count ([`Builder::shards`]).
    pub shards: Option<u32>,
    /// Copies of each shard ([`Builder::replica_factor`]).
    pub replica_factor: Option<u32>,
    /// Voters kept in dev mode ([`Builder::voters`]).
    pub voters: Option<usize>,
    /// This node's weight ([`Builder::weight`]).
    pub weight: Option<u32>,
    /// Worker threads declared ([`Builder::workers`]).
    pub workers: Option<u32>,
    /// The most workers a node may declare ([`Builder::max_workers`]).
    pub max_workers: Option<u32>,
    /// Static worker indices: this node's first index ([`Builder::static_workers`]).
    pub worker_index: Option<u64>,
    /// Static worker indices: the total ([`Builder::static_workers`]).
    pub worker_total: Option<u64>,
    /// The instance id that names this node for people ([`Builder::instance_id`]).
    pub instance_id: Option<String>,
    /// Failure zone ([`Builder::zone`]).
    pub zone: Option<String>,
    /// `dev` or `production` ([`Builder::mode`]).
    pub mode: Option<Mode>,
    /// Production mode: node ids admitted without a command ([`Builder::member`]).
    pub members: Option<Vec<String>>,
    /// A file holding the cluster secret ([`Builder::secret`]).
    pub secret_file: Option<PathBuf>,
    /// The cluster secret itself: from `CLUSTERFUNK_SECRET` only (never a file key or a flag).
    pub secret: Option<String>,
    /// A file holding the management token ([`Builder::management_token`]).
    pub token_file: Option<PathBuf>,
    /// The management token itself: from `CLUSTERFUNK_TOKEN` only.
    pub token: Option<String>,
    /// Idle time before an entity stops ([`Builder::passivate_after`]).
    pub passivate_after: Option<Duration>,
    /// Hook time budget ([`Builder::hook_budget`]).
    pub hook_budget: Option<Duration>,
    /// Gossip heartbeat interval ([`Builder::gossip_interval`]).
    pub gossip_interval: Option<Duration>,
    /// Silence before a member is suspect ([`Builder::failure_detector`]).
    pub suspect_after: Option<Duration>,
    /// Silence before a member is down ([`Builder::failure_detector`]).
    pub down_after: Option<Duration>,
    /// Raft leader heartbeat ([`Builder::raft_timing`]).
    pub raft_heartbeat: Option<Duration>,
    /// Raft election timeout, low end ([`Builder::raft_timing`]).
    pub election_timeout_min: Option<Duration>,
    /// Raft election timeout, high end ([`Builder::raft_timing`]).
    pub election_timeout_max: Option<Duration>,
    /// L ([`Builder::lease`]).
    pub lease: Option<Duration>,
    /// ρ ([`Builder::lease_drift`]).
    pub lease_drift: Option<f64>,
    /// G ([`Builder::lease_grace`]).
    pub lease_grace: Option<Duration>,
    /// Rebalance debounce ([`Builder::rebalance_debounce`]).
    pub rebalance_debounce: Option<Duration>,
    /// `auto` or `manual`: the rebalancing mode a new cluster starts in ([`Builder::rebalance`]).
    pub rebalance: Option<Rebalance>,
    /// `SHARD=WEIGHT` pairs: the shard weights a new cluster starts with ([`Builder::shard_weight`]).
    pub shard_weights: Option<Vec<(u32, u32)>>,
    /// Remote request timeout ([`Builder::proxy_timeouts`]).
    pub proxy_request_timeout: Option<Duration>,
    /// How long a message waits for its shard's owner ([`Builder::proxy_timeouts`]).
    pub proxy_route_wait: Option<Duration>,
    /// Frames queued per peer ([`Builder::proxy_queues`]).
    pub proxy_queue: Option<usize>,
    /// Messages waiting for a route at once ([`Builder::proxy_queues`]).
    pub proxy_max_waiting: Option<usize>,
}

/// Every field, the secret and the token shown only as set or not.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        let mut d = f.debug_struct("Settings");
        macro_rules! show {
            ($($field:ident),* $(,)?) => { $(d.field(stringify!($field), &self.$field);)* };
        }
        show!(
            name,
            env,
            data_dir,
            listen,
            advertise,
            join,
            dashboard,
            bootstrap,
            mdns,
            accept_clients,
            http,
            http_workers,
            shards,
            replica_factor,
            voters,
            weight,
            workers,
            max_workers,
            worker_index,
            worker_total,
            instance_id,
            zone,
            mode,
            members,
            secret_file,
            token_file,
            passivate_after,
            hook_budget,
            gossip_interval,
            suspect_after,
            down_after,
            raft_heartbeat,
            election_timeout_min,
            election_timeout_max,
            lease,
            lease_drift,
            lease_grace,
            rebalance_debounce,
            rebalance,
            shard_weights,
            proxy_request_timeout,
            proxy_route_wait,
            proxy_queue,
            proxy_max_waiting,
        );
        d.field("secret", &redacted(&self.secret)).field("token", &redacted(&self.token)).finish()
    }
}

/// The keys, as a file, `CLUSTERFUNK_<KEY>` and `--<key>` (with `-` for `_`) name them.
pub const KEYS: &[&str] = &[
    "name",
    "env",
    "data_dir",
    "listen",
    "advertise",
    "join",
    "dashboard",
    "bootstrap",
    "mdns",
    "accept_clients",
    "http",
    "http_workers",
    "shards",
    "replica_factor",
    "voters",
    "weight",
    "workers",
    "max_workers",
    "worker_index",
    "worker_total",
    "instance_id",
    "zone",
    "mode",
    "members",
    "secret_file",
    "token_file",
    "passivate_after",
    "hook_budget",
    "gossip_interval",
    "suspect_after",
    "down_after",
    "raft_heartbeat",
    "election_timeout_min",
    "election_timeout_max",
    "lease",
    "lease_drift",
    "lease_grace",
    "rebalance_debounce",
    "rebalance",
    "shard_weights",
    "proxy_request_timeout",
    "proxy_route_wait",
    "proxy_queue",
    "proxy_max_waiting",
];

/// Environment variables in the `CLUSTERFUNK_` namespace that are not node settings.
const OTHER_VARS: &[&str] = &["CLUSTERFUNK_NODE", "CLUSTERFUNK_CONFIG"];

/// A value as a source gives it.
enum Raw {
    One(String),
    Many(Vec<String>),
}

impl Raw {
    fn one(self) -> Result<String, String> {
        match self {
            Raw::One(s) => Ok(s),
            Raw::Many(_) => Err("expected one value, not a list".into()),
        }
    }

    fn many(self) -> Vec<String> {
        match self {
            Raw::One(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
            Raw::Many(v) => v,
        }
    }
}

/// Parses a duration with its unit: `250ms`, `1s`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as \"250ms\" or \"2s\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "" => return Err(format!("{s:?} has no unit: write \"{s}ms\" or \"{s}s\"")),
        u => return Err(format!("{u:?} is not a unit (ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn number<T: std::str::FromStr>(raw: Raw) -> Result<T, String> {
    let s = raw.one()?;
    s.trim().parse().map_err(|_| format!("{s:?} is not a whole number in range"))
}

/// Parses one `SHARD=WEIGHT` pair (`"7=10"`); the ranges are checked by [`Builder::build`].
pub fn parse_shard_weight(item: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| s.trim().parse::<u32>().ok();
    match item.split_once('=') {
        Some((s, w)) => parse(s).zip(parse(w)),
        None => None,
    }
    .ok_or_else(|| format!("{item:?} is not SHARD=WEIGHT (such as \"7=10\")"))
}

fn shard_weights(items: Vec<String>) -> Result<Vec<(u32, u32)>, String> {
    items.iter().map(|i| parse_shard_weight(i)).collect()
}

fn boolean(raw: Raw) -> Result<bool, String> {
    match raw.one()?.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

impl Settings {
    /// Sets `key` from `raw`; `Err(None)` for an unknown key.
    fn set(&mut self, key: &str, raw: Raw) -> Result<(), Option<String>> {
        let dur = |raw: Raw| raw.one().and_then(|s| parse_duration(&s));
        let text = |raw: Raw| raw.one();
        let r: Result<(), String> = (|| {
            match key {
                "name" => self.name = Some(text(raw)?),
                "env" => self.env = Some(text(raw)?),
                "data_dir" => self.data_dir = Some(text(raw)?.into()),
                "listen" => self.listen = Some(text(raw)?),
                "advertise" => self.advertise = Some(text(raw)?),
                "join" => self.join = Some(raw.many()),
                "dashboard" => self.dashboard = Some(text(raw)?),
                "bootstrap" => self.bootstrap = Some(boolean(raw)?),
                "mdns" => self.mdns = Some(boolean(raw)?),
                "accept_clients" => self.accept_clients = Some(boolean(raw)?),
                "http" => self.http = Some(text(raw)?),
                "http_workers" => self.http_workers = Some(number(raw)?),
                "shards" => self.shards = Some(number(raw)?),
                "replica_factor" => self.replica_factor = Some(number(raw)?),
                "voters" => self.voters = Some(number(raw)?),
                "weight" => self.weight = Some(number(raw)?),
                "workers" => self.workers = Some(number(raw)?),
                "max_workers" => self.max_workers = Some(number(raw)?),
                "worker_index" => self.worker_index = Some(number(raw)?),
                "worker_total" => self.worker_total = Some(number(raw)?),
                "instance_id" => self.instance_id = Some(text(raw)?),
                "zone" => self.zone = Some(text(raw)?),
                "mode" => {
                    self.mode = Some(match text(raw)?.as_str() {
                        "dev" => Mode::Dev,
                        "production" => Mode::Production,
                        other => return Err(format!("{other:?} is not dev or production")),
                    })
                }
                "members" => self.members = Some(raw.many()),
                "secret_file" => self.secret_file = Some(text(raw)?.into()),
                "token_file" => self.token_file = Some(text(raw)?.into()),
                "passivate_after" => self.passivate_after = Some(dur(raw)?),
                "hook_budget" => self.hook_budget = Some(dur(raw)?),
                "gossip_interval" => self.gossip_interval = Some(dur(raw)?),
                "suspect_after" => self.suspect_after = Some(dur(raw)?),
                "down_after" => self.down_after = Some(dur(raw)?),
                "raft_heartbeat" => self.raft_heartbeat = Some(dur(raw)?),
                "election_timeout_min" => self.election_timeout_min = Some(dur(raw)?),
                "election_timeout_max" => self.election_timeout_max = Some(dur(raw)?),
                "lease" => self.lease = Some(dur(raw)?),
                "lease_drift" => {
                    let s = text(raw)?;
                    self.lease_drift = Some(s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?)
                }
                "lease_grace" => self.lease_grace = Some(dur(raw)?),
                "rebalance_debounce" => self.rebalance_debounce = Some(dur(raw)?),
                "rebalance" => {
                    self.rebalance = Some(match text(raw)?.as_str() {
                        "auto" => Rebalance::Auto,
                        "manual" => Rebalance::Manual,
                        other => return Err(format!("{other:?} is not auto or manual")),
                    })
                }
                "shard_weights" => self.shard_weights = Some(shard_weights(raw.many())?),
                "proxy_request_timeout" => self.proxy_request_timeout = Some(dur(raw)?),
                "proxy_route_wait" => self.proxy_route_wait = Some(dur(raw)?),
                "proxy_queue" => self.proxy_queue = Some(number(raw)?),
                "proxy_max_waiting" => self.proxy_max_waiting = Some(number(raw)?),
                _ => return Err(String::new()),
            }
            Ok(())
        })();
        r.map_err(|e| if e.is_empty() { None } else { Some(e) })
    }

    /// Reads a TOML file of settings. Unknown keys and bad values are refused with the file, the
    /// key and the reason.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            key: String::new(),
            reason: e.to_string(),
        })?;
        Settings::from_toml(&text).map_err(|(key, reason)| ConfigError::File { path: path.to_path_buf(), key, reason })
    }

    /// Parses TOML text; on error, the key (empty for a syntax error) and the reason.
    fn from_toml(text: &str) -> Result<Settings, (String, String)> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| (String::new(), e.message().to_string()))?;
        let mut s = Settings::default();
        for (key, value) in table {
            let scalar = |v: &toml::Value| -> Result<String, String> {
                match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    toml::Value::Float(f) => Ok(f.to_string()),
                    toml::Value::Boolean(b) => Ok(b.to_string()),
                    other => Err(format!("a {} is not a value here", other.type_str())),
                }
            };
            if matches!(key.as_str(), "secret" | "token") {
                return Err((
                    key.clone(),
                    format!("not in a config file: give {key}_file, or CLUSTERFUNK_{}", key.to_uppercase()),
                ));
            }
            let raw = match &value {
                toml::Value::Array(items) => {
                    Raw::Many(items.iter().map(scalar).collect::<Result<_, _>>().map_err(|e| (key.clone(), e))?)
                }
                v => Raw::One(scalar(v).map_err(|e| (key.clone(), e))?),
            };
            s.set(&key, raw).map_err(|e| match e {
                None => (key.clone(), format!("unknown setting (known: {})", KEYS.join(", "))),
                Some(reason) => (key.clone(), reason),
            })?;
        }
        Ok(s)
    }

    /// Reads `CLUSTERFUNK_<KEY>` for every key, plus `CLUSTERFUNK_SECRET` and `CLUSTERFUNK_TOKEN`
    /// (the values themselves). An unknown `CLUSTERFUNK_*` variable is refused: a misspelt
    /// setting must not be silently ignored.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_vars(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    fn from_vars(vars: impl Iterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        for (var, value) in vars {
            let Some(key) = var.strip_prefix("CLUSTERFUNK_") else { continue };
            if OTHER_VARS.contains(&var.as_str()) {
                continue;
            }
            let err = |reason: String| ConfigError::Env { var: var.clone(), reason };
            match key {
                "SECRET" => s.secret = Some(value),
                "TOKEN" => s.token = Some(value),
                _ => {
                    let lower = key.to_ascii_lowercase();
                    s.set(&lower, Raw::One(value)).map_err(|e| match e {
                        None => err("unknown setting".into()),
                        Some(reason) => err(reason),
                    })?;
                }
            }
        }
        Ok(s)
    }

    /// These settings with every one `over` sets replaced by its value. A secret and its file
    /// (and the token and its file) go together: the later source that names either decides.
    pub fn overlay(mut self, mut over: Settings) -> Settings {
        if over.secret.is_some() || over.secret_file.is_some() {
            self.secret = None;
            self.secret_file = None;
        }
        if over.token.is_some() || over.token_file.is_some() {
            self.token = None;
            self.token_file = None;
        }
        // Within one source, a file wins over a value.
        if over.secret_file.is_some() {
            over.secret = None;
        }
        if over.token_file.is_some() {
            over.token = None;
        }
        macro_rules! pick {
            ($($f:ident),* $(,)?) => { Settings { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            name,
            env,
            data_dir,
            listen,
            advertise,
            join,
            dashboard,
            bootstrap,
            mdns,
            accept_clients,
            http,
            http_workers,
            shards,
            replica_factor,
            voters,
            weight,
            workers,
            max_workers,
            worker_index,
            worker_total,
            instance_id,
            zone,
            mode,
            members,
            secret_file,
            secret,
            token_file,
            token,
            passivate_after,
            hook_budget,
            gossip_interval,
            suspect_after,
            down_after,
            raft_heartbeat,
            election_timeout_min,
            election_timeout_max,
            lease,
            lease_drift,
            lease_grace,
            rebalance_debounce,
            rebalance,
            shard_weights,
            proxy_request_timeout,
            proxy_route_wait,
            proxy_queue,
            proxy_max_waiting,
        )
    }

    /// The settings in force: the file `config` (if any), then the environment, then `flags`.
    pub fn load(config: Option<&Path>, flags: Settings) -> Result<Settings, ConfigError> {
        let file = config.map(Settings::from_file).transpose()?.unwrap_or_default();
        Ok(file.overlay(Settings::from_env()?).overlay(flags))
    }
}

impl std::str::FromStr for Settings {
    type Err = ConfigError;

    /// Parses TOML text (errors name the key; [`Settings::from_file`] adds the file).
    fn from_str(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text).map_err(|(key, reason)| ConfigError::File { path: PathBuf::new(), key, reason })
    }
}

/// Reads a secret from `path` for `field`.
fn read_secret(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| ConfigError::Unreadable {
        field,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Builder {
    /// Applies every setting `s` has (files named by `secret_file` and `token_file` are read
    /// here); the rest keeps its value. Validation happens in [`build`](Builder::build).
    pub fn settings(mut self, s: &Settings) -> Result<Builder, ConfigError> {
        let s = s.clone();
        macro_rules! with {
            ($f:ident) => {
                if let Some(v) = s.$f {
                    self = self.$f(v);
                }
            };
        }
        with!(name);
        with!(env);
        with!(data_dir);
        with!(listen);
        with!(advertise);
        with!(dashboard);
        with!(bootstrap);
        with!(mdns);
        with!(accept_clients);
        with!(http);
        with!(http_workers);
        with!(shards);
        with!(replica_factor);
        with!(voters);
        with!(weight);
        with!(workers);
        with!(max_workers);
        with!(instance_id);
        self = self.static_worker_parts(s.worker_index, s.worker_total);
        with!(zone);
        with!(mode);
        with!(passivate_after);
        with!(hook_budget);
        with!(gossip_interval);
        with!(lease);
        with!(lease_drift);
        with!(lease_grace);
        with!(rebalance_debounce);
        with!(rebalance);
        for (shard, weight) in s.shard_weights.unwrap_or_default() {
            self = self.shard_weight(shard, weight);
        }
        for j in s.join.unwrap_or_default() {
            self = self.join(j);
        }
        for m in s.members.unwrap_or_default() {
            self = self.member(m);
        }
        if s.suspect_after.is_some() || s.down_after.is_some() {
            let (suspect, down) = self.failure_detector_now();
            self = self.failure_detector(s.suspect_after.unwrap_or(suspect), s.down_after.unwrap_or(down));
        }
        if s.raft_heartbeat.is_some() || s.election_timeout_min.is_some() || s.election_timeout_max.is_some() {
            let (hb, min, max) = self.raft_timing_now();
            self = self.raft_timing(
                s.raft_heartbeat.unwrap_or(hb),
                s.election_timeout_min.unwrap_or(min),
                s.election_timeout_max.unwrap_or(max),
            );
        }
        if s.proxy_request_timeout.is_some() || s.proxy_route_wait.is_some() {
            let (request, route) = self.proxy_timeouts_now();
            self = self.proxy_timeouts(s.proxy_request_timeout.unwrap_or(request), s.proxy_route_wait.unwrap_or(route));
        }
        if s.proxy_queue.is_some() || s.proxy_max_waiting.is_some() {
            let (queue, waiting) = self.proxy_queues_now();
            self = self.proxy_queues(s.proxy_queue.unwrap_or(queue), s.proxy_max_waiting.unwrap_or(waiting));
        }
        match (&s.secret_file, s.secret) {
            (Some(path), _) => self = self.secret(read_secret("secret_file", path)?),
            (None, Some(v)) => self = self.secret(v),
            (None, None) => {}
        }
        match (&s.token_file, s.token) {
            (Some(path), _) => self = self.management_token(read_secret("token_file", path)?),
            (None, Some(v)) => self = self.management_token(v.trim()),
            (None, None) => {}
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn a_file_names_the_key_and_the_reason() {
        let err = |t: &str| t.parse::<Settings>().unwrap_err().to_string();
        assert!(err("shard = 3").contains("shard: unknown setting"), "{}", err("shard = 3"));
        assert!(
            err("shards = \"many\"").contains("shards: \"many\" is not a whole number"),
            "{}",
            err("shards = \"many\"")
        );
        assert!(err("gossip_interval = 250").contains("gossip_interval: \"250\" has no unit"));
        assert!(err("gossip_interval = \"2 fortnights\"").contains("is not a unit"));
        assert!(err("mode = \"prod\"").contains("mode: \"prod\" is not dev or production"));
        assert!(err("secret = \"00\"").contains("secret: not in a config file"));
        assert!(err("shards = [").contains("config"), "a syntax error: {}", err("shards = ["));
        assert!(
            err("shard_weights = [\"7:10\"]").contains("shard_weights: \"7:10\" is not SHARD=WEIGHT"),
            "{}",
            err("shard_weights = [\"7:10\"]")
        );
        let s: Settings =
            "shards = 64\njoin = [\"a:1\", \"b:2\"]\nlease = \"1.5s\"\nmdns = false\nlease_drift = 0.02\n"
                .parse()
                .unwrap();
        assert_eq!(s.shards, Some(64));
        assert_eq!(s.join, Some(vec!["a:1".into(), "b:2".into()]));
        assert_eq!(s.lease, Some(Duration::from_millis(1500)));
        assert_eq!(s.mdns, Some(false));
        assert_eq!(s.lease_drift, Some(0.02));
    }

    #[test]
    fn from_a_file_on_disk_the_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "shards = 16\nvoterz = 3\n").unwrap();
        let e = Settings::from_file(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: voterz: unknown setting", p.display())), "{e}");
        let e = Settings::from_file(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn the_environment_uses_the_same_names_and_refuses_unknown_ones() {
        let s = Settings::from_vars(vars(&[
            ("CLUSTERFUNK_SHARDS", "32"),
            ("CLUSTERFUNK_JOIN", "a:1, b:2"),
            ("CLUSTERFUNK_TOKEN", "t0123456789abcdef"),
            ("CLUSTERFUNK_NODE", "127.0.0.1:8080"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(s.shards, Some(32));
        assert_eq!(s.join, Some(vec!["a:1".into(), "b:2".into()]));
        assert_eq!(s.token.as_deref(), Some("t0123456789abcdef"));
        let e = Settings::from_vars(vars(&[("CLUSTERFUNK_SHARDZ", "1")])).unwrap_err().to_string();
        assert_eq!(e, "CLUSTERFUNK_SHARDZ: unknown setting");
        let e = Settings::from_vars(vars(&[("CLUSTERFUNK_VOTERS", "three")])).unwrap_err().to_string();
        assert!(e.starts_with("CLUSTERFUNK_VOTERS: \"three\""), "{e}");
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let file: Settings = "shards = 1\nweight = 1\nzone = \"a\"\n".parse().unwrap();
        let env = Settings::from_vars(vars(&[("CLUSTERFUNK_SHARDS", "2"), ("CLUSTERFUNK_WEIGHT", "2")])).unwrap();
        let flags = Settings { shards: Some(3), ..Settings::default() };
        let s = file.overlay(env).overlay(flags);
        assert_eq!((s.shards, s.weight, s.zone.as_deref()), (Some(3), Some(2), Some("a")));
    }

    #[test]
    fn a_secret_and_its_file_come_from_one_source() {
        let file: Settings = "secret_file = \"/etc/from-file\"\n".parse().unwrap();
        let env = Settings::from_vars(vars(&[("CLUSTERFUNK_SECRET", "from-env")])).unwrap();
        let s = file.clone().overlay(env.clone());
        assert_eq!(
            (s.secret.as_deref(), s.secret_file),
            (Some("from-env"), None),
            "the environment wins over the file"
        );
        let flags = Settings { secret_file: Some("/run/from-flag".into()), ..Settings::default() };
        let s = file.overlay(env).overlay(flags);
        assert_eq!((s.secret, s.secret_file), (None, Some(PathBuf::from("/run/from-flag"))), "a flag wins over both");
        let env = Settings::from_vars(vars(&[("CLUSTERFUNK_TOKEN_FILE", "/t"), ("CLUSTERFUNK_TOKEN", "x")])).unwrap();
        let s = Settings::default().overlay(env);
        assert_eq!((s.token, s.token_file), (None, Some(PathBuf::from("/t"))), "within one source the file wins");
    }

    #[test]
    fn debug_never_shows_the_secret_or_the_token() {
        let s = Settings::from_vars(vars(&[
            ("CLUSTERFUNK_SECRET", "ab".repeat(32).as_str()),
            ("CLUSTERFUNK_TOKEN", "t0p-s3cret-token"),
        ]))
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("abab") && !shown.contains("t0p-s3cret"), "{shown}");
        assert!(shown.contains("secret: Some(\"<redacted>\")"), "{shown}");
    }

    #[test]
    fn every_key_is_settable_from_text() {
        for key in KEYS {
            let mut s = Settings::default();
            let value = match *key {
                "bootstrap" | "mdns" | "accept_clients" => "true",
                "mode" => "production",
                "rebalance" => "manual",
                "shard_weights" => "3=5,7=2",
                "lease_drift" => "0.01",
                k if k.ends_with("_after")
                    || k.ends_with("_interval")
                    || k.ends_with("_budget")
                    || k.starts_with("election")
                    || k.ends_with("heartbeat")
                    || k.ends_with("debounce")
                    || k.ends_with("timeout")
                    || k.ends_with("wait")
                    || k.starts_with("lease") =>
                {
                    "1s"
                }
                "shards" | "replica_factor" | "voters" | "weight" | "workers" | "max_workers" | "worker_index"
                | "worker_total" | "proxy_queue" | "proxy_max_waiting" | "http_workers" => "3",
                _ => "x",
            };
            assert!(s.set(key, Raw::One(value.into())).is_ok(), "{key} = {value}");
            assert_ne!(s, Settings::default(), "{key} changed nothing");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
