//! Brute force (issue 7, SPEC §2): the login and viewer-password throttles hold under 1,000
//! attempts, and a password flood cannot starve the other requests (argon2 runs two at a time,
//! four more may wait, the rest are refused at once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// Runs `n` attempts from `threads` threads; `attempt(i)` returns a label, counted.
fn storm(
    n: usize,
    threads: usize,
    attempt: impl Fn(usize) -> String + Send + Sync + 'static,
) -> std::collections::BTreeMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let attempt = Arc::new(attempt);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, counts, attempt) = (next.clone(), counts.clone(), attempt.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let label = attempt(i);
                    *counts.lock().unwrap().entry(label).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

fn login_as(addr: &str, email: &str, password: &str, ip: &str) -> (u16, String) {
    let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
    let r = request(
        addr,
        "POST",
        "/api/auth/login",
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", ip),
        ],
        Some(&body),
    );
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    (r.status, detail)
}

fn label((status, detail): (u16, String)) -> String {
    format!("{status} {detail}")
}

#[test]
fn a_thousand_wrong_logins_reach_the_password_check_only_a_handful_of_times() {
    let server = Server::start_with(Opts::default().arg("--trusted-proxies", "127.0.0.1"));
    // Four clients at a time fit the argon2 permits and queue (2 + 4), so no attempt is turned
    // away as busy and the count of checked guesses does not depend on the machine's speed.
    let threads = 4;
    // One email, from a thousand addresses: the email locks.
    let addr = server.addr.clone();
    let by_email = storm(1000, threads, move |i| {
        label(login_as(
            &addr,
            ADMIN_EMAIL,
            &format!("guess-{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250),
        ))
    });
    eprintln!("one email, many addresses: {by_email:?}");
    let checked = by_email
        .get("401 Invalid credentials")
        .copied()
        .unwrap_or(0);
    assert!(
        (5..=5 + threads).contains(&checked),
        "{checked} guesses reached the password check: {by_email:?}"
    );
    // Everything else was refused without a password check.
    let locked = by_email
        .get("429 Too many failed login attempts; try again later")
        .copied()
        .unwrap_or(0);
    assert_eq!(checked + locked, 1000, "{by_email:?}");
    // The right password does not get through while locked.
    let answer = login_as(&server.addr, ADMIN_EMAIL, ADMIN_PASSWORD, "10.9.9.9");
    assert_eq!(
        label(answer),
        "429 Too many failed login attempts; try again later"
    );

    // One address, a thousand emails: the address locks.
    let addr = server.addr.clone();
    let by_ip = storm(1000, threads, move |i| {
        label(login_as(
            &addr,
            &format!("nobody-{i}@example.com"),
            "guess",
            "10.2.0.1",
        ))
    });
    eprintln!("many emails, one address: {by_ip:?}");
    let checked = by_ip.get("401 Invalid credentials").copied().unwrap_or(0);
    assert!((5..=5 + threads).contains(&checked), "{by_ip:?}");
    let answer = login_as(&server.addr, "someone-else@example.com", "x", "10.2.0.1");
    assert_eq!(
        label(answer),
        "429 Too many failed login attempts; try again later"
    );
    // Failures and lockouts are audited; nothing got in.
    let audited =
        server.query("SELECT status, count(*) FROM audit WHERE action = 'login' GROUP BY status");
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0][0], "failure");
    assert!(!server.log_text().contains("panic"));
}

