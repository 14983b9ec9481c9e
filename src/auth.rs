//! Secrets: generating them, hashing them for storage, comparing them, and throttling guesses.
//!
//! High-entropy tokens are stored as BLAKE2b-256 digests and looked up by digest; human passwords are
//! argon2id at OWASP parameters (19 MiB, t=2, p=1). Argon2 is slow on purpose, so at most
//! [`ARGON2_PERMITS`] hashes run at once and at most [`ARGON2_QUEUE`] more wait: a password flood
//! is refused as [`Busy`] beyond that instead of tying up the workers that answer everyone else.
//! Every random value comes from the operating system's CSPRNG.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2b256, Digest};
use rand::TryRng;
use rand::rngs::SysRng;

use crate::domain::time::Millis;

const ALNUM_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// How many argon2 computations may run at the same time.
pub const ARGON2_PERMITS: usize = 2;
/// How many password checks may wait for a permit; beyond, a check is refused as [`Busy`] at once
/// (so a flood holds at most `ARGON2_PERMITS + ARGON2_QUEUE` workers).
pub const ARGON2_QUEUE: usize = 4;

/// Too many password checks are running and waiting; the caller answers 429/503 and the client
/// retries. Never a verdict on the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// OS random bytes fetched per `getrandom` call and handed out to this thread: a created share
/// needs five random values, and one system call each was a measurable part of the writer's time.
const RANDOM_POOL: usize = 256;

thread_local! {
    /// Bytes from the OS CSPRNG not handed out yet (from `.1` on); handed-out bytes are zeroed.
    static POOL: std::cell::RefCell<([u8; RANDOM_POOL], usize)> =
        const { std::cell::RefCell::new(([0; RANDOM_POOL], RANDOM_POOL)) };
}

/// Fills `buf` from the OS CSPRNG: every byte is the generator's output, used once. Failure of
/// the OS generator is unrecoverable.
pub fn random_bytes(buf: &mut [u8]) {
    let os = |b: &mut [u8]| {
        SysRng
            .try_fill_bytes(b)
            .expect("the operating system's random number generator failed")
    };
    if buf.len() > RANDOM_POOL / 4 {
        return os(buf);
    }
    POOL.with(|pool| {
        let (bytes, next) = &mut *pool.borrow_mut();
        if RANDOM_POOL - *next < buf.len() {
            os(bytes);
            *next = 0;
        }
        let taken = &mut bytes[*next..*next + buf.len()];
        buf.copy_from_slice(taken);
        taken.fill(0);
        *next += buf.len();
    });
}

/// A uniformly random string of `len` characters from `alphabet` (rejection sampling, no modulo bias).
pub fn random_string(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 16];
    while out.len() < len {
        let want = (len - out.len()).min(buf.len());
        random_bytes(&mut buf[..want]);
        for &b in &buf[..want] {
            if (b as usize) < limit {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// 32 chars `[a-z0-9]`: owner tokens and the tail of share session ids.
pub fn random_lower_alnum(len: usize) -> String {
    random_string(ALNUM_LOWER, len)
}

/// Mixed-case alphanumerics: basic-auth passwords.
pub fn random_alnum(len: usize) -> String {
    random_string(ALNUM, len)
}

/// What every API key starts with (SPEC §2), so a bearer can be told apart without a lookup.
pub const API_KEY_PREFIX: &str = "sk_";

/// A new API key, shown once.
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_url_safe(40))
}

/// URL-safe characters: login tokens, API and service keys, scoped tunnel tokens.
pub fn random_url_safe(len: usize) -> String {
    random_string(URL_SAFE, len)
}

pub fn random_hex(len: usize) -> String {
    random_string(b"0123456789abcdef", len)
}

/// A random (version 4) UUID in its hyphenated lower-case form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, group) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        push_hex(&mut out, group);
    }
    out
}

/// The stored form of a high-entropy token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Blake2b256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two byte strings (the length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Compares a presented secret with a configured one, given as its [`token_hash`], without leaking
/// where they differ or their lengths: the presented one is hashed to the same fixed length first.
pub fn ct_eq_secret(presented: &str, configured_hash: &[u8; 32]) -> bool {
    ct_eq(&token_hash(presented), configured_hash)
}

static ARGON2_GATE: Gate = Gate::new(ARGON2_PERMITS);

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, Some(32)).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a human password into a PHC-style string: `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`
/// (salt and hash in lower-case hex).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    let mut out = [0u8; 32];
    {
        let _permit = ARGON2_GATE.acquire();
        argon2()
            .hash_password_into(password.as_bytes(), &salt, &mut out)
            .expect("argon2 accepts a 16-byte salt and 32-byte output");
    }
    format!(
        "$argon2id$v=19$m=19456,t=2,p=1${}${}",
        hex(&salt),
        hex(&out)
    )
}

