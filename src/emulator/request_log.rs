//! Every ACS request with its arrival and answer times, for `GET /admin/requests`: tests
//! read it to prove timing promises that counts cannot show, such as "no request went out
//! before the `Retry-After` of a 429 had passed".

use std::collections::VecDeque;

use jiff::Timestamp;
use percent_encoding::percent_decode_str;
use serde::Serialize;

/// The log keeps the newest entries only, so a long benchmark cannot exhaust memory.
pub const CAPACITY: usize = 200_000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Counts every request since start (or the last clear); gaps show evicted entries.
    pub seq: u64,
    pub received_at: Timestamp,
    pub responded_at: Timestamp,
    /// As in `/admin/stats`: `create`, `issue`, ..., or `other`.
    pub operation: String,
    /// HTTP status, or `dropped`.
    pub status: String,
    /// The identity id of the path (`/identities/{id}/...`), percent-decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

#[derive(Debug, Default)]
pub struct RequestLog {
    next_seq: u64,
    entries: VecDeque<RequestRecord>,
}

impl RequestLog {
    /// `seq` is filled in here.
    pub fn record(&mut self, mut record: RequestRecord) {
        record.seq = self.next_seq;
        self.next_seq += 1;
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(record);
    }

    pub fn entries(&self) -> impl Iterator<Item = &RequestRecord> {
        self.entries.iter()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The `{id}` of `/identities/{id}[/...]`, if the path has one.
pub fn identity_of(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next() != Some("identities") {
        return None;
    }
    let id = segments.next().filter(|s| !s.is_empty())?;
    Some(percent_decode_str(id).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operation: &str) -> RequestRecord {
        RequestRecord {
            seq: 99,
            received_at: Timestamp::UNIX_EPOCH,
            responded_at: Timestamp::UNIX_EPOCH,
            operation: operation.into(),
            status: "200".into(),
            identity: None,
            retry_after_seconds: None,
        }
    }

    #[test]
    fn numbers_records_and_keeps_the_newest() {
        let mut log = RequestLog::default();
        for _ in 0..CAPACITY + 2 {
            log.record(record("issue"));
        }
        let seqs: Vec<u64> = log.entries().map(|r| r.seq).collect();
        assert_eq!(seqs.len(), CAPACITY);
        assert_eq!(seqs[0], 2, "the two oldest were evicted");
        assert_eq!(*seqs.last().unwrap(), CAPACITY as u64 + 1);
        log.clear();
        assert_eq!(log.entries().count(), 0);
        log.record(record("create"));
        assert_eq!(
            log.entries().next().unwrap().seq,
            0,
            "clear restarts the count"
        );
    }

    #[test]
    fn identity_comes_from_the_path() {
        assert_eq!(
            identity_of("/identities/8%3Aacs%3Ax/:issueAccessToken").as_deref(),
            Some("8:acs:x")
        );
        assert_eq!(identity_of("/identities/abc").as_deref(), Some("abc"));
        assert_eq!(identity_of("/identities"), None);
        assert_eq!(identity_of("/identities/"), None);
        assert_eq!(identity_of("/other/abc"), None);
    }
}
