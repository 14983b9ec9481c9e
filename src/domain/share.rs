//! Share sessions (the Wormkey dialect's model): their policy, the admission refusals, slug and
//! expiry rules. Plain data and pure functions; the live viewer state is in `viewers.rs`.

use crate::auth;
use crate::domain::time::Millis;
use crate::domain::words::{ADJECTIVES, NOUNS};

pub const SCOPES: &[&str] = &["tunnel:connect", "tunnel:read", "tunnel:close"];
pub const SCOPED_TOKEN_MAX_TTL: Millis = 24 * 3_600_000;
pub const BASIC_USERNAME: &str = "worm";
pub const DEFAULT_MAX_VIEWERS: i64 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Basic,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Basic => "basic",
        }
    }

    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "none" => Some(AuthMode::None),
            "basic" => Some(AuthMode::Basic),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub public: bool,
    pub max_viewers: i64,
    pub block_paths: Vec<String>,
    /// argon2id hash of the viewer password, if one is set.
    pub password_hash: Option<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            public: true,
            max_viewers: DEFAULT_MAX_VIEWERS,
            block_paths: Vec::new(),
            password_hash: None,
        }
    }
}

/// A stored share session as the store returns it.
#[derive(Clone, Debug)]
pub struct Share {
    pub id: i64,
    pub uid: String,
    pub account_id: i64,
    pub slug: String,
    pub owner_token_hash: Vec<u8>,
    pub auth_mode: AuthMode,
    pub basic_password_hash: Option<String>,
    pub policy: Policy,
    /// Ended, for any reason (views show `closed: true`).
    pub closed: bool,
    /// Ended by the expiry sweep (admission answers `expired`, not `closed`).
    pub ended_by_expiry: bool,
    pub created_at: Millis,
    pub expires_at: Millis,
}

impl Share {
    pub fn available(&self, now: Millis) -> bool {
        !self.closed && now < self.expires_at
    }

    /// True when `token` is this session's owner token (constant time).
    pub fn is_owner_token(&self, token: &str) -> bool {
        auth::ct_eq(&auth::token_hash(token), &self.owner_token_hash)
    }
}

/// Why an admission was refused, with the status and reason the gateway gets (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Closed,
    Expired,
    Kicked,
    Locked,
    BasicAuthRequired,
    PasswordRequired,
    PathBlocked,
    TooManyViewers,
    /// Too many wrong passwords from this viewer's address (or for this session) lately.
    TooManyAttempts,
    /// The password checks are saturated; the gateway asks again shortly.
    Busy,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Closed | Refusal::Expired => 410,
            Refusal::Kicked | Refusal::PathBlocked => 403,
            Refusal::Locked | Refusal::BasicAuthRequired | Refusal::PasswordRequired => 401,
            Refusal::TooManyViewers | Refusal::TooManyAttempts => 429,
            Refusal::Busy => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Closed => "closed",
            Refusal::Expired => "expired",
            Refusal::Kicked => "kicked",
            Refusal::Locked => "locked",
            Refusal::BasicAuthRequired => "basic_auth_required",
            Refusal::PasswordRequired => "password_required",
            Refusal::PathBlocked => "path_blocked",
            Refusal::TooManyViewers => "too_many_viewers",
            Refusal::TooManyAttempts => "too_many_attempts",
            Refusal::Busy => "busy",
        }
    }
}

/// `/admin` blocks `/admin` and `/admin/x`, not `/administrator`. The query string is not part of the
/// path; a trailing slash on the entry is ignored.
pub fn path_blocked(block_paths: &[String], path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    block_paths.iter().any(|entry| {
        // Entries start with '/' (checked when the policy is set), so "/" trims to "" and blocks all.
        let entry = entry.trim_end_matches('/');
        match path.strip_prefix(entry) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    })
}

/// How many of a share session id's 32 characters hold its creation time.
const UID_TIME_CHARS: usize = 9;

/// A new share session id: `sess_` and 32 characters `[a-z0-9]` (SPEC §1). The first
/// [`UID_TIME_CHARS`] are the creation time in milliseconds, in base 36 and zero-padded, so that ids
/// sort by creation (until the year 5188); the other 23 are random (119 bits from the OS CSPRNG).
///
/// Why not 32 random characters: an id is a key of the `sessions.uid` index, and a random key
/// lands on a random leaf page, which the commit must then write to the WAL and fsync. The ids of a
/// batch of creates made in the same millisecond or two share one or two leaves instead, which
/// made a group commit of ten share creates about 20% cheaper. The id is not a secret (the owner
/// token is), and the creation time it shows is in every view of the session anyway.
pub fn new_session_uid(now: Millis) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut time = [b'0'; UID_TIME_CHARS];
    let mut rest = now.max(0) as u64;
    for slot in time.iter_mut().rev() {
        *slot = DIGITS[(rest % 36) as usize];
        rest /= 36;
    }
    let mut uid = String::with_capacity(5 + 32);
    uid.push_str("sess_");
    uid.extend(time.iter().map(|&c| c as char));
    uid.push_str(&auth::random_lower_alnum(32 - UID_TIME_CHARS));
    uid
}