/// Checks a password against [`hash_password`]'s output in constant time; `Err(Busy)` when the
/// argon2 queue is full.
pub fn verify_password(password: &str, stored: &str) -> Result<bool, Busy> {
    let mut parts = stored.split('$');
    let (Some(""), Some("argon2id"), Some("v=19"), Some(params), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Ok(false);
    };
    let (Some(salt), Some(expected)) = (unhex(salt), unhex(hash)) else {
        return Ok(false);
    };
    let mut m = 0;
    let mut t = 0;
    let mut p = 0;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return Ok(false),
        }
    }
    let Ok(params) = Params::new(m, t, p, Some(expected.len())) else {
        return Ok(false);
    };
    let mut out = vec![0u8; expected.len()];
    let ok = {
        let _permit = ARGON2_GATE.try_acquire(ARGON2_QUEUE).ok_or(Busy)?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), &salt, &mut out)
            .is_ok()
    };
    Ok(ok && ct_eq(&out, &expected))
}

/// A stored-form hash of no real password: unknown users are checked against it, so that a login
/// for an email that does not exist costs the same argon2 time as a wrong password.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_alnum(24)))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` as lower-case hex digits.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Standard base64 decoding (for `Authorization: Basic`), strict about padding and alphabet.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A counting semaphore: at most `permits` holders at once.
pub struct Gate {
    /// (permits in use, callers waiting)
    used: Mutex<(usize, usize)>,
    freed: Condvar,
    permits: usize,
}

pub struct Permit<'a>(&'a Gate);

impl Gate {
    pub const fn new(permits: usize) -> Gate {
        Gate {
            used: Mutex::new((0, 0)),
            freed: Condvar::new(),
            permits,
        }
    }

    pub fn acquire(&self) -> Permit<'_> {
        self.try_acquire(usize::MAX).expect("unbounded wait")
    }

    /// A permit, waiting for one only if fewer than `max_waiting` callers already wait.
    pub fn try_acquire(&self, max_waiting: usize) -> Option<Permit<'_>> {
        let mut state = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 >= self.permits {
            if state.1 >= max_waiting {
                return None;
            }
            state.1 += 1;
            while state.0 >= self.permits {
                state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.1 -= 1;
        }
        state.0 += 1;
        Some(Permit(self))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.used.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        self.0.freed.notify_one();
    }
}

/// Fixed-window counters per key (a client address, a credential): `limit` events per `window`
/// milliseconds.
pub struct RateLimiter<K> {
    limit: u32,
    window_ms: Millis,
    windows: Mutex<HashMap<K, (Millis, u32)>>,
}

