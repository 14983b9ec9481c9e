//! sessiond: a self-hosted session control plane. This file turns the command line into a
//! subcommand and its outcome into an exit code: 0 ok, 1 runtime error, 2 usage error.

use std::collections::HashMap;
use std::process::ExitCode;

use sessiond::config::Config;
use sessiond::domain::time::{now_ms, parse_duration};
use sessiond::{api, auth, config, db, domain, error, server};

const USAGE: &str = "usage: sessiond <command> [--setting value ...]

commands:
  serve                      run the server
  migrate [--check]          bring the database schema up to date (--check: only report)
  check                      verify the database's integrity and schema version
  user add --email E [--name N] [--admin] [--account A] [--password-file F]
  user passwd --email E [--password-file F]
  user disable|enable --email E
                             manage users (the password also from SESSIOND_USER_PASSWORD or a prompt)
  key create [--service gateway|daemon] [--account NAME] [--name NAME] [--scopes a,b] [--expires-in 30d]
                             create an API key (or a service key) and print it once
  backup DEST                write a consistent copy of the database (safe while serving)
  restore SRC                replace the database with a backup (refused while a server runs on it)
  healthcheck                exit 0 when the server at --listen is ready, 1 otherwise
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
        ("backup", [dest]) => {
            let cfg = raw.into_config().map_err(Failure::Usage)?;
            let b = db::backup::backup(&cfg.db, std::path::Path::new(dest))?;
            println!(
                "backup of {} written to {dest} ({} bytes, schema version {}, integrity ok)",
                cfg.db.display(),
                b.bytes,
                b.schema_version
            );
            Ok(0)
        }
        ("restore", [src]) => {
            let cfg = raw.into_config().map_err(Failure::Usage)?;
            db::backup::restore(std::path::Path::new(src), &cfg.db)?;
            println!("{} restored from {src}", cfg.db.display());
            Ok(0)
        }
        ("healthcheck", []) => healthcheck(&raw.into_config().map_err(Failure::Usage)?),
        ("user", words) => user_command(&raw.into_config().map_err(Failure::Usage)?, words),
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

/// Asks the running server's `/readyz` (at `listen`; an unspecified address means loopback).
fn healthcheck(cfg: &Config) -> Result<u8, Failure> {
    use std::io::{Read, Write};
    let mut addr = cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(5);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(text) if text.starts_with("HTTP/1.1 200") => {
            println!("ready: {addr}");
            Ok(0)
        }
        Ok(text) => Err(Failure::Runtime(format!(
            "not ready: {}",
            text.lines().next().unwrap_or("no answer")
        ))),
        Err(e) => Err(Failure::Runtime(format!("no answer from {addr}: {e}"))),
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
    // Changing the schema under a running server is refused; checking is not.
    let _lock = if check_only {
        None
    } else {
        Some(db::backup::lock(&cfg.db)?)
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

/// Parses a subcommand's own flags: `value` flags take an argument, `switches` do not.
fn sub_flags(
    flags: &[&str],
    value: &[&str],
    switches: &[&str],
) -> Result<HashMap<String, String>, Failure> {
    let mut out = HashMap::new();
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        if switches.contains(flag) {
            out.insert(flag.to_string(), String::new());
        } else if value.contains(flag) {
            let v = it
                .next()
                .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
            out.insert(flag.to_string(), v.to_string());
        } else {
            return Err(Failure::Usage(format!("unknown flag {flag}")));
        }
    }
    Ok(out)
}

/// Opens the store for an administrative command: migrated, bootstrapped, with its writer thread.
fn open_store(cfg: &Config) -> Result<(db::Writer, db::Reader), Failure> {
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, cfg.synchronous_full)?;
    db::migrate::migrate(&mut conn)?;
    // The admin is made (and its password shown) by `serve` only.
    db::accounts::bootstrap(&mut conn, None, now_ms())?;
    Ok((db::Writer::start(conn), db::Reader::open(&cfg.db)?))
}

fn cli_actor() -> domain::Actor {
    domain::Actor {
        kind: domain::ActorType::System,
        id: Some("cli".into()),
        email: None,
        ip: None,
    }
}

/// A new password: from `--password-file`, `SESSIOND_USER_PASSWORD`, or typed twice at a prompt.
fn read_new_password(flags: &HashMap<String, String>) -> Result<String, Failure> {
    let password = if let Some(path) = flags.get("--password-file") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Runtime(format!("cannot read {path}: {e}")))?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else if let Ok(p) = std::env::var("SESSIOND_USER_PASSWORD") {
        p
    } else {
        let first = prompt_hidden("New password: ")?;
        if prompt_hidden("Again: ")? != first {
            return Err(Failure::Runtime("the passwords differ".into()));
        }
        first
    };
    api::workspace::validate_password(&password)
        .map_err(|e| Failure::Usage(e.public_message().to_string()))?;
    Ok(password)
}

