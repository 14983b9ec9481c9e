//! The session model and its rules, shared by all dialects: no HTTP, no SQL.

pub mod share;
pub mod time;
pub mod words;
pub mod workspace;

/// Who did something, as the audit table records it (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorType {
    User,
    ApiKey,
    OwnerToken,
    Service,
    System,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::ApiKey => "api_key",
            ActorType::OwnerToken => "owner_token",
            ActorType::Service => "service",
            ActorType::System => "system",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Actor {
    pub kind: ActorType,
    pub id: Option<String>,
    pub email: Option<String>,
    pub ip: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            kind: ActorType::System,
            id: None,
            email: None,
            ip: None,
        }
    }
}

/// One audit row to write, in the same transaction as the change it describes.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub account_id: Option<i64>,
    pub actor: Actor,
    pub action: String,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub success: bool,
    pub summary: String,
    /// A JSON object's text.
    pub metadata: String,
}

impl AuditEntry {
    pub fn new(
        account_id: Option<i64>,
        actor: &Actor,
        action: &str,
        resource_type: &'static str,
        resource_id: &str,
    ) -> AuditEntry {
        AuditEntry {
            account_id,
            actor: actor.clone(),
            action: action.to_string(),
            resource_type,
            resource_id: resource_id.to_string(),
            success: true,
            summary: String::new(),
            metadata: "{}".to_string(),
        }
    }

    pub fn summary(mut self, summary: impl Into<String>) -> AuditEntry {
        self.summary = summary.into();
        self
    }

    pub fn metadata(mut self, metadata: serde_json::Value) -> AuditEntry {
        self.metadata = metadata.to_string();
        self
    }

    /// The metadata as a JSON object's text already written (see `api::json::Obj`).
    pub fn metadata_text(mut self, metadata: String) -> AuditEntry {
        self.metadata = metadata;
        self
    }
}
