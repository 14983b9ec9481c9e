//! Live viewers of share sessions, and the admission decision that reads and updates them (SPEC §4).
//!
//! Viewer activity is absorbed here, in memory, and flushed to SQLite in batches by the reaper thread
//! (at least once a second and at shutdown): an admitted request never waits for a disk write. Each
//! session's entry is loaded from the store on first use and guarded by a sharded mutex, so the
//! capacity check and the insertion of a new viewer are one atomic step and exactly N viewers get in
//! for `maxConcurrentViewers: N`. Argon2 checks happen outside the lock and are remembered (per viewer
//! id, and per presented secret), so a viewer pays for a password once, not per request.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use blake2::{Blake2b256, Digest};

use crate::auth::{self, Busy, Throttle};
use crate::db::shares::ViewerRow;
use crate::domain::share::{AuthMode, Refusal, Share, basic_password, new_viewer_id, path_blocked};
use crate::domain::time::Millis;
use crate::error::Result;

const SHARDS: usize = 32;
/// Remembered digests of secrets that passed an argon2 check, per session.
const VERIFIED_MEMORY: usize = 16;

/// What the gateway tells us about one viewer request.
pub struct AdmitRequest<'a> {
    pub viewer_id: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub path: &'a str,
    pub password: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub owner_token: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub refusal: Option<Refusal>,
    pub viewer_id: Option<String>,
}

/// A viewer as the full view shows it.
#[derive(Clone, Debug)]
pub struct LiveViewer {
    pub id: String,
    pub last_seen_at: Millis,
    pub requests: i64,
    pub ip: Option<String>,
}

/// A gateway's report of one viewer.
pub struct ReportedViewer {
    pub id: String,
    pub last_seen_at: Millis,
    pub requests: i64,
    pub ip: Option<String>,
}

pub type Loaded = (Vec<ViewerRow>, Vec<String>);

struct Viewer {
    since: u64,
    last_seen_at: Millis,
    requests: i64,
    ip: Option<String>,
    password_ok: bool,
    dirty: bool,
}

#[derive(Default)]
struct Entry {
    viewers: HashMap<String, Viewer>,
    kicked: Vec<String>,
    verified: Vec<[u8; 32]>,
    next_seq: u64,
}

impl Entry {
    fn from_store((rows, kicked): Loaded) -> Entry {
        let mut entry = Entry {
            kicked,
            ..Entry::default()
        };
        let mut rows = rows;
        rows.sort_by_key(|v| v.last_seen_at);
        // A kicked viewer is never active, whatever row an older flush left behind.
        rows.retain(|row| !entry.is_kicked(&row.viewer_id));
        for row in rows {
            let since = entry.seq();
            entry.viewers.insert(
                row.viewer_id,
                Viewer {
                    since,
                    last_seen_at: row.last_seen_at,
                    requests: row.requests,
                    ip: row.ip,
                    password_ok: row.password_ok,
                    dirty: false,
                },
            );
        }
        entry
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn is_kicked(&self, viewer_id: &str) -> bool {
        self.kicked.iter().any(|k| k == viewer_id)
    }

    fn active_count(&self, cutoff: Millis) -> usize {
        self.viewers
            .values()
            .filter(|v| v.last_seen_at >= cutoff)
            .count()
    }

    fn remember_verified(&mut self, digest: [u8; 32]) {
        if self.verified.len() >= VERIFIED_MEMORY {
            self.verified.remove(0);
        }
        self.verified.push(digest);
    }
}

/// A map keyed by session id.
type BySession<V> = HashMap<i64, V, BuildHasherDefault<SessionIdHasher>>;

/// Hashes the session ids that key the viewer maps with two multiplications and shifts, which make
/// the low bits (those that pick the bucket) depend on every bit of the id: the ids of one shard
/// share their low bits. SipHash, the default, resists keys chosen to collide, at 140
/// instructions a lookup; these keys are the store's row ids, assigned in sequence, never chosen
/// by a client.
#[derive(Default)]
struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, id: i64) {
        // splitmix64's finalizer.
        let mut z = id as u64;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn shard_of(session_id: i64) -> usize {
    session_id.rem_euclid(SHARDS as i64) as usize
}

pub struct Viewers {
    shards: Vec<Mutex<BySession<Entry>>>,
    idle_timeout: Millis,
    /// Wrong viewer passwords per session and address, and per session (see [`ATTEMPTS`]).
    attempts_by_ip: Throttle,
    attempts_by_session: Throttle,
    /// Sessions that may have viewers or kicks in the store but no entry in memory: those found at
    /// startup ([`Viewers::note_stored`]) and those whose entry was dropped with kicks. Any other
    /// session without an entry has none, so reading it costs no query and no memory.
    stored: Mutex<HashSet<i64, BuildHasherDefault<SessionIdHasher>>>,
    /// Per shard, counts changes that reached the store for a session without an entry in memory
    /// (a kick, a new password, a deletion). A load reads the store outside the lock; when its
    /// shard's count moved meanwhile, what it read may predate the change, and it reads again (see
    /// [`Viewers::locked`]).
    store_changes: Vec<AtomicU64>,
}

/// A shard locked with one session's entry in it (see [`Viewers::locked`]).
struct Locked<'a> {
    shard: MutexGuard<'a, BySession<Entry>>,
    session_id: i64,
}