/// Reads a line from the terminal without echoing it.
fn prompt_hidden(prompt: &str) -> Result<String, Failure> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios we own; restored below.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Some(saved)
        } else {
            None
        }
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read.map_err(|e| Failure::Runtime(format!("cannot read the password: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn user_command(cfg: &Config, words: &[&str]) -> Result<u8, Failure> {
    let (action, flags) = words
        .split_first()
        .ok_or_else(|| Failure::Usage("user needs add, passwd or disable".into()))?;
    let flags = match *action {
        "add" => sub_flags(
            flags,
            &["--email", "--name", "--account", "--password-file"],
            &["--admin"],
        )?,
        "passwd" => sub_flags(flags, &["--email", "--password-file"], &[])?,
        "disable" | "enable" => sub_flags(flags, &["--email"], &[])?,
        other => return Err(Failure::Usage(format!("unknown user action {other:?}"))),
    };
    let email = flags
        .get("--email")
        .ok_or_else(|| Failure::Usage("--email is required".into()))?
        .clone();
    api::workspace::validate_email(&email)
        .map_err(|e| Failure::Usage(e.public_message().to_string()))?;
    let password = match *action {
        "add" | "passwd" => Some(read_new_password(&flags)?),
        _ => None,
    };
    let (writer, reader) = open_store(cfg)?;
    let now = now_ms();
    let actor = cli_actor();
    let result = match *action {
        "add" => {
            let account_name = flags
                .get("--account")
                .cloned()
                .unwrap_or_else(|| db::accounts::PERSONAL_ACCOUNT.to_string());
            let account_id = reader
                .account_id_by_name(&account_name)?
                .ok_or_else(|| Failure::Runtime(format!("no account named {account_name:?}")))?;
            let role = if flags.contains_key("--admin") {
                domain::workspace::Role::Admin
            } else {
                domain::workspace::Role::Member
            };
            let name = flags.get("--name").cloned().unwrap_or_default();
            let hash = auth::hash_password(&password.unwrap_or_default());
            writer.exec(move |tx| {
                let new = db::users::NewUser {
                    email: &email,
                    name: &name,
                    password_hash: &hash,
                    account_id,
                    role,
                };
                let (_, uid) = db::users::insert_user(tx, &new, now)?;
                let entry =
                    domain::AuditEntry::new(Some(account_id), &actor, "user.created", "user", &uid)
                        .summary(format!("user {email} added as {}", role.as_str()));
                db::audit::record(tx, &entry, now)?;
                Ok(format!(
                    "added {email} ({uid}) to {account_name} as {}",
                    role.neosc()
                ))
            })
        }
        _ => {
            let action = action.to_string();
            let hash = password.map(|p| auth::hash_password(&p));
            writer.exec(move |tx| {
                let user = db::users::user_by_email_tx(tx, &email)?
                    .ok_or_else(|| error::Error::NotFound(format!("no user with email {email}")))?;
                match action.as_str() {
                    "passwd" => {
                        db::users::set_password(tx, user.id, hash.as_deref().unwrap_or_default())?
                    }
                    "disable" => db::users::set_disabled(tx, user.id, true, now)?,
                    _ => db::users::set_disabled(tx, user.id, false, now)?,
                }
                let entry = domain::AuditEntry::new(
                    None,
                    &actor,
                    &format!("user.{action}"),
                    "user",
                    &user.uid,
                );
                db::audit::record(tx, &entry, now)?;
                Ok(format!("{action}: {email} done"))
            })
        }
    };
    writer.shutdown(std::time::Duration::from_secs(10));
    println!("{}", result?);
    Ok(0)
}

fn key_create(cfg: &Config, flags: &[&str]) -> Result<u8, Failure> {
    let flags = sub_flags(
        flags,
        &[
            "--service",
            "--account",
            "--name",
            "--scopes",
            "--expires-in",
        ],
        &[],
    )?;
    use api::runtime::KEY_SCOPES;
    let scopes: Option<Vec<String>> = flags.get("--scopes").map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
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
    let service = flags.get("--service").cloned();
    if service
        .as_deref()
        .is_some_and(|r| r != "gateway" && r != "daemon")
    {
        return Err(Failure::Usage("--service takes gateway or daemon".into()));
    }
    let expires_in = match flags.get("--expires-in") {
        None => None,
        Some(v) => Some(
            parse_duration(v)
                .filter(|&ms| ms > 0)
                .ok_or_else(|| Failure::Usage(format!("--expires-in: bad duration {v:?}")))?,
        ),
    };
    let account = flags
        .get("--account")
        .cloned()
        .unwrap_or_else(|| db::accounts::PERSONAL_ACCOUNT.to_string());
    let name = flags.get("--name").cloned().unwrap_or_default();
    let (writer, reader) = open_store(cfg)?;
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
            auth::new_api_key(),
            db::accounts::CredentialKind::ApiKey,
            scopes.unwrap_or_else(|| KEY_SCOPES.iter().map(|s| s.to_string()).collect()),
        ),
    };
    let now = now_ms();
    let stored = token.clone();
    let actor = cli_actor();
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
    });
    writer.shutdown(std::time::Duration::from_secs(10));
    eprintln!("created key {}; it is shown once:", uid?);
    println!("{token}");
    Ok(0)
}
