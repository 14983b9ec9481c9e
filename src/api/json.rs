//! A JSON object writer for the most requested bodies: a share's full and public views, the
//! answers to its creation, its policy update and an admission. Fields are written in the order
//! they are added (the seed's order); objects and arrays of strings or objects nest.
//!
//! serde_json escapes a string one byte at a time, through a table and a branch per byte: for a
//! share's full view (733 bytes, nearly all of it URLs, ids and timestamps) that was a fifth of the
//! instructions of `GET /sessions/:id`. Here a string is looked at sixteen bytes at a time, and
//! copied whole when nothing in it needs escaping, which is the rule for these views. The output is
//! what serde_json writes for the same values (its compact format, its escapes); a unit test holds
//! the two together.

use crate::domain::time::{Millis, push_rfc3339};
use crate::text::push_decimal;

/// One JSON object being written: `{`, then fields in the order they are added, then `}`.
pub struct Obj {
    out: String,
    empty: bool,
}

impl Obj {
    /// An object whose text is expected to need about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Obj {
        let mut out = String::with_capacity(capacity);
        out.push('{');
        Obj { out, empty: true }
    }

    /// Writes `"key":`. Keys are the views' own constant names, which need no escaping.
    fn key(&mut self, key: &'static str) -> &mut String {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        &mut self.out
    }

    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Obj {
        let out = self.key(key);
        string(out, &[value]);
        self
    }

    /// A string made of `parts` (a URL from its pieces), written without joining them first.
    pub fn joined(&mut self, key: &'static str, parts: &[&str]) -> &mut Obj {
        let out = self.key(key);
        string(out, parts);
        self
    }

    /// `value` as a string, or `null`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Obj {
        match value {
            Some(value) => self.str(key, value),
            None => {
                self.key(key).push_str("null");
                self
            }
        }
    }

    /// A time as an RFC 3339 string (`time::rfc3339`).
    pub fn time(&mut self, key: &'static str, ms: Millis) -> &mut Obj {
        let out = self.key(key);
        out.push('"');
        push_rfc3339(out, ms);
        out.push('"');
        self
    }

    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Obj {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    pub fn int(&mut self, key: &'static str, value: i64) -> &mut Obj {
        let out = self.key(key);
        if value < 0 {
            out.push('-');
        }
        push_decimal(out, value.unsigned_abs());
        self
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(&mut self, key: &'static str, items: &[S]) -> &mut Obj {
        let out = self.key(key);
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            string(out, &[item.as_ref()]);
        }
        out.push(']');
        self
    }

    /// An object, its fields written by `fields`.
    pub fn object(&mut self, key: &'static str, fields: impl FnOnce(&mut Obj)) -> &mut Obj {
        self.key(key);
        self.nested(fields);
        self
    }

    /// An array of objects, one per item, each item's fields written by `fields`.
    pub fn objects<T>(
        &mut self,
        key: &'static str,
        items: impl IntoIterator<Item = T>,
        mut fields: impl FnMut(&mut Obj, T),
    ) -> &mut Obj {
        self.key(key).push('[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.nested(|o| fields(o, item));
        }
        self.out.push(']');
        self
    }

    /// Writes `{`, the fields `fields` adds, and `}` into this object's text.
    fn nested(&mut self, fields: impl FnOnce(&mut Obj)) {
        let mut inner = Obj {
            out: std::mem::take(&mut self.out),
            empty: true,
        };
        inner.out.push('{');
        fields(&mut inner);
        inner.out.push('}');
        self.out = inner.out;
    }

    /// The finished object's text.
    pub fn finish(self) -> Vec<u8> {
        self.finish_string().into_bytes()
    }

    /// The finished object's text, as a `String`.
    pub fn finish_string(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// Appends the JSON string of `parts` joined.
fn string(out: &mut String, parts: &[&str]) {
    out.push('"');
    for part in parts {
        escaped(out, part);
    }
    out.push('"');
}

/// Appends `text` escaped as serde_json escapes it: `"` and `\\` with a backslash, the controls
/// that have a short escape with it, the other controls as `\u00xx`.
fn escaped(out: &mut String, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\0'..='\u{1f}' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = c as u8;
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
            _ => out.push(c),
        }
    }
}

/// Whether any byte is a control, `"` or `\`.
fn needs_escape(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::needs_escape(bytes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }
}

