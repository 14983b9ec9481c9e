//! The one typed configuration, built from flags and `SESSIOND_*` environment variables.
//!
//! Every setting is listed once in [`SETTINGS`] with its default and whether it is a secret. Sources, in
//! rising priority: the default, `SESSIOND_<NAME>`, `SESSIOND_<NAME>_FILE` (secrets only; the file's
//! contents, trailing newline removed), `--<name-with-dashes>`. The result is passed explicitly to
//! whoever needs it; nothing reads the environment after startup.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::domain::time::{Millis, parse_duration};

pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub secret: bool,
    pub help: &'static str,
}

const fn s(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        secret: false,
        help,
    }
}

const fn secret(name: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default: "",
        secret: true,
        help,
    }
}

/// Every setting the service knows, in the order `config --dump` prints them.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    s("listen", "127.0.0.1:8080", "address to listen on (an IP literal and port; port 0 picks one)"),
    s("db", "./sessiond.db", "path of the SQLite database file"),
    s("threads", "0", "requests answered at once (0 = 8 per core, at least 8)"),
    s("public_base_url", "http://localhost:3002", "base of publicUrl, ownerUrl and overlayScriptUrl"),
    s("edge_base_url", "ws://localhost:3002", "base of edgeUrl"),
    s("allow_anonymous_shares", "true", "allow POST /sessions without credentials"),
    s("anonymous_share_rate", "30", "anonymous share creations per IP per minute (0 = unlimited)"),
    s("max_share_ttl", "7d", "longest expiresIn a share session may ask for"),
    s("viewer_idle_timeout", "5m", "a viewer idle longer than this is aged out"),
    s("reap_interval", "1s", "how often the reaper sweeps"),
    s("max_body", "65536", "largest accepted request body in bytes"),
    s("idle_timeout", "60s", "a kept-alive connection silent this long is closed"),
    s("request_timeout", "15s", "longest one request (head and body) may take to arrive; 408 beyond"),
    s("max_connections", "4096", "most client connections open at once; 503 beyond"),
    s("send_buffer", "0", "kernel send buffer of each connection in bytes (0 = the kernel sizes it)"),
    s("synchronous", "full", "SQLite synchronous mode: full or normal"),
    s("trusted_proxies", "", "comma-separated proxy IPs whose X-Forwarded-For is believed"),
    s("snapshot_stale_after", "30s", "a daemon snapshot older than this is no longer authoritative"),
    s("snapshot_lost_after", "5m", "a session its daemon stopped reporting this long is ended as lost"),
    s("audit_retention", "90d", "audit rows older than this are pruned"),
    s("shutdown_timeout", "10s", "longest a graceful shutdown may take"),
    s("control_url_template", "", "endpoints.control of runtime sessions ({id} is replaced)"),
    s("metrics_allow", "", "comma-separated IPs besides loopback that may read /metrics (\"any\": everyone)"),
    s("backup_dir", "", "directory for scheduled backups (empty: no scheduled backups)"),
    s("backup_every", "1d", "interval of scheduled backups"),
    s("backup_keep", "7", "how many scheduled backups to keep"),
    s("admin_email", "admin@localhost", "email of the admin user created on an empty database"),
    secret("admin_password", "password of that admin (random and printed once if unset)"),
    secret("internal_api_key", "a shared key accepted on /internal routes, as upstream Wormkey"),
];

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub threads: usize,
    pub public_base_url: String,
    pub edge_base_url: String,
    pub allow_anonymous_shares: bool,
    pub anonymous_share_rate: u32,
    pub max_share_ttl: Millis,
    pub viewer_idle_timeout: Millis,
    pub reap_interval: Millis,
    pub max_body: usize,
    pub idle_timeout: Millis,
    pub request_timeout: Millis,
    pub max_connections: usize,
    /// `SO_SNDBUF` of every accepted connection; 0 leaves it to the kernel's autotuning.
    pub send_buffer: usize,
    pub synchronous_full: bool,
    pub trusted_proxies: Vec<IpAddr>,
    pub snapshot_stale_after: Millis,
    pub snapshot_lost_after: Millis,
    pub audit_retention: Millis,
    pub shutdown_timeout: Millis,
    pub control_url_template: String,
    /// `None`: any address may read `/metrics`; otherwise loopback and these.
    pub metrics_allow: Option<Vec<IpAddr>>,
    pub backup_dir: Option<PathBuf>,
    pub backup_every: Millis,
    pub backup_keep: usize,
    pub admin_email: String,
    pub admin_password: Option<String>,
    /// The shared gateway key's hash (`auth::token_hash`): every `/internal` request compares
    /// with it, so it is hashed once, and the key itself is not kept.
    pub internal_api_key_hash: Option<[u8; 32]>,
}