fn admit_as(
    addr: &str,
    slug: &str,
    ip: &str,
    password: Option<&str>,
    viewer: Option<&str>,
) -> Value {
    let mut body = json!({"ip": ip, "path": "/"});
    if let Some(p) = password {
        body["password"] = json!(p);
    }
    if let Some(v) = viewer {
        body["viewerId"] = json!(v);
    }
    let raw = serde_json::to_vec(&body).unwrap();
    let auth = format!("Bearer {GATEWAY_KEY}");
    let r = request(
        addr,
        "POST",
        &format!("/internal/sessions/by-slug/{slug}/admit"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(&raw),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_thousand_wrong_viewer_passwords_lock_out_the_guesser_not_the_viewers() {
    let server = Server::start();
    let share = create_share(&server, &json!({}));
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/policy", share.slug),
            &share.owner_token,
            &json!({"password": "hunter22"}),
        )
        .expect(200);
    let slug = share.slug.clone();
    // A viewer who got in before the storm.
    let before = admit_as(&server.addr, &slug, "192.0.2.1", Some("hunter22"), None);
    assert_eq!(before["allow"], true);
    let viewer = before["viewerId"].as_str().unwrap().to_string();

    let threads = 4; // as above: no busy refusals, so the lockout is certain
    let addr = server.addr.clone();
    let s = slug.clone();
    let one_ip = storm(1000, threads, move |i| {
        admit_as(&addr, &s, "198.51.100.7", Some(&format!("guess-{i}")), None)["reason"]
            .as_str()
            .unwrap()
            .to_string()
    });
    eprintln!("one address: {one_ip:?}");
    let checked = one_ip.get("password_required").copied().unwrap_or(0);
    assert!((10..=10 + threads).contains(&checked), "{one_ip:?}");
    let refused = one_ip.get("too_many_attempts").copied().unwrap_or(0);
    assert_eq!(checked + refused, 1000, "{one_ip:?}");
    // The guesser is locked out even with the right password; others are not.
    let r = admit_as(&server.addr, &slug, "198.51.100.7", Some("hunter22"), None);
    assert_eq!(
        (r["allow"].clone(), r["reason"].clone()),
        (json!(false), json!("too_many_attempts"))
    );
    assert_eq!(r["status"], 429);
    let r = admit_as(&server.addr, &slug, "203.0.113.9", Some("hunter22"), None);
    assert_eq!(r["allow"], true, "{r}");

    // Guesses from many addresses lock the session's password check for new viewers...
    let addr = server.addr.clone();
    let s = slug.clone();
    // Four clients at a time fit the argon2 permits and queue: every guess is checked until the
    // session locks.
    let many = storm(300, 4, move |i| {
        admit_as(
            &addr,
            &s,
            &format!("100.64.{}.{}", i / 200, i % 200),
            Some("wrong"),
            None,
        )["reason"]
            .as_str()
            .unwrap()
            .to_string()
    });
    eprintln!("many addresses: {many:?}");
    let checked = many.get("password_required").copied().unwrap_or(0);
    // (The first storm's checked guesses count towards the session's 100 too.)
    assert!((1..=100 + 4).contains(&checked), "{many:?}");
    assert!(
        many.get("too_many_attempts").copied().unwrap_or(0) > 0,
        "{many:?}"
    );
    let r = admit_as(&server.addr, &slug, "100.64.9.9", Some("hunter22"), None);
    assert_eq!(r["reason"], "too_many_attempts");
    // ...but never the viewers who passed before.
    let r = admit_as(&server.addr, &slug, "192.0.2.1", None, Some(&viewer));
    assert_eq!(r["allow"], true, "{r}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn healthz_latencies(addr: &str, n: usize) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let r = request(addr, "GET", "/healthz", &[], None);
            assert_eq!(r.status, 200);
            started.elapsed()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_password_flood_does_not_starve_other_requests() {
    let server = Server::start_with(Opts::default().arg("--trusted-proxies", "127.0.0.1"));
    let idle = healthz_latencies(&server.addr, 200);
    // Distinct emails and addresses, so that no throttle stops the flood: every attempt wants
    // an argon2 check.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..32)
        .map(|t| {
            let (addr, stop, busy, checked) = (
                server.addr.clone(),
                stop.clone(),
                busy.clone(),
                checked.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let (status, detail) = login_as(
                        &addr,
                        &format!("flood-{t}-{i}@example.com"),
                        "guess",
                        &format!("10.{t}.{}.{}", i / 250 % 250, i % 250),
                    );
                    match (status, detail.as_str()) {
                        (429, d) if d.starts_with("Too many sign-ins at once") => {
                            busy.fetch_add(1, Ordering::SeqCst);
                        }
                        (401, _) => {
                            checked.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = healthz_latencies(&server.addr, 200);
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        f.join().unwrap();
    }
    let (busy, checked) = (busy.load(Ordering::SeqCst), checked.load(Ordering::SeqCst));
    eprintln!(
        "/healthz p50/p99 idle {:?}/{:?}, during a 32-client password flood {:?}/{:?}; \
         {checked} password checks ran, {busy} refused as busy",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99)
    );
    // The flood met the bound (and was not simply slow), and everyone else was answered.
    assert!(busy > 0 && checked > 0, "busy {busy}, checked {checked}");
    assert!(percentile(&during, 0.99) < Duration::from_secs(2));
}
