//! The entries appended last, kept decoded.
//!
//! openraft 0.9 reads back, through the log reader, every entry it has just
//! appended: the leader once per follower to replicate it and once more to
//! apply it, a follower once to apply it. Read from sled, each read is a
//! lookup, a decode and, later, dropping the copy: under 256 writers,
//! decoding alone was 4.9% of a leader's samples. An entry's commands are
//! shared (`Request::commands` is an `Arc`), so a clone from here costs a
//! reference count.
//!
//! Invariant: the entries held are contiguous and are the tail of the log
//! (the log holds nothing after the last of them), because every change to
//! the log's tail passes through here: appends push, truncations cut. Purges
//! cut the head. Anything else (an entry that does not follow the last one)
//! empties the window rather than leave a gap in it.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use crate::types::Entry;

/// How many entries the window holds at most. Replication and apply trail
/// the last append by a few entries; a follower further behind is read from
/// sled.
const MAX_ENTRIES: usize = 256;

/// How many encoded bytes the window holds at most, so that a run of large
/// entries (session transitions carry up to 5 000 member changes) does not
/// hold much memory.
const MAX_BYTES: usize = 4 << 20;

/// The window: the last entries appended, with their encoded sizes.
#[derive(Debug, Default)]
pub struct Recent {
    /// Entries in index order, without gaps, ending at the log's last.
    entries: VecDeque<(Entry, usize)>,
    /// The sum of the encoded sizes held, against `MAX_BYTES`.
    bytes: usize,
}

impl Recent {
    /// Records an entry just appended to the log, `size` bytes encoded.
    pub fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        // An append that overwrites or leaves a gap: openraft truncates
        // first, so this is defensive; the window restarts at the entry.
        if self.next_index().is_some_and(|next| next != index) {
            self.truncate(index);
            if self.next_index().is_some_and(|next| next != index) {
                self.clear();
            }
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            self.pop_front();
        }
    }

    /// Forgets the entries from `index` on, as the log does on truncation.
    pub fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            let (_, size) = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= size;
        }
    }

    /// Forgets the entries up to and including `index`, as the log does on
    /// a purge.
    pub fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            self.pop_front();
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries of `range` if the window can answer for all of it: its
    /// start is held. Entries past the last held are not in the log either,
    /// so a range reaching beyond it is answered with what is held.
    pub fn get<R: RangeBounds<u64>>(&self, range: &R) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        if start < first || start > last {
            return None;
        }
        let end = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_sub(1)?,
            Bound::Unbounded => last,
        }
        .min(last);
        if end < start {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..=to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    fn window(from: u64, to: u64) -> Recent {
        let mut recent = Recent::default();
        for i in from..=to {
            recent.push(entry(i), 10);
        }
        recent
    }

    #[test]
    fn answers_only_ranges_that_start_inside_it() {
        let recent = window(5, 9);
        assert_eq!(indexes(recent.get(&(5..10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(&(6..=7))), Some(vec![6, 7]));
        assert_eq!(indexes(recent.get(&(8..))), Some(vec![8, 9]));
        assert_eq!(indexes(recent.get(&(9..100))), Some(vec![9]));
        assert_eq!(indexes(recent.get(&(7..7))), Some(vec![]));
        // Before the window, or past its end: sled answers.
        assert_eq!(indexes(recent.get(&(4..7))), None);
        assert_eq!(indexes(recent.get(&(10..12))), None);
        assert_eq!(indexes(recent.get(&(..7))), None);
        assert_eq!(indexes(Recent::default().get(&(0..1))), None);
    }

    #[test]
    fn follows_truncations_purges_and_gaps() {
        let mut recent = window(1, 6);
        recent.truncate(5);
        assert_eq!(indexes(recent.get(&(1..))), Some(vec![1, 2, 3, 4]));
        recent.purge(2);
        assert_eq!(indexes(recent.get(&(3..))), Some(vec![3, 4]));
        assert_eq!(recent.get(&(2..)).map(|v| v.len()), None);
        // An overwrite without a truncation cuts the tail first.
        recent.push(entry(4), 10);
        assert_eq!(indexes(recent.get(&(3..))), Some(vec![3, 4]));
        // A gap restarts the window.
        recent.push(entry(9), 10);
        assert_eq!(indexes(recent.get(&(9..))), Some(vec![9]));
        assert_eq!(recent.get(&(4..)).map(|v| v.len()), None);
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn keeps_within_its_bounds() {
        let recent = window(1, MAX_ENTRIES as u64 + 10);
        assert_eq!(recent.entries.len(), MAX_ENTRIES);
        assert_eq!(recent.get(&(10..11)).map(|v| v.len()), None);
        assert_eq!(recent.get(&(11..12)).map(|v| v.len()), Some(1));

        let mut big = Recent::default();
        for i in 1..=5 {
            big.push(entry(i), MAX_BYTES / 2);
        }
        assert_eq!(indexes(big.get(&(4..))), Some(vec![4, 5]));
        assert_eq!(big.bytes, MAX_BYTES);
    }
}