impl Locked<'_> {
    fn entry(&mut self) -> &mut Entry {
        self.shard
            .get_mut(&self.session_id)
            .expect("the entry stays while its shard is locked")
    }
}

/// Viewer-password guessing: 10 wrong passwords from one address for one session within 5 minutes
/// lock that address out of that session's password check for 5 minutes; 100 from any addresses
/// lock every new viewer out for a minute. Viewers who passed before are never affected (their
/// password is remembered and costs no check).
pub const ATTEMPTS: (usize, usize) = (10, 100);

/// The digest under which a secret that passed argon2 against `stored` is remembered.
fn verified_digest(stored: &str, presented: &str) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(stored.as_bytes());
    h.update([0u8]);
    h.update(presented.as_bytes());
    h.finalize().into()
}

/// The state of one secret check of an admission, settled outside the lock.
enum Secret {
    NotNeeded,
    /// Required but not presented.
    Missing,
    /// The same secret passed argon2 before for this session.
    Remembered,
    /// Needs an argon2 check.
    Check {
        stored: String,
        presented: String,
    },
}

impl Viewers {
    pub fn new(idle_timeout: Millis) -> Viewers {
        Viewers {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            idle_timeout,
            attempts_by_ip: Throttle::new(ATTEMPTS.0, 300_000, 300_000),
            attempts_by_session: Throttle::new(ATTEMPTS.1, 300_000, 60_000),
            stored: Mutex::default(),
            store_changes: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The sessions with viewer or kick rows in the store at startup.
    pub fn note_stored(&self, sessions: impl IntoIterator<Item = i64>) {
        self.stored().extend(sessions);
    }

    fn stored(&self) -> MutexGuard<'_, HashSet<i64, BuildHasherDefault<SessionIdHasher>>> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shard(&self, session_id: i64) -> MutexGuard<'_, BySession<Entry>> {
        self.shards[shard_of(session_id)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The count of store changes of the session's shard.
    fn store_changes(&self, session_id: i64) -> &AtomicU64 {
        &self.store_changes[shard_of(session_id)]
    }

    /// Locks the session's shard with its entry in it, loading the entry from the store first
    /// when the store may have rows for it. The load runs outside the lock, and runs again when a
    /// change reached the store meanwhile. Every read or change of an entry happens under one
    /// `locked`: an entry dropped by [`Viewers::remove_idle`] between two locks is loaded again,
    /// never started afresh without its kicks. (Locks: a shard, then `stored`; never the other way
    /// round.)
    fn locked(&self, session_id: i64, load: &impl Fn() -> Result<Loaded>) -> Result<Locked<'_>> {
        loop {
            let changes = {
                let mut shard = self.shard(session_id);
                if shard.contains_key(&session_id) || !self.stored().contains(&session_id) {
                    shard.entry(session_id).or_default();
                    return Ok(Locked { shard, session_id });
                }
                self.store_changes(session_id).load(Ordering::SeqCst)
            };
            let loaded = Entry::from_store(load()?);
            let mut shard = self.shard(session_id);
            if let std::collections::hash_map::Entry::Vacant(vacant) = shard.entry(session_id) {
                if self.store_changes(session_id).load(Ordering::SeqCst) != changes {
                    continue;
                }
                vacant.insert(loaded);
                self.stored().remove(&session_id);
            }
            return Ok(Locked { shard, session_id });
        }
    }

    /// Notes, under the session's shard lock, that its rows in the store changed while it had no
    /// entry in memory.
    fn note_store_change(&self, session_id: i64, _shard: &MutexGuard<'_, BySession<Entry>>) {
        self.store_changes(session_id)
            .fetch_add(1, Ordering::SeqCst);
    }

    /// True when the session has neither an entry nor rows in the store: nothing to show.
    fn is_blank(&self, session_id: i64) -> bool {
        let shard = self.shard(session_id);
        !shard.contains_key(&session_id) && !self.stored().contains(&session_id)
    }

    /// Decides one viewer request, in the order of SPEC §4, and records the activity of an admitted one.
    pub fn admit(
        &self,
        share: &Share,
        req: &AdmitRequest,
        now: Millis,
        load: impl Fn() -> Result<Loaded>,
    ) -> Result<Decision> {
        let answer_id = req
            .viewer_id
            .map(str::to_string)
            .unwrap_or_else(new_viewer_id);
        let refuse = |r: Refusal| {
            Ok(Decision {
                refusal: Some(r),
                viewer_id: Some(answer_id.clone()),
            })
        };
        if share.closed && !share.ended_by_expiry {
            return refuse(Refusal::Closed);
        }
        if share.ended_by_expiry || now >= share.expires_at {
            return refuse(Refusal::Expired);
        }
        if req.owner_token.is_some_and(|t| share.is_owner_token(t)) {
            return Ok(Decision {
                refusal: None,
                viewer_id: req.viewer_id.map(str::to_string),
            });
        }
        // First pass under the lock: everything that needs no argon2.
        let (basic, password) = {
            let mut locked = self.locked(share.id, &load)?;
            let entry = &*locked.entry();
            if req.viewer_id.is_some_and(|id| entry.is_kicked(id)) {
                return refuse(Refusal::Kicked);
            }
            if !share.policy.public {
                return refuse(Refusal::Locked);
            }
            let check = |stored: &str, presented: &str| {
                let remembered = entry.verified.contains(&verified_digest(stored, presented));
                if remembered {
                    Secret::Remembered
                } else {
                    Secret::Check {
                        stored: stored.to_string(),
                        presented: presented.to_string(),
                    }
                }
            };
            let basic = match (share.auth_mode, &share.basic_password_hash) {
                (AuthMode::Basic, Some(stored)) => match req.authorization.and_then(basic_password)
                {
                    Some(p) => check(stored, &p),
                    None => return refuse(Refusal::BasicAuthRequired),
                },
                _ => Secret::NotNeeded,
            };
            let passed_before = req
                .viewer_id
                .and_then(|id| entry.viewers.get(id))
                .is_some_and(|v| v.password_ok);
            let password = match (&share.policy.password_hash, req.password) {
                (None, _) => Secret::NotNeeded,
                (Some(_), _) if passed_before => Secret::NotNeeded,
                (Some(_), None) => Secret::Missing,
                (Some(stored), Some(p)) => check(stored, p),
            };
            (basic, password)
        };

        // Argon2, outside the lock and bounded in concurrency, unless this address (or everyone)
        // has guessed wrong too often lately. Viewers who passed before present nothing.
        // A remembered secret costs no argon2 but is still a guess: a locked-out address must
        // not learn that its guess was right.
        let guessing = |s: &Secret| matches!(s, Secret::Check { .. } | Secret::Remembered);
        let guesses = guessing(&basic) || guessing(&password);
        // The attempt counters' keys, made only for a request that guesses (most present nothing).
        let by_ip = || [format!("{}|{}", share.id, req.ip.unwrap_or("-"))];
        let by_session = || [share.id.to_string()];
        if guesses
            && (self.attempts_by_ip.check(&by_ip(), now).is_err()
                || self.attempts_by_session.check(&by_session(), now).is_err())
        {
            return refuse(Refusal::TooManyAttempts);
        }
        let wrong = |this: &Self| {
            this.attempts_by_ip.fail(&by_ip(), now);
            this.attempts_by_session.fail(&by_session(), now);
        };
        match self.resolve(share.id, basic) {
            Err(Busy) => return refuse(Refusal::Busy),
            Ok(false) => {
                wrong(self);
                return refuse(Refusal::BasicAuthRequired);
            }
            Ok(true) => {}
        }
        let passed_password = matches!(password, Secret::Remembered | Secret::Check { .. });
        match self.resolve(share.id, password) {
            Err(Busy) => return refuse(Refusal::Busy),
            Ok(false) if guesses => {
                wrong(self);
                return refuse(Refusal::PasswordRequired);
            }
            Ok(false) => return refuse(Refusal::PasswordRequired),
            Ok(true) => {}
        }
        if guesses {
            self.attempts_by_ip.succeed(&by_ip());
        }

        if path_blocked(&share.policy.block_paths, req.path) {
            return refuse(Refusal::PathBlocked);
        }

        // Second pass under the lock: capacity and tracking, atomically.
        let mut locked = self.locked(share.id, &load)?;
        let entry = locked.entry();
        if entry.is_kicked(&answer_id) {
            return refuse(Refusal::Kicked);
        }
        let cutoff = now - self.idle_timeout;
        let is_new = entry
            .viewers
            .get(&answer_id)
            .is_none_or(|v| v.last_seen_at < cutoff);
        let max = share.policy.max_viewers;
        if is_new && max > 0 && entry.active_count(cutoff) >= max as usize {
            return refuse(Refusal::TooManyViewers);
        }
        let since = entry.seq();
        let viewer = entry.viewers.entry(answer_id.clone()).or_insert(Viewer {
            since,
            last_seen_at: now,
            requests: 0,
            ip: None,
            password_ok: false,
            dirty: true,
        });
        viewer.requests += 1;
        viewer.last_seen_at = viewer.last_seen_at.max(now);
        if let Some(ip) = req.ip {
            if viewer.ip.as_deref() != Some(ip) {
                viewer.ip = Some(ip.to_string());
            }
        }
        viewer.password_ok |= passed_password;
        viewer.dirty = true;
        Ok(Decision {
            refusal: None,
            viewer_id: Some(answer_id),
        })
    }

    /// Settles a secret check, running argon2 if needed and remembering a success for this session.
    fn resolve(&self, session_id: i64, secret: Secret) -> std::result::Result<bool, Busy> {
        let (stored, presented) = match secret {
            Secret::NotNeeded | Secret::Remembered => return Ok(true),
            Secret::Missing => return Ok(false),
            Secret::Check { stored, presented } => (stored, presented),
        };
        if !auth::verify_password(&presented, &stored)? {
            return Ok(false);
        }
        if let Some(entry) = self.shard(session_id).get_mut(&session_id) {
            entry.remember_verified(verified_digest(&stored, &presented));
        }
        Ok(true)
    }

    /// The session's non-idle viewers (oldest first) and kicked ids.
    pub fn list(
        &self,
        session_id: i64,
        now: Millis,
        load: impl Fn() -> Result<Loaded>,
    ) -> Result<(Vec<LiveViewer>, Vec<String>)> {
        if self.is_blank(session_id) {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut locked = self.locked(session_id, &load)?;
        let entry = &*locked.entry();
        let cutoff = now - self.idle_timeout;
        let mut live: Vec<(&String, &Viewer)> = entry
            .viewers
            .iter()
            .filter(|(_, v)| v.last_seen_at >= cutoff)
            .collect();
        live.sort_by_key(|(_, v)| v.since);
        let viewers = live
            .into_iter()
            .map(|(id, v)| LiveViewer {
                id: id.clone(),
                last_seen_at: v.last_seen_at,
                requests: v.requests,
                ip: v.ip.clone(),
            })
            .collect();
        Ok((viewers, entry.kicked.clone()))
    }

    /// Merges a gateway's snapshot; kicked ids are ignored. Returns how many viewers were taken.
    pub fn merge_snapshot(
        &self,
        session_id: i64,
        reported: Vec<ReportedViewer>,
        load: impl Fn() -> Result<Loaded>,
    ) -> Result<usize> {
        let mut locked = self.locked(session_id, &load)?;
        let entry = locked.entry();
        let mut taken = 0;
        for r in reported {
            if entry.is_kicked(&r.id) {
                continue;
            }
            let since = entry.seq();
            let v = entry.viewers.entry(r.id).or_insert(Viewer {
                since,
                last_seen_at: r.last_seen_at,
                requests: 0,
                ip: None,
                password_ok: false,
                dirty: true,
            });
            v.last_seen_at = v.last_seen_at.max(r.last_seen_at);
            v.requests = v.requests.max(r.requests);
            if r.ip.is_some() {
                v.ip = r.ip;
            }
            v.dirty = true;
            taken += 1;
        }
        Ok(taken)
    }

    /// Applies a committed kick to the in-memory state.
    pub fn kick(&self, session_id: i64, viewer_id: &str) {
        let mut shard = self.shard(session_id);
        match shard.get_mut(&session_id) {
            Some(entry) => {
                entry.viewers.remove(viewer_id);
                if !entry.is_kicked(viewer_id) {
                    entry.kicked.push(viewer_id.to_string());
                }
            }
            // The kick is in the store only: the next use must load it.
            None => {
                self.stored().insert(session_id);
                self.note_store_change(session_id, &shard);
            }
        }
    }

    /// A committed password change: every viewer must pass the new one.
    pub fn reset_passwords(&self, session_id: i64) {
        let mut shard = self.shard(session_id);
        match shard.get_mut(&session_id) {
            Some(entry) => {
                for v in entry.viewers.values_mut() {
                    if v.password_ok {
                        v.password_ok = false;
                        v.dirty = true;
                    }
                }
                entry.verified.clear();
            }
            // A load under way may have read the passes from before the change.
            None => self.note_store_change(session_id, &shard),
        }
    }

    /// Drops a deleted session (its stored viewers went with it).
    pub fn forget(&self, session_id: i64) {
        let mut shard = self.shard(session_id);
        shard.remove(&session_id);
        self.stored().remove(&session_id);
        self.note_store_change(session_id, &shard);
    }

    /// Takes the activity not yet written to the store.
    pub fn take_dirty(&self) -> Vec<(i64, ViewerRow)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (&session_id, entry) in shard.iter_mut() {
                for (id, v) in entry.viewers.iter_mut().filter(|(_, v)| v.dirty) {
                    v.dirty = false;
                    out.push((
                        session_id,
                        ViewerRow {
                            viewer_id: id.clone(),
                            last_seen_at: v.last_seen_at,
                            requests: v.requests,
                            ip: v.ip.clone(),
                            password_ok: v.password_ok,
                        },
                    ));
                }
            }
        }
        out
    }

    /// Puts back activity whose flush failed, so the next flush retries it.
    pub fn restore_dirty(&self, batch: &[(i64, ViewerRow)]) {
        for (session_id, row) in batch {
            if let Some(v) = self
                .shard(*session_id)
                .get_mut(session_id)
                .and_then(|e| e.viewers.get_mut(&row.viewer_id))
            {
                v.dirty = true;
            }
        }
    }

    /// Removes viewers idle since before `cutoff` from memory (entries left empty are dropped; they
    /// reload from the store on next use).
    pub fn remove_idle(&self, cutoff: Millis) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let mut dropped_with_kicks = Vec::new();
            shard.retain(|id, entry| {
                entry
                    .viewers
                    .retain(|_, v| v.last_seen_at >= cutoff || v.dirty);
                if entry.viewers.is_empty() && !entry.kicked.is_empty() {
                    dropped_with_kicks.push(*id);
                }
                !entry.viewers.is_empty()
            });
            self.stored().extend(dropped_with_kicks);
        }
    }