/// Where a setting's value came from, for `config --dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Env,
    File,
    Flag,
}

/// The raw values after merging sources, before typing.
pub struct Raw {
    pub values: HashMap<&'static str, (String, Source)>,
}

/// Splits `args` into setting flags (merged with the environment) and the rest, which belong to the
/// subcommand.
pub fn parse(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Raw, Vec<String>), String> {
    let mut values: HashMap<&'static str, (String, Source)> = HashMap::new();
    for setting in SETTINGS {
        let var = format!("SESSIOND_{}", setting.name.to_uppercase());
        let mut value = (setting.default.to_string(), Source::Default);
        if let Some(v) = env(&var) {
            value = (v, Source::Env);
        }
        if setting.secret {
            if let Some(path) = env(&format!("{var}_FILE")) {
                value = (read_secret_file(&path)?, Source::File);
            }
        }
        values.insert(setting.name, value);
    }
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(flag) = arg.strip_prefix("--") else {
            rest.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let key = name.replace('-', "_");
        let (key, from_file) = match key.strip_suffix("_file") {
            Some(base) if SETTINGS.iter().any(|s| s.secret && s.name == base) => {
                (base.to_string(), true)
            }
            _ => (key, false),
        };
        let Some(setting) = SETTINGS.iter().find(|s| s.name == key) else {
            rest.push(arg.clone());
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(format!("--{name} needs a value")),
        };
        let value = if from_file {
            (read_secret_file(&value)?, Source::File)
        } else {
            (value, Source::Flag)
        };
        values.insert(setting.name, value);
    }
    Ok((Raw { values }, rest))
}

