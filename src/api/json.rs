//! A JSON object writer for the most requested bodies (a share's full and public views, and the
//! answer to its creation).
//!
//! serde_json escapes a string one byte at a time, through a table and a branch per byte: for a
//! share's full view (733 bytes, nearly all of it URLs, ids and timestamps) that was a fifth of the
//! instructions of `GET /sessions/:id`. Here a string is looked at sixteen bytes at a time, and
//! copied whole when nothing in it needs escaping, which is the rule for these views. The output is
//! what serde_json writes for the same values (its compact format, its escapes); a unit test holds
//! the two together.

use serde::Serialize;

/// One JSON object being written: `{`, then fields in the order they are added, then `}`.
pub struct Obj {
    out: Vec<u8>,
    empty: bool,
}

impl Obj {
    /// An object whose text is expected to need about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Obj {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        Obj { out, empty: true }
    }

    /// Writes `"key":`. Keys are the views' own constant names, which need no escaping.
    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
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

    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Obj {
        let out = self.key(key);
        out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Any other value, written by serde_json (small objects and arrays).
    pub fn value<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> &mut Obj {
        let out = self.key(key);
        if serde_json::to_writer(&mut *out, value).is_err() {
            out.extend_from_slice(b"null");
        }
        self
    }

    /// The finished object's text.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// Appends the JSON string of `parts` joined.
fn string(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        escaped(out, part.as_bytes());
    }
    out.push(b'"');
}

/// Appends `bytes` (UTF-8) escaped as serde_json escapes them: `"` and `\` with a backslash,
/// the controls that have a short escape with it, the other controls as `\u00xx`.
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
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
            let mut ours = Vec::new();
            string(&mut ours, &[s]);
            assert_eq!(ours, serde_string(s), "{s:?}");
            // Split anywhere on a character boundary, joined parts write the same string.
            for (i, _) in s.char_indices() {
                let mut joined = Vec::new();
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
            .value(
                "policy",
                &serde_json::json!({ "public": true, "blockPaths": ["/a"] }),
            )
            .value("ids", &["x", "y"])
            .bool("available", true);
        let expected = serde_json::to_vec(&serde_json::json!({
            "id": "a\"b",
            "url": "https://x/s/slug",
            "closed": false,
            "policy": { "public": true, "blockPaths": ["/a"] },
            "ids": ["x", "y"],
            "available": true,
        }))
        .unwrap();
        // serde_json's own map sorts its keys; compare as values, and the order separately.
        let ours = o.finish();
        let parsed: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        assert_eq!(
            parsed,
            serde_json::from_slice::<serde_json::Value>(&expected).unwrap()
        );
        assert!(
            String::from_utf8(ours)
                .unwrap()
                .starts_with(r#"{"id":"a\"b","url":"https://x/s/slug","closed":false,"policy":{"#)
        );
        assert_eq!(Obj::with_capacity(0).finish(), b"{}");
    }
}