    /// True when the viewer was active in memory since `cutoff` (so a stale stored row must stay).
    pub fn is_active(&self, session_id: i64, viewer_id: &str, cutoff: Millis) -> bool {
        self.shard(session_id)
            .get(&session_id)
            .and_then(|e| e.viewers.get(viewer_id))
            .is_some_and(|v| v.last_seen_at >= cutoff)
    }

    /// How many viewers are live across all sessions (for metrics).
    pub fn live_count(&self, now: Millis) -> usize {
        let cutoff = now - self.idle_timeout;
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|e| e.active_count(cutoff))
                    .sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids of one shard (all alike in their low bits) spread over the buckets: of 4,096 ids,
    /// the low ten bits of the hash take nearly every one of their 1,024 values, as random hashes
    /// would (about 1,006), where the id's own low bits would take 32.
    #[test]
    fn session_ids_of_one_shard_spread_over_the_buckets() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<SessionIdHasher>::default();
        for shard in [0, 7, 31] {
            let buckets: HashSet<u64> = (0..4096)
                .map(|j| build.hash_one(shard + SHARDS as i64 * j) & 1023)
                .collect();
            assert!(
                buckets.len() > 950,
                "shard {shard}: {} buckets",
                buckets.len()
            );
        }
    }

    /// A stored activity row of `viewer`, last seen at 1,000.
    fn row(viewer: &str) -> ViewerRow {
        ViewerRow {
            viewer_id: viewer.into(),
            last_seen_at: 1_000,
            requests: 1,
            ip: None,
            password_ok: false,
        }
    }

    /// A session loaded from the store lists no viewer it has kicked, even when the store still
    /// has an activity row for that viewer (one a flush wrote after the kick, before the flush
    /// skipped kicked viewers).
    #[test]
    fn a_loaded_session_lists_no_kicked_viewer() {
        let viewers = Viewers::new(60_000);
        viewers.note_stored([7]);
        let (live, kicked) = viewers
            .list(7, 2_000, || {
                Ok((vec![row("v1"), row("v2")], vec!["v1".into()]))
            })
            .unwrap();
        let live: Vec<&str> = live.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(live, ["v2"]);
        assert_eq!(kicked, ["v1"]);
    }

    /// A load reads the store outside the lock. A kick that commits and reaches `kick` while the
    /// session has no entry, after the load read the store, must not be lost: the load reads again.
    #[test]
    fn a_kick_during_a_load_is_not_lost() {
        let viewers = Viewers::new(60_000);
        viewers.note_stored([7]);
        let loads = std::cell::Cell::new(0);
        let (live, kicked) = viewers
            .list(7, 2_000, || {
                loads.set(loads.get() + 1);
                if loads.get() == 1 {
                    // The store as this load read it; the kick commits right after.
                    viewers.kick(7, "v1");
                    Ok((vec![row("v1")], vec![]))
                } else {
                    Ok((vec![], vec!["v1".into()]))
                }
            })
            .unwrap();
        assert_eq!(loads.get(), 2);
        assert!(live.is_empty());
        assert_eq!(kicked, ["v1"]);
    }
}
