//! Workspaces and their sessions (the NeoSC dialect's model, shared with the runtime dialect):
//! statuses, end reasons, the default catalogue, and roles as NeoSC shows them.

/// Workspace types NeoSC knows.
pub const WORKSPACE_TYPES: &[&str] = &["html5", "rdp", "web", "linux", "browser"];
pub const LAUNCH_MODES: &[&str] = &["iframe", "new_tab", "native"];

/// Session statuses of the workspace dialect.
pub const ACTIVE: &str = "active";
pub const DISCONNECTED: &str = "disconnected";
pub const TERMINATED: &str = "terminated";

/// What a user may do to their session (`POST /api/sessions/{id}/action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAction {
    Logoff,
    Disconnect,
    Lock,
}

impl SessionAction {
    pub fn parse(s: &str) -> Option<SessionAction> {
        match s {
            "logoff" => Some(SessionAction::Logoff),
            "disconnect" => Some(SessionAction::Disconnect),
            "lock" => Some(SessionAction::Lock),
            _ => None,
        }
    }

    /// The status and end reason the action leads to; `None` leaves the session active.
    pub fn outcome(self) -> Option<(&'static str, &'static str)> {
        match self {
            SessionAction::Logoff => Some((TERMINATED, "logoff")),
            SessionAction::Disconnect => Some((DISCONNECTED, "disconnected")),
            SessionAction::Lock => None,
        }
    }

    pub fn audit_action(self) -> &'static str {
        match self {
            SessionAction::Logoff => "logoff_session",
            SessionAction::Disconnect => "disconnect_session",
            SessionAction::Lock => "lock_session",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            SessionAction::Logoff => "Session logged off",
            SessionAction::Disconnect => "Session disconnected",
            SessionAction::Lock => "Session locked",
        }
    }
}

/// Membership roles; NeoSC shows owner and admin as "admin" and member as "user".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    pub fn neosc(self) -> &'static str {
        if self.is_admin() { "admin" } else { "user" }
    }
}

/// A workspace definition as stored and shown.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    pub row_id: i64,
    pub id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub image_url: Option<String>,
    pub cpu: Option<i64>,
    pub memory: Option<String>,
    pub storage: Option<String>,
    pub url: Option<String>,
    pub connection_type: Option<String>,
    pub requires_netbird: bool,
    pub clientless: bool,
    pub launch_mode: String,
    pub icon: Option<String>,
    /// Seconds; the reaper ends sessions older than this.
    pub max_session_duration: Option<i64>,
    /// Seconds without a heartbeat after which the reaper ends a session.
    pub idle_timeout: Option<i64>,
    /// Derived: at least one session on it is active. (An existence test, not a count: a count
    /// grew with every launch on a busy workspace.)
    pub active: bool,
}

/// The catalogue every new account starts with.
pub fn default_catalogue() -> Vec<Workspace> {
    let w = |id: &str, name: &str, kind: &str, description: &str, connection: &str, icon: &str| {
        Workspace {
            id: id.into(),
            name: name.into(),
            kind: kind.into(),
            description: description.into(),
            connection_type: Some(connection.into()),
            clientless: true,
            launch_mode: "iframe".into(),
            icon: Some(icon.into()),
            cpu: Some(2),
            memory: Some("4GB".into()),
            storage: Some("50GB".into()),
            ..Workspace::default()
        }
    };
    vec![
        w(
            "ws-sap-neogenesys",
            "SAP Neogénesys",
            "html5",
            "SAP GUI for HTML5",
            "html5",
            "sap",
        ),
        w(
            "ws-remote-desktop",
            "Remote Desktop",
            "rdp",
            "Windows remote desktop",
            "rdp",
            "monitor",
        ),
        w(
            "ws-linux-desktop",
            "Linux Desktop",
            "linux",
            "Linux desktop environment",
            "vnc",
            "terminal",
        ),
        w(
            "ws-secure-browser",
            "Secure Browser",
            "browser",
            "Isolated web browser",
            "html5",
            "globe",
        ),
    ]
}
