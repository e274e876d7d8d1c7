//! The secret-leak scan: no 6-character piece of any token, key or connection-string
//! secret in any text the operator produced (logs, events, status, metrics).
//!
//! Ordinary text could contain a 6-character piece of a long random string by chance
//! (lowercase words, hex ids, digits). Pieces made only of `[a-z0-9:._-]` are therefore
//! not searched: every real leak of a base64 or JWT string shows many pieces with an
//! uppercase letter, `+` or `/`, and those do not occur by chance in our texts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

pub const PIECE: usize = 6;

/// Every secret the suite saw, across scenarios.
pub static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub fn remember(secret: &str) {
    if secret.len() >= PIECE {
        SECRETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(secret.to_string());
    }
}

fn distinctive(piece: &[u8]) -> bool {
    piece
        .iter()
        .any(|b| b.is_ascii_uppercase() || *b == b'+' || *b == b'/')
}

/// One place where a secret's piece was found (the secret itself is never printed).
#[derive(Debug, Clone)]
pub struct Hit {
    pub place: String,
    pub offset: usize,
    /// Index of the secret in the scanned set, and its length.
    pub secret: usize,
    pub secret_len: usize,
}

/// Scans `places` (name, text) for any distinctive 6-byte piece of any secret.
pub fn scan(secrets: &BTreeSet<String>, places: &[(String, String)]) -> Vec<Hit> {
    let mut pieces: HashMap<&[u8], usize> = HashMap::new();
    for (i, s) in secrets.iter().enumerate() {
        for w in s.as_bytes().windows(PIECE).filter(|w| distinctive(w)) {
            pieces.entry(w).or_insert(i);
        }
    }
    let lens: Vec<usize> = secrets.iter().map(String::len).collect();
    let mut hits = Vec::new();
    for (place, text) in places {
        let mut seen_in_place = BTreeSet::new();
        for (offset, w) in text.as_bytes().windows(PIECE).enumerate() {
            if let Some(&i) = pieces.get(w)
                && seen_in_place.insert(i)
            {
                hits.push(Hit {
                    place: place.clone(),
                    offset,
                    secret: i,
                    secret_len: lens[i],
                });
            }
        }
    }
    hits
}

/// Number of distinct secrets with at least one hit.
pub fn distinct_secrets(hits: &[Hit]) -> u64 {
    hits.iter().map(|h| h.secret).collect::<BTreeSet<_>>().len() as u64
}

/// Whether `text` holds a distinctive piece of `secret`.
pub fn leaks(secret: &str, text: &str) -> bool {
    let set = [secret.to_string()].into_iter().collect();
    !scan(&set, &[(String::new(), text.to_string())]).is_empty()
}

/// `text` with every 6-character piece of `secret` replaced, for reports.
pub fn redact(text: &str, secret: &str) -> String {
    let mut out = text.to_string();
    for w in secret.as_bytes().windows(PIECE) {
        if let Ok(w) = std::str::from_utf8(w) {
            out = out.replace(w, "<piece>");
        }
    }
    out
}

#[test]
fn finds_a_piece_and_ignores_ordinary_text() {
    let secrets: BTreeSet<String> = ["eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.QmFk+/Xy".to_string()]
        .into_iter()
        .collect();
    let clean = vec![(
        "log".to_string(),
        "user 8:acs:1234abcd issued token; namespace team-a".to_string(),
    )];
    assert!(scan(&secrets, &clean).is_empty());
    let leaked = vec![("event".to_string(), "error near 'UzI1Ni' here".to_string())];
    let hits = scan(&secrets, &leaked);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].offset, 12);
    assert_eq!(distinct_secrets(&hits), 1);
}