/// Sixteen bytes tested at a time. The compiler does not vectorize the byte loop for strings this
/// short (20 to 60 bytes): the test of a view's strings took 120 instructions a piece without it.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    pub(super) fn needs_escape(bytes: &[u8]) -> bool {
        if bytes.len() < 16 {
            return bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        }
        let mut chunks = bytes.chunks_exact(16);
        for chunk in &mut chunks {
            if any_of_16(chunk.try_into().unwrap()) {
                return true;
            }
        }
        // The last sixteen bytes, overlapping the chunks' when the length is not a multiple.
        !chunks.remainder().is_empty() && any_of_16(bytes[bytes.len() - 16..].try_into().unwrap())
    }

    fn any_of_16(bytes: &[u8; 16]) -> bool {
        // SAFETY: SSE2 is part of x86_64; the load reads the sixteen bytes of `bytes`, unaligned.
        unsafe {
            let v = _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>());
            // A byte below 0x20 is its own minimum with 0x1f.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(control, _mm_or_si128(quote, backslash))) != 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_string(s: &str) -> Vec<u8> {
        serde_json::to_vec(s).unwrap()
    }

    /// Every string serde_json would write, written the same: each byte value alone and at each
    /// place of a word, and random mixes of the characters that matter with ordinary ones.
    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "https://share.example.com/.wormkey/owner?slug=a-b&token=x".into(),
            "é日本\u{7f}\u{80}\u{2028}😀".into(),
        ];
        for b in 0u8..0x80 {
            for at in 0..40 {
                let mut s = "a".repeat(at);
                s.push(char::from(b));
                s.push_str("bcdefgh");
                cases.push(s);
            }
        }
        let alphabet = [
            'a', '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '~', 'é', '\u{7f}', '/',
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            cases.push(s);
        }
        for s in &cases {
            let mut ours = String::new();
            string(&mut ours, &[s]);
            assert_eq!(ours.as_bytes(), serde_string(s), "{s:?}");
            // Split anywhere on a character boundary, joined parts write the same string.
            for (i, _) in s.char_indices() {
                let mut joined = String::new();
                string(&mut joined, &[&s[..i], &s[i..]]);
                assert_eq!(joined, ours, "{s:?} split at {i}");
            }
        }
    }

    #[test]
    fn an_object_is_what_serde_json_writes_for_the_same_fields() {
        let mut o = Obj::with_capacity(16);
        o.str("id", "a\"b")
            .joined("url", &["https://x", "/s/", "slug"])
            .bool("closed", false)
            .object("policy", |p| {
                p.bool("public", true)
                    .int("max", -42)
                    .strs("blockPaths", &["/a", "/\\b"]);
            })
            .object("empty", |_| {})
            .strs::<&str>("none", &[])
            .objects(
                "viewers",
                [("v1", Some("10.0.0.1")), ("v\n2", None)],
                |o, (id, ip)| {
                    o.str("id", id).opt_str("ip", ip).int("requests", 0);
                },
            )
            .objects("noViewers", std::iter::empty::<()>(), |_, _| {})
            .time("at", 1_772_551_800_123)
            .int("big", i64::MIN)
            .bool("available", true);
        let expected = serde_json::json!({
            "id": "a\"b",
            "url": "https://x/s/slug",
            "closed": false,
            "policy": { "public": true, "max": -42, "blockPaths": ["/a", "/\\b"] },
            "empty": {},
            "none": [],
            "viewers": [
                { "id": "v1", "ip": "10.0.0.1", "requests": 0 },
                { "id": "v\n2", "ip": null, "requests": 0 },
            ],
            "noViewers": [],
            "at": "2026-03-03T15:30:00.123Z",
            "big": i64::MIN,
            "available": true,
        });
        // serde_json's own map sorts its keys: compared as values, and the text (our order) with
        // the literal serde_json writes for the fields in that order.
        let ours = String::from_utf8(o.finish()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(parsed, expected);
        assert!(
            ours.starts_with(r#"{"id":"a\"b","url":"https://x/s/slug","closed":false,"policy":{"public":true,"max":-42,"blockPaths":["/a","/\\b"]},"empty":{},"none":[],"viewers":[{"id":"v1","ip":"10.0.0.1","requests":0},{"id":"v\n2","ip":null,"requests":0}],"noViewers":[],"at":"2026-03-03T15:30:00.123Z","big":-9223372036854775808,"available":true}"#),
            "{ours}"
        );
        assert_eq!(Obj::with_capacity(0).finish(), b"{}");
    }
}