/// The state of a key's window after an allowed event.
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(limit: u32, window_ms: Millis) -> RateLimiter<K> {
        RateLimiter {
            limit,
            window_ms,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event; `Err(seconds until the window resets)` when over the limit. A limit of 0
    /// means unlimited.
    pub fn check(&self, key: K, now: Millis) -> Result<Allowance, u64> {
        if self.limit == 0 {
            return Ok(Allowance {
                limit: 0,
                remaining: u32::MAX,
                reset: 0,
            });
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now - *start < self.window_ms);
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now - entry.0 >= self.window_ms {
            *entry = (now, 0);
        }
        let reset = (((entry.0 + self.window_ms - now) + 999) / 1000).max(1) as u64;
        if entry.1 >= self.limit {
            return Err(reset);
        }
        entry.1 += 1;
        Ok(Allowance {
            limit: self.limit,
            remaining: self.limit - entry.1,
            reset,
        })
    }
}

/// RFC 4648 base32 without padding (TOTP secrets).
pub fn base32_encode(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let (mut acc, mut bits, mut out) = (0u32, 0, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A new TOTP secret (160 bits, base32).
pub fn new_totp_secret() -> String {
    let mut b = [0u8; 20];
    random_bytes(&mut b);
    base32_encode(&b)
}

/// The RFC 6238 code (SHA-1, 30 s steps, 6 digits) of `secret` at time step `step`.
pub fn totp_code(secret: &[u8], step: u64) -> u32 {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 1_000_000
}

/// Checks a 6-digit code against `secret` (base32) at `now`, allowing one step either side.
pub fn totp_verify(secret_b32: &str, code: &str, now: Millis) -> bool {
    let Some(secret) = base32_decode(secret_b32) else {
        return false;
    };
    if code.len() != 6 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let Ok(given) = code.parse::<u32>() else {
        return false;
    };
    let step = (now / 1000 / 30) as u64;
    let mut ok = false;
    for s in [step.saturating_sub(1), step, step + 1] {
        ok |= ct_eq(&totp_code(&secret, s).to_be_bytes(), &given.to_be_bytes());
    }
    ok
}

/// Login throttling (SPEC §2): after `limit` failures for one key (an email or an IP) within
/// `window`, further attempts are refused for `lockout`.
pub struct Throttle {
    limit: usize,
    window: Millis,
    lockout: Millis,
    state: Mutex<HashMap<String, (Vec<Millis>, Millis)>>,
}

impl Throttle {
    pub fn new(limit: usize, window: Millis, lockout: Millis) -> Throttle {
        Throttle {
            limit,
            window,
            lockout,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while any of `keys` is locked out.
    pub fn check(&self, keys: &[String], now: Millis) -> Result<(), u64> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = keys
            .iter()
            .filter_map(|k| state.get(k))
            .map(|(_, until)| *until)
            .max()
            .unwrap_or(0);
        if until > now {
            Err(((until - now + 999) / 1000) as u64)
        } else {
            Ok(())
        }
    }

    pub fn fail(&self, keys: &[String], now: Millis) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.len() > 100_000 {
            state.retain(|_, (fails, until)| {
                *until > now || fails.iter().any(|t| now - t < self.window)
            });
        }
        for key in keys {
            let (fails, until) = state.entry(key.clone()).or_default();
            fails.retain(|t| now - t < self.window);
            fails.push(now);
            if fails.len() >= self.limit {
                *until = now + self.lockout;
                fails.clear();
            }
        }
    }

    pub fn succeed(&self, keys: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some((fails, _)) = state.get_mut(key) {
                fails.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn a_secret_matches_only_the_hash_of_itself() {
        let key = "gateway-key-0123456789";
        let hash = token_hash(key);
        assert!(ct_eq_secret(key, &hash));
        for other in [
            "",
            "gateway-key-012345678",
            "gateway-key-01234567890",
            "Gateway-key-0123456789",
        ] {
            assert!(!ct_eq_secret(other, &hash), "{other}");
        }
    }

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify_password("correct horse", &h), Ok(true));
        assert_eq!(verify_password("correct horsf", &h), Ok(false));
        assert_eq!(verify_password("correct horse", "garbage"), Ok(false));
    }

    #[test]
    fn random_strings_use_their_alphabet() {
        let s = random_lower_alnum(32);
        assert_eq!(s.len(), 32);
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(random_lower_alnum(32), s);
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        let dashes: Vec<usize> = u.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
    }

    #[test]
    fn pooled_random_bytes_are_never_handed_out_twice() {
        // Draws of every size cross the pool's refills; a byte handed out twice or a pool that
        // stopped refilling would repeat a 16-byte value.
        let mut seen = std::collections::HashSet::new();
        for i in 0..5_000 {
            let mut b = [0u8; 16];
            random_bytes(&mut b[..1 + i % 16]);
            let mut full = [0u8; 16];
            random_bytes(&mut full);
            assert!(seen.insert(full), "a repeated random value after {i} draws");
        }
        let big = random_string(ALNUM_LOWER, 200);
        assert_eq!(big.len(), 200);
        assert_ne!(big, random_string(ALNUM_LOWER, 200));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("d29ybTpzZWNyZXQ=").unwrap(), b"worm:secret");
        assert_eq!(base64_decode("d29ybQ==").unwrap(), b"worm");
        assert!(base64_decode("d29y*bQ").is_none());
    }

    #[test]
    fn totp_matches_rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits truncated to 6.
        let key = b"12345678901234567890";
        assert_eq!(totp_code(key, 59 / 30), 287_082);
        assert_eq!(totp_code(key, 1_111_111_109 / 30), 81_804);
        assert_eq!(totp_code(key, 1_234_567_890 / 30), 5_924);
        let secret = base32_encode(key);
        assert_eq!(base32_decode(&secret).unwrap(), key);
        assert!(totp_verify(&secret, "005924", 1_234_567_890_000));
        assert!(totp_verify(&secret, "005924", 1_234_567_890_000 + 30_000));
        assert!(!totp_verify(&secret, "005924", 1_234_567_890_000 + 90_000));
        assert!(!totp_verify(&secret, "5924", 1_234_567_890_000));
    }

    #[test]
    fn throttle_locks_out_after_the_limit() {
        let t = Throttle::new(3, 300_000, 300_000);
        let keys = vec!["email:a".to_string()];
        for i in 0..3 {
            assert!(t.check(&keys, i).is_ok());
            t.fail(&keys, i);
        }
        assert_eq!(t.check(&keys, 10), Err(300));
        assert!(t.check(&keys, 300_003).is_ok());
    }

    #[test]
    fn rate_limiter_window() {
        let rl = RateLimiter::new(2, 60_000);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(rl.check(ip, 0).unwrap().remaining, 1);
        assert_eq!(rl.check(ip, 1).unwrap().remaining, 0);
        assert_eq!(rl.check(ip, 2).err(), Some(60));
        assert!(rl.check(ip, 60_000).is_ok());
    }
}
