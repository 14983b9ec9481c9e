//! What the fuzz targets share: one real sessiond (its `App`, a writer thread, a SQLite file in a
//! temporary directory) per fuzzing process, set up through its own HTTP handlers, and two ways in:
//! [`dispatch`] hands a request to `server::respond` (routing, auth, JSON parsing, the store), and
//! [`http_addr`] is a real tiny_http listener with sessiond's limits in front of the same `App`.
//! Either way, a 500 (a contained panic) or a panic anywhere is a crash.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sessiond::config;
use sessiond::db::{self, Reader, Writer};
use sessiond::server::{self, App, Incoming, Resp};

pub const GATEWAY_KEY: &str = "fuzz-gateway-key-0123456789";
const ADMIN_PASSWORD: &str = "fuzz-admin-password";

/// The fuzzing process's server and the credentials and objects made at setup.
pub struct World {
    pub app: Arc<App>,
    pub reader: Reader,
    pub login: String,
    pub api_key: String,
    pub share_id: String,
    pub share_slug: String,
    pub owner_token: String,
    pub ws_session: String,
    pub runtime_session: String,
}

// SAFETY of sharing: `Reader` wraps a rusqlite connection, which is Send but not Sync; the fuzz
// targets run one input at a time, and each call locks this.
static WORLD: OnceLock<std::sync::Mutex<World>> = OnceLock::new();

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sessiond-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn abort_on_panic() {
    // A panic on any thread (a tiny_http connection thread, the writer) must end the run as a
    // crash: libFuzzer only sees the thread it runs on.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

fn make_world() -> World {
    abort_on_panic();
    let db_path = dir().join("fuzz.db");
    let env = |name: &str| match name {
        "SESSIOND_DB" => Some(db_path.to_string_lossy().into_owned()),
        "SESSIOND_SYNCHRONOUS" => Some("normal".into()),
        "SESSIOND_INTERNAL_API_KEY" => Some(GATEWAY_KEY.into()),
        "SESSIOND_ADMIN_PASSWORD" => Some(ADMIN_PASSWORD.into()),
        "SESSIOND_ANONYMOUS_SHARE_RATE" => Some("0".into()),
        "SESSIOND_MAX_BODY" => Some("16384".into()),
        "SESSIOND_REQUEST_TIMEOUT" => Some("1s".into()),
        _ => None,
    };
    let (raw, _) = config::parse(&[], &env).expect("settings");
    let cfg = raw.into_config().expect("config");
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, false).expect("open");
    db::migrate::migrate(&mut conn).expect("migrate");
    let admin = db::accounts::Admin {
        email: &cfg.admin_email,
        password: cfg.admin_password.as_deref(),
    };
    db::accounts::bootstrap(&mut conn, Some(admin), sessiond::domain::time::now_ms())
        .expect("bootstrap");
    let app = Arc::new(App::new(cfg, Writer::start(conn)));
    let reader = Reader::open(&app.cfg.db).expect("reader");
    let mut world = World {
        app,
        reader,
        login: String::new(),
        api_key: String::new(),
        share_id: String::new(),
        share_slug: String::new(),
        owner_token: String::new(),
        ws_session: String::new(),
        runtime_session: String::new(),
    };
    let json = |r: Resp| -> serde_json::Value { serde_json::from_slice(&r.body).unwrap() };
    let login = json(world.call(
        "POST",
        "/api/auth/login",
        None,
        format!(r#"{{"email":"admin@localhost","password":"{ADMIN_PASSWORD}"}}"#),
    ));
    world.login = login["access_token"].as_str().unwrap().to_string();
    let key = json(world.call("POST", "/v1/keys", Some(world.login.clone()), "{}".into()));
    world.api_key = key["key"].as_str().unwrap().to_string();
    let share = json(world.call("POST", "/sessions", None, "{}".into()));
    world.share_id = share["sessionId"].as_str().unwrap().to_string();
    world.share_slug = share["slug"].as_str().unwrap().to_string();
    world.owner_token = share["ownerToken"].as_str().unwrap().to_string();
    let launched = json(world.call(
        "POST",
        "/api/workspaces/ws-sap-neogenesys/launch",
        Some(world.login.clone()),
        "{}".into(),
    ));
    world.ws_session = launched["session_id"].as_str().unwrap().to_string();
    let runtime = json(world.call(
        "POST",
        "/v1/sessions",
        Some(world.api_key.clone()),
        "{}".into(),
    ));
    world.runtime_session = runtime["id"].as_str().unwrap().to_string();
    world
}

impl World {
    fn call(&self, method: &str, url: &str, bearer: Option<String>, body: String) -> Resp {
        let incoming = incoming(method, url, bearer, body.into_bytes());
        server::respond(&self.app, &self.reader, incoming).1
    }
}

/// A JSON request from loopback, as `server::respond` takes it.
fn incoming(method: &str, url: &str, bearer: Option<String>, body: Vec<u8>) -> Incoming {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(b) = bearer {
        headers.push(("authorization".into(), format!("Bearer {b}")));
    }
    Incoming {
        method: method.to_string(),
        url: url.to_string(),
        headers,
        body: Ok(body),
        peer: Some([127, 0, 0, 1].into()),
        client_ip: Some([127, 0, 0, 1].into()),
        request_id: "fuzz".into(),
    }
}

/// Runs `f` with the process's world, making it on first use.
pub fn with_world<T>(f: impl FnOnce(&World) -> T) -> T {
    let world = WORLD.get_or_init(|| std::sync::Mutex::new(make_world()));
    let guard = world.lock().unwrap_or_else(|e| e.into_inner());
    f(&guard)
}

/// One route of a dialect, as the fuzz input picks it: method, URL (`{share}`, `{slug}`,
/// `{ws_session}`, `{runtime}` are replaced), and which credential to present.
pub struct Route {
    pub method: &'static str,
    pub url: &'static str,
    pub auth: Auth,
}

#[derive(Clone, Copy)]
pub enum Auth {
    None,
    Owner,
    Gateway,
    Login,
    ApiKey,
}

/// The first byte picks a route, the rest is the body. A 500 means a handler panicked or failed
/// on input: a crash.
pub fn dispatch(routes: &[Route], data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = &routes[pick as usize % routes.len()];
    with_world(|w| {
        let url = route
            .url
            .replace("{share}", &w.share_id)
            .replace("{slug}", &w.share_slug)
            .replace("{ws_session}", &w.ws_session)
            .replace("{runtime}", &w.runtime_session);
        let bearer = match route.auth {
            Auth::None => None,
            Auth::Owner => Some(w.owner_token.clone()),
            Auth::Gateway => Some(GATEWAY_KEY.to_string()),
            Auth::Login => Some(w.login.clone()),
            Auth::ApiKey => Some(w.api_key.clone()),
        };
        let incoming = incoming(route.method, &url, bearer, body.to_vec());
        let (route_name, resp) = server::respond(&w.app, &w.reader, incoming);
        assert!(
            resp.status != 500,
            "500 from {route_name} for body {:?}",
            String::from_utf8_lossy(body)
        );
    });
}

static HTTP: OnceLock<SocketAddr> = OnceLock::new();

/// A real tiny_http listener with sessiond's limits, answered as `serve` answers (on each
/// connection's thread) over the world's `App`.
pub fn http_addr() -> SocketAddr {
    *HTTP.get_or_init(|| {
        let app = with_world(|w| w.app.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Kept for the life of the process: dropping it would close the listener.
        Box::leak(Box::new(server::Http::start(&app, listener, 4096).unwrap()));
        addr
    })
}

/// Sends raw bytes on a fresh connection, closes the sending side, and reads until the server
/// closes. The server must answer or close within the request timeout, never 500, never hang.
pub fn raw_exchange(data: &[u8]) {
    let addr = http_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(data).is_err() {
        return; // the server closed early (a limit): fine
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("no answer and no close within 5 s: {e}"),
    }
    for head in out.windows(12).filter(|w| w.starts_with(b"HTTP/1.")) {
        assert!(
            &head[9..12] != b"500",
            "500 for {:?}",
            String::from_utf8_lossy(data)
        );
    }
}