/// `adjective-noun-N`, N in 1..=9999.
pub fn new_slug() -> String {
    let mut b = [0u8; 8];
    auth::random_bytes(&mut b);
    let a = u16::from_le_bytes([b[0], b[1]]) as usize % ADJECTIVES.len();
    let n = u16::from_le_bytes([b[2], b[3]]) as usize % NOUNS.len();
    let num = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) % 9999 + 1;
    let (adjective, noun) = (ADJECTIVES[a], NOUNS[n]);
    let mut slug = String::with_capacity(adjective.len() + noun.len() + 6);
    slug.push_str(adjective);
    slug.push('-');
    slug.push_str(noun);
    slug.push('-');
    crate::text::push_decimal(&mut slug, num.into());
    slug
}

/// A plausible slug: only what [`new_slug`] can produce is ever looked up.
pub fn looks_like_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// `<n>m` or `<n>h` (the share dialect's `expiresIn` and `maxTtl`), as milliseconds; `None` otherwise.
pub fn parse_minutes_or_hours(s: &str) -> Option<Millis> {
    let (digits, factor) = if let Some(d) = s.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = s.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        return None;
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    (n > 0).then_some(n * factor)
}

/// A fresh viewer id: 12 hex characters.
pub fn new_viewer_id() -> String {
    auth::random_hex(12)
}

/// Extracts the password of `Authorization: Basic …` when the user is [`BASIC_USERNAME`].
pub fn basic_password(authorization: &str) -> Option<String> {
    let (scheme, value) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(auth::base64_decode(value.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (user == BASIC_USERNAME).then(|| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_paths_match_at_segment_boundaries() {
        let blocked = vec!["/admin".to_string(), "/api/private/".to_string()];
        assert!(path_blocked(&blocked, "/admin"));
        assert!(path_blocked(&blocked, "/admin/x"));
        assert!(path_blocked(&blocked, "/admin?x=1"));
        assert!(!path_blocked(&blocked, "/administrator"));
        assert!(path_blocked(&blocked, "/api/private"));
        assert!(path_blocked(&blocked, "/api/private/keys"));
        assert!(!path_blocked(&blocked, "/api/privateer"));
        assert!(!path_blocked(&blocked, "/"));
        assert!(!path_blocked(&[], "/admin"));
    }

    #[test]
    fn session_ids_have_the_documented_shape_and_sort_by_creation() {
        let now = 1_795_000_000_000; // November 2026
        let mut earlier = String::new();
        for step in [0, 1, 2, 999, 86_400_000, 3_000_000_000_000] {
            let uid = new_session_uid(now + step);
            let tail = uid.strip_prefix("sess_").expect("the prefix");
            assert_eq!(tail.len(), 32, "{uid}");
            assert!(
                tail.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{uid}"
            );
            assert!(uid > earlier, "{uid} sorts after {earlier}");
            earlier = uid;
        }
        // Same millisecond: the same time prefix, a different random tail.
        let (a, b) = (new_session_uid(now), new_session_uid(now));
        assert_eq!(a[..5 + UID_TIME_CHARS], b[..5 + UID_TIME_CHARS]);
        assert_ne!(a, b);
        // The prefix is the time in base 36: 1_795_000_000_000 ms.
        assert_eq!(&a[5..5 + UID_TIME_CHARS], "0mwm0nk74");
        assert_eq!(&new_session_uid(0)[5..5 + UID_TIME_CHARS], "000000000");
    }

    #[test]
    fn slugs_have_the_documented_shape() {
        for _ in 0..100 {
            let slug = new_slug();
            let parts: Vec<&str> = slug.split('-').collect();
            assert_eq!(parts.len(), 3, "{slug}");
            assert!(ADJECTIVES.contains(&parts[0]) && NOUNS.contains(&parts[1]));
            let n: u32 = parts[2].parse().unwrap();
            assert!((1..=9999).contains(&n));
            assert!(looks_like_slug(&slug));
        }
        assert!(ADJECTIVES.len() >= 128 && NOUNS.len() >= 128);
    }

    #[test]
    fn minutes_or_hours() {
        assert_eq!(parse_minutes_or_hours("30m"), Some(1_800_000));
        assert_eq!(parse_minutes_or_hours("2h"), Some(7_200_000));
        for bad in ["", "m", "0m", "-1h", "1d", "1.5h", "10", "h1"] {
            assert_eq!(parse_minutes_or_hours(bad), None, "{bad}");
        }
    }

    #[test]
    fn basic_credentials() {
        assert_eq!(
            basic_password("Basic d29ybTpzZWNyZXQ=").as_deref(),
            Some("secret")
        );
        assert_eq!(
            basic_password("basic d29ybTpzZWNyZXQ="),
            Some("secret".into())
        );
        assert_eq!(basic_password("Basic dXNlcjpzZWNyZXQ="), None); // user:secret
        assert_eq!(basic_password("Bearer abc"), None);
        assert_eq!(basic_password("Basic !!!"), None);
    }
}
