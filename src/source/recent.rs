//! Rows whose records were loaded in an earlier cycle but that the next cycle reads again.
//!
//! A stream's watermark stops at the commit horizon, so rows changed just before a cycle are read
//! again by the next one (a transaction still open could commit rows stamped before them). Re-reading
//! is what makes late commits safe; re-sending the same records is waste. A row read again with the
//! same timestamp and the same row version (`xmin`, which every update changes) has not changed
//! since its records were loaded, so they are not sent again. Memory holds only the rows above the
//! committed watermarks, bounded; after a restart it is empty and the overlap is sent once more.

use std::collections::{BTreeMap, HashMap};

use crate::checkpoint::{Stream, Watermark};
use crate::position::Key;
use chrono::{DateTime, Utc};

/// Rows remembered per stream at most; past it rows are simply sent again.
const MAX_ROWS_PER_STREAM: usize = 50_000;

/// One version of a changed row: its key, change timestamp and `xmin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVersion {
    pub id: Key,
    pub ts: DateTime<Utc>,
    pub xmin: i64,
}

#[derive(Debug, Clone, Default)]
pub struct RecentlyLoaded {
    rows: BTreeMap<Stream, HashMap<Key, (DateTime<Utc>, i64)>>,
}

impl RecentlyLoaded {
    /// True when exactly this version of the row had its records loaded.
    pub fn contains(&self, stream: &str, row: &RowVersion) -> bool {
        self.rows.get(stream).and_then(|m| m.get(&row.id)) == Some(&(row.ts, row.xmin))
    }

    /// Remembers rows whose records are now stored.
    pub fn remember(&mut self, stream: &str, rows: &[RowVersion]) {
        let map = self.rows.entry(stream.to_string()).or_default();
        for r in rows {
            if map.len() >= MAX_ROWS_PER_STREAM && !map.contains_key(&r.id) {
                break;
            }
            map.insert(r.id.clone(), (r.ts, r.xmin));
        }
    }

    /// Forgets the rows at or below a stream's saved watermark: the stream will not read them again.
    pub fn forget_through(&mut self, stream: &str, saved: &Watermark) {
        if let Some(map) = self.rows.get_mut(stream) {
            map.retain(|id, (ts, _)| (*ts, id) > (saved.ts, &saved.id));
        }
    }

    pub fn len(&self) -> usize {
        self.rows.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(id: u128, secs: i64, xmin: i64) -> RowVersion {
        RowVersion { id: Key::int(id as i64), ts: Utc.timestamp_opt(secs, 0).unwrap(), xmin }
    }

    fn mark(secs: i64) -> Watermark {
        Watermark { ts: Utc.timestamp_opt(secs, 0).unwrap(), id: Key::int(i64::MIN) }
    }

    #[test]
    fn only_the_same_version_of_a_row_counts_as_loaded() {
        let mut r = RecentlyLoaded::default();
        r.remember("film_work", &[row(1, 10, 100), row(2, 11, 101)]);
        assert!(r.contains("film_work", &row(1, 10, 100)));
        // Updated again: a new xmin, even with the same (coarse) timestamp.
        assert!(!r.contains("film_work", &row(1, 10, 102)));
        assert!(!r.contains("film_work", &row(1, 12, 100)));
        // Another stream's row with the same id is another row.
        assert!(!r.contains("genre", &row(1, 10, 100)));
    }

    #[test]
    fn rows_the_stream_will_not_read_again_are_forgotten() {
        let mut r = RecentlyLoaded::default();
        r.remember("person", &[row(1, 10, 100), row(2, 20, 101)]);
        assert_eq!(r.len(), 2);
        r.forget_through("person", &mark(15));
        assert_eq!(r.len(), 1);
        assert!(r.contains("person", &row(2, 20, 101)));
        r.forget_through("genre", &mark(30));
        assert_eq!(r.len(), 1);
    }
}