fn read_secret_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl Raw {
    fn get(&self, name: &str) -> &str {
        self.values.get(name).map(|(v, _)| v.as_str()).unwrap_or("")
    }

    /// The settings as `name = value  # source` lines, secrets masked.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for setting in SETTINGS {
            let (value, source) = &self.values[setting.name];
            let shown = if setting.secret && !value.is_empty() {
                "********"
            } else {
                value.as_str()
            };
            let source = match source {
                Source::Default => "default",
                Source::Env => "env",
                Source::File => "file",
                Source::Flag => "flag",
            };
            out.push_str(&format!(
                "{} = {:?}  # {source}; {}\n",
                setting.name, shown, setting.help
            ));
        }
        out
    }

    pub fn into_config(self) -> Result<Config, String> {
        let duration = |name: &str| -> Result<Millis, String> {
            match parse_duration(self.get(name)) {
                Some(ms) if ms > 0 => Ok(ms),
                _ => Err(format!(
                    "{name}: expected a duration like 30s, 5m, 2h or 7d, got {:?}",
                    self.get(name)
                )),
            }
        };
        let number = |name: &str| -> Result<u64, String> {
            self.get(name)
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{name}: expected a whole number, got {:?}", self.get(name)))
        };
        let boolean = |name: &str| -> Result<bool, String> {
            match self.get(name).trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                other => Err(format!("{name}: expected true or false, got {other:?}")),
            }
        };
        let optional = |name: &str| -> Option<String> {
            let v = self.get(name);
            (!v.is_empty()).then(|| v.to_string())
        };
        let listen: SocketAddr = self.get("listen").parse().map_err(|_| {
            format!(
                "listen: expected an IP address and port like 127.0.0.1:8080, got {:?}",
                self.get("listen")
            )
        })?;
        let threads = match number("threads")? as usize {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() * 8)
                .unwrap_or(16)
                .max(8),
            n => n.min(1024),
        };
        let synchronous_full = match self.get("synchronous").to_ascii_lowercase().as_str() {
            "full" => true,
            "normal" => false,
            other => {
                return Err(format!(
                    "synchronous: expected full or normal, got {other:?}"
                ));
            }
        };
        let trusted_proxies = self
            .get("trusted_proxies")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("trusted_proxies: {s:?} is not an IP address"))
            })
            .collect::<Result<Vec<IpAddr>, String>>()?;
        let metrics_allow = match self.get("metrics_allow").trim() {
            "any" | "*" => None,
            list => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse()
                            .map_err(|_| format!("metrics_allow: {s:?} is not an IP address"))
                    })
                    .collect::<Result<Vec<IpAddr>, String>>()?,
            ),
        };
        let max_body = number("max_body")? as usize;
        if max_body == 0 {
            return Err("max_body: must be at least 1".into());
        }
        let public_base_url = strip_one_slash(self.get("public_base_url"));
        let control_url_template = match optional("control_url_template") {
            Some(t) => t,
            None => format!("{public_base_url}/v1/sessions/{{id}}/cdp"),
        };
        Ok(Config {
            listen,
            db: PathBuf::from(self.get("db")),
            threads,
            edge_base_url: strip_one_slash(self.get("edge_base_url")),
            public_base_url,
            allow_anonymous_shares: boolean("allow_anonymous_shares")?,
            anonymous_share_rate: number("anonymous_share_rate")?.min(u32::MAX as u64) as u32,
            max_share_ttl: duration("max_share_ttl")?,
            viewer_idle_timeout: duration("viewer_idle_timeout")?,
            reap_interval: duration("reap_interval")?,
            max_body,
            idle_timeout: at_least_ms("idle_timeout", duration("idle_timeout")?)?,
            request_timeout: at_least_ms("request_timeout", duration("request_timeout")?)?,
            max_connections: (number("max_connections")? as usize).max(1),
            send_buffer: number("send_buffer")?.min(i32::MAX as u64 / 2) as usize,
            synchronous_full,
            trusted_proxies,
            snapshot_stale_after: duration("snapshot_stale_after")?,
            snapshot_lost_after: duration("snapshot_lost_after")?,
            audit_retention: duration("audit_retention")?,
            shutdown_timeout: duration("shutdown_timeout")?,
            control_url_template,
            metrics_allow,
            backup_dir: optional("backup_dir").map(PathBuf::from),
            backup_every: duration("backup_every")?,
            backup_keep: (number("backup_keep")? as usize).max(1),
            admin_email: self.get("admin_email").to_string(),
            admin_password: optional("admin_password"),
            internal_api_key_hash: optional("internal_api_key")
                .map(|k| crate::auth::token_hash(&k)),
        })
    }
}

fn at_least_ms(name: &str, value: Millis) -> Result<Millis, String> {
    if value <= 0 {
        return Err(format!("{name}: must be longer than zero"));
    }
    Ok(value)
}

fn strip_one_slash(url: &str) -> String {
    url.strip_suffix('/').unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_override_env_and_defaults_apply() {
        let env = |k: &str| match k {
            "SESSIOND_MAX_SHARE_TTL" => Some("2d".to_string()),
            "SESSIOND_LISTEN" => Some("0.0.0.0:1".to_string()),
            _ => None,
        };
        let (raw, rest) = parse(
            &args(&[
                "--listen",
                "127.0.0.1:0",
                "--check",
                "--reap-interval=250ms",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(rest, args(&["--check"]));
        let cfg = raw.into_config().unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:0");
        assert_eq!(cfg.max_share_ttl, 2 * 86_400_000);
        assert_eq!(cfg.reap_interval, 250);
        assert_eq!(cfg.viewer_idle_timeout, 300_000);
        assert!(cfg.synchronous_full);
        assert_eq!(cfg.public_base_url, "http://localhost:3002");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let env = |_: &str| None;
        let (raw, _) = parse(&args(&["--max-share-ttl", "forever"]), &env).unwrap();
        assert!(raw.into_config().unwrap_err().starts_with("max_share_ttl"));
        let (raw, _) = parse(&args(&["--listen", "localhost:80"]), &env).unwrap();
        assert!(raw.into_config().unwrap_err().starts_with("listen"));
    }

    #[test]
    fn secrets_are_masked_in_dumps() {
        let env = |k: &str| (k == "SESSIOND_INTERNAL_API_KEY").then(|| "hunter2".to_string());
        let (raw, _) = parse(&[], &env).unwrap();
        let dump = raw.dump();
        assert!(!dump.contains("hunter2"));
        assert!(dump.contains("internal_api_key = \"********\""));
    }
}
