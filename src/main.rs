//! sessiond: a self-hosted session control plane. This file turns the command line into a
//! subcommand and its outcome into an exit code: 0 ok, 1 runtime error, 2 usage error.

mod api;
mod auth;
mod config;
mod db;
mod domain;
mod error;
mod reaper;
mod routes;
mod server;
mod viewers;

use std::process::ExitCode;

use crate::config::Config;
use crate::domain::time::{now_ms, parse_duration};

const USAGE: &str = "usage: sessiond <command> [--setting value ...]

commands:
  serve                      run the server
  migrate [--check]          bring the database schema up to date (--check: only report)
  check                      verify the database's integrity and schema version
  key create [--service gateway|daemon] [--account NAME] [--name NAME] [--scopes a,b] [--expires-in 30d]
                             create an API key (or a service key) and print it once
  config --dump              print the effective settings (secrets masked)
  version                    print the version

Every setting is a flag (--listen 127.0.0.1:8080) and an environment variable (SESSIOND_LISTEN);
`sessiond config --dump` lists them all with their defaults.";

/// A failure and the exit code it maps to.
enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<error::Error> for Failure {
    fn from(e: error::Error) -> Failure {
        Failure::Runtime(match e {
            error::Error::Internal(cause) => cause,
            other => other.public_message().to_string(),
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(msg)) => {
            eprintln!("sessiond: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("sessiond: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<u8, Failure> {
    let Some((command, rest)) = args.split_first() else {
        return Err(Failure::Usage("no command given".into()));
    };
    let env = |name: &str| std::env::var(name).ok();
    let (raw, rest) = config::parse(rest, &env).map_err(Failure::Usage)?;
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (command.as_str(), words.as_slice()) {
        ("serve", []) => {
            let cfg = raw.into_config().map_err(Failure::Usage)?;
            Ok(server::serve(cfg)? as u8)
        }
        ("migrate", flags) => migrate(&raw.into_config().map_err(Failure::Usage)?, flags),
        ("check", []) => check(&raw.into_config().map_err(Failure::Usage)?),
        ("key", ["create", flags @ ..]) => {
            key_create(&raw.into_config().map_err(Failure::Usage)?, flags)
        }
        ("config", ["--dump"]) => {
            let dump = raw.dump();
            raw.into_config().map_err(Failure::Usage)?;
            print!("{dump}");
            Ok(0)
        }
        ("version" | "--version" | "-V", []) => {
            println!(
                "sessiond {} (schema {})",
                env!("CARGO_PKG_VERSION"),
                db::migrate::LATEST
            );
            Ok(0)
        }
        ("help" | "--help" | "-h", _) => {
            println!("{USAGE}");
            Ok(0)
        }
        (_, []) => Err(Failure::Usage(format!("unknown command {command:?}"))),
        (_, extra) => Err(Failure::Usage(format!(
            "unexpected arguments for {command}: {}",
            extra.join(" ")
        ))),
    }
}

fn migrate(cfg: &Config, flags: &[&str]) -> Result<u8, Failure> {
    let check_only = match flags {
        [] => false,
        ["--check"] => true,
        other => {
            return Err(Failure::Usage(format!(
                "unexpected arguments for migrate: {}",
                other.join(" ")
            )));
        }
    };
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, cfg.synchronous_full)?;
    if check_only {
        let found = db::migrate::version(&conn)?;
        db::migrate::check_not_newer(found)?;
        if found == db::migrate::LATEST {
            println!("schema version {found} is current");
            return Ok(0);
        }
        println!(
            "schema version {found}; {} migration(s) pending to reach {}",
            db::migrate::LATEST - found,
            db::migrate::LATEST
        );
        return Ok(1);
    }
    let (from, to) = db::migrate::migrate(&mut conn)?;
    println!("schema version {from} -> {to}");
    Ok(0)
}

fn check(cfg: &Config) -> Result<u8, Failure> {
    if !cfg.db.exists() {
        return Err(Failure::Runtime(format!(
            "no database at {}",
            cfg.db.display()
        )));
    }
    let conn = db::open(&cfg.db, db::Access::ReadOnly, cfg.synchronous_full)?;
    let version = db::migrate::version(&conn)?;
    db::migrate::check_not_newer(version)?;
    let verdict = db::integrity_check(&conn)?;
    println!(
        "integrity: {verdict}\nschema version: {version} (this binary: {})",
        db::migrate::LATEST
    );
    Ok(if verdict == "ok" && version == db::migrate::LATEST {
        0
    } else {
        1
    })
}

fn key_create(cfg: &Config, flags: &[&str]) -> Result<u8, Failure> {
    let mut service = None;
    let mut account = db::accounts::PERSONAL_ACCOUNT.to_string();
    let mut name = String::new();
    let mut scopes: Option<Vec<String>> = None;
    let mut expires_in = None;
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(|v| v.to_string())
                .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))
        };
        match *flag {
            "--service" => service = Some(value()?),
            "--account" => account = value()?,
            "--name" => name = value()?,
            "--scopes" => {
                scopes = Some(
                    value()?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "--expires-in" => {
                let v = value()?;
                expires_in =
                    Some(parse_duration(&v).filter(|&ms| ms > 0).ok_or_else(|| {
                        Failure::Usage(format!("--expires-in: bad duration {v:?}"))
                    })?);
            }
            other => {
                return Err(Failure::Usage(format!(
                    "unknown flag for key create: {other}"
                )));
            }
        }
    }
    const KEY_SCOPES: &[&str] = &[
        "sessions.read",
        "sessions.write",
        "workspaces.read",
        "workspaces.write",
        "audit.read",
        "keys.write",
    ];
    if let Some(bad) = scopes
        .iter()
        .flatten()
        .find(|s| !KEY_SCOPES.contains(&s.as_str()))
    {
        return Err(Failure::Usage(format!(
            "unknown scope {bad:?}; known: {}",
            KEY_SCOPES.join(", ")
        )));
    }
    if let Some(role) = &service {
        if role != "gateway" && role != "daemon" {
            return Err(Failure::Usage("--service takes gateway or daemon".into()));
        }
    }
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, cfg.synchronous_full)?;
    db::migrate::migrate(&mut conn)?;
    db::accounts::bootstrap(
        &mut conn,
        &cfg.admin_email,
        cfg.admin_password.as_deref(),
        now_ms(),
    )?;
    let writer = db::Writer::start(conn);
    let reader = db::Reader::open(&cfg.db)?;
    let account_id = reader
        .account_id_by_name(&account)?
        .ok_or_else(|| Failure::Runtime(format!("no account named {account:?}")))?;
    let (token, kind, scopes) = match &service {
        Some(_) => (
            format!("svc_{}", auth::random_url_safe(40)),
            db::accounts::CredentialKind::ServiceKey,
            Vec::new(),
        ),
        None => (
            format!("sk_{}", auth::random_url_safe(40)),
            db::accounts::CredentialKind::ApiKey,
            scopes.unwrap_or_else(|| KEY_SCOPES.iter().map(|s| s.to_string()).collect()),
        ),
    };
    let now = now_ms();
    let stored = token.clone();
    let actor = domain::Actor {
        kind: domain::ActorType::System,
        id: Some("cli".into()),
        email: None,
        ip: None,
    };
    let uid = writer.exec(move |tx| {
        let key = db::accounts::NewKey {
            token: &stored,
            kind,
            name: &name,
            account_id: Some(account_id),
            user_id: None,
            scopes: &scopes,
            service_role: service.as_deref(),
            expires_at: expires_in.map(|ms| now + ms),
        };
        db::accounts::insert_key(tx, &key, &actor, now)
    })?;
    writer.shutdown(std::time::Duration::from_secs(10));
    eprintln!("created key {uid}; it is shown once:");
    println!("{token}");
    Ok(0)
}
