//! The Raft log as segment files of our own, in `<data-dir>/raft-log/`:
//! entries, the vote, the commit and purge markers, as checksummed records
//! appended to preallocated files and synced with `fdatasync` (by the
//! caller: see `crate::log_store` and `crate::log_sync` for when).
//!
//! Written by hand rather than kept in sled because of what sled costs on
//! the write path, measured: each flush is a job for sled's I/O thread
//! pool, whose queue wakes every idle thread (seven) for each job, and
//! under 256 writers sled was 36% of a leader's samples, 24 points of them
//! its pool (11 waking and going back to sleep). A log is only ever
//! appended, cut at the tail and dropped at the head; a file does that
//! with one `pwrite` per append and an `fdatasync` for any number of them.
//! No crate of the chosen stack offers such a log.
//!
//! Layout: segments named by a sequence number (`00000000000000000001.log`),
//! each an 8-byte magic followed by records
//! `[len u32][crc32 of len u32][crc32 of body u32][body]`, little-endian;
//! a body is `[kind u8][index u64]`
//! followed by the record's bytes. Records are never rewritten: a
//! truncation and a purge are records too, and replaying every segment in
//! order rebuilds the log. A segment is preallocated (`set_len`), so a
//! sync does not also have to record a new file size, and its unwritten
//! rest reads as zeros, which end the replay.
//!
//! Invariants:
//! - Every segment starts with a checkpoint (vote, commit and purge
//!   markers), so dropping older segments loses no state.
//! - The entries alive (appended, not truncated, not purged) lie in
//!   segments in index order, so the segments before the one holding the
//!   first of them hold nothing alive and are deleted after a purge.
//! - A start never writes into a segment it found: it opens a new one. A
//!   crash can leave a torn or half-synced tail (a record missing, a later
//!   one present); replay stops at the first bad record, and writing after
//!   it could make stale records after the new ones readable again.
//! - A segment is synced whole before the next is opened, and each
//!   segment says whether a start or a full segment opened it (`ORIGIN`):
//!   a torn end is accepted only where a crash can have left one, the
//!   numbers of the segments on disk have no gap, and after a failed write
//!   or sync the log takes no more writes.
//!
//! This module knows nothing about openraft: entries and markers are bytes
//! (`log_store` encodes them).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"FUDLOG1\n";

/// A segment's preallocated size. Larger appends get a segment their size.
/// Unit tests use small segments, to fill some.
const SEGMENT_BYTES: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// `[len u32][crc32 of len u32][crc32 of body u32]` before each body. The
/// length has a checksum of its own so that a damaged length is told from
/// a torn record: trusted, it would stretch the record over the records
/// after it into the zeros past the log's end, which look torn.
const RECORD_HEADER: u64 = 12;

/// `[kind u8][index u64]` at the start of each body.
const BODY_HEADER: usize = 9;

/// An entry: `index` and its encoded bytes.
const ENTRY: u8 = 1;
/// Entries from `index` on are gone.
const TRUNCATE: u8 = 2;
/// Entries up to and including `index` are gone; the bytes are the marker.
const PURGE: u8 = 3;
/// The bytes are the vote.
const VOTE: u8 = 4;
/// The bytes are the commit marker.
const COMMITTED: u8 = 5;
/// How the segment came to be: `index` is `STARTED` or `ROTATED`. First
/// in every segment.
const ORIGIN: u8 = 6;

/// A segment opened by a start: the one before it may end in a write that
/// a crash cut short.
const STARTED: u64 = 0;
/// A segment opened because the one before it was full, which was synced
/// whole first: a record that fails its check there is damage.
const ROTATED: u64 = 1;

/// Where an entry's bytes are.
#[derive(Debug, Clone, Copy)]
struct Location {
    /// The segment's sequence number.
    segment: u64,
    /// The offset of the entry's bytes in the segment.
    offset: u64,
    /// How many bytes.
    len: u32,
}

/// Every sync of the log's segments, one at a time, and whether one
/// failed. On Linux a failed `fsync` leaves the pages it could not write
/// marked clean, and the next `fsync` of the file succeeds: a sync that
/// followed another thread's failed one would report durable what is not.
/// So after a failure every sync fails, and the check and the sync are
/// one step.
#[derive(Debug, Clone, Default)]
pub(crate) struct Syncs(Arc<Mutex<SyncsState>>);

/// See `Syncs`.
#[derive(Debug, Default)]
struct SyncsState {
    /// Why a sync failed, once one has.
    failed: Option<String>,
    /// Makes the next sync fail, for tests.
    #[cfg(test)]
    fail_next: bool,
    /// Makes the next syncs slow, by how much, for tests: (how many, delay).
    #[cfg(test)]
    slow_next: (u32, std::time::Duration),
    /// How many syncs were asked for, for tests.
    #[cfg(test)]
    calls: u64,
}

impl Syncs {
    /// Syncs `file`'s data, unless a sync of the log failed before.
    pub(crate) fn sync(&self, file: &File) -> io::Result<()> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        {
            state.calls += 1;
        }
        if let Some(failed) = &state.failed {
            return Err(io::Error::other(format!(
                "an earlier sync of the log failed: {failed}"
            )));
        }
        #[cfg(test)]
        if state.slow_next.0 > 0 {
            state.slow_next.0 -= 1;
            std::thread::sleep(state.slow_next.1);
        }
        #[cfg(test)]
        let synced = if std::mem::take(&mut state.fail_next) {
            Err(io::Error::other("a sync failed (planted by a test)"))
        } else {
            file.sync_data()
        };
        #[cfg(not(test))]
        let synced = file.sync_data();
        synced.map_err(|e| {
            let failed = format!(
                "{e}; after a failed sync the kernel may report data it could not write \
                 as written: restart the machine, or move the data dir aside, before a \
                 node starts on it again"
            );
            state.failed = Some(failed.clone());
            io::Error::new(e.kind(), failed)
        })
    }

    /// Makes the next `count` syncs take `delay` longer, as on a slow disk.
    #[cfg(test)]
    pub(crate) fn slow_next(&self, count: u32, delay: std::time::Duration) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slow_next = (count, delay);
    }

    /// Makes the next sync fail.
    #[cfg(test)]
    pub(crate) fn fail_next(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail_next = true;
    }

    /// How many syncs were asked for.
    #[cfg(test)]
    pub(crate) fn calls(&self) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).calls
    }
}

/// The log, its markers, and where every live entry is.
#[derive(Debug)]
pub(crate) struct LogFile {
    /// The `raft-log` folder, for new segments and messages.
    dir: PathBuf,
    /// Every segment file still on disk, by sequence number; readers and
    /// the writer share the handles.
    segments: BTreeMap<u64, Arc<File>>,
    /// The segment being appended to (the last of `segments`).
    active: u64,
    /// Where the next record goes in the active segment.
    write_at: u64,
    /// The active segment's size, past which a new segment is needed.
    capacity: u64,
    /// The live entries by index. Usually contiguous; a purge cut short by
    /// an installing snapshot leaves a hole (see `LogStore::purged_past_a_hole`).
    entries: BTreeMap<u64, Location>,
    /// The vote, as stored.
    vote: Option<Vec<u8>>,
    /// The commit marker, as stored.
    committed: Option<Vec<u8>>,
    /// The last purged index and its marker, as stored.
    purged: Option<(u64, Vec<u8>)>,
    /// Set when a write or a sync failed: what is on disk after the last
    /// good record is then unknown, so nothing more is written (a later
    /// write at the same offset would leave stale bytes after it, which
    /// the next start would take for damage).
    failed: Option<String>,
    /// The syncs of the segments (see `Syncs`), shared with whoever syncs
    /// what this writes.
    syncs: Syncs,
}

/// What replaying one segment found.
#[derive(Debug, Clone, Copy)]
struct Replayed {
    /// The segment's `ORIGIN`, if it has one.
    origin: Option<u64>,
    /// It has no header: created, and a crash came before the header was
    /// written (only possible for the last segment).
    headerless: bool,
    /// Its records end at one that a crash cut short.
    torn: bool,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Appends one record to `buf`.
fn push_record(buf: &mut Vec<u8>, kind: u8, index: u64, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(BODY_HEADER + data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a log record of {} bytes is over 4 GiB", data.len()),
        )
    })?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&index.to_le_bytes());
    hasher.update(data);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(data);
    Ok(())
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// Whether the record at `at..end`, which fails its check, was cut short
/// by a crash (the log ends there) rather than damaged (the start stops).
///
/// A segment is preallocated and a record never rewritten, so a write that
/// a crash cut short left some of its sectors unwritten: zeros from the
/// record's start to a sector's end, or over a whole sector (a sector is
/// written whole or not at all). Bytes changed in place (a flipped bit, a
/// bad block read back) leave no such run. etcd's write-ahead log tells the
/// two apart the same way. What this cannot see: a whole damaged sector
/// that reads as zeros, and a damaged record whose own payload holds a
/// sector of zeros.
fn is_torn(file: &File, at: u64, end: u64) -> io::Result<bool> {
    const SECTOR: u64 = 512;
    let mut bytes = vec![0; (end - at) as usize];
    file.read_exact_at(&mut bytes, at)?;
    let mut start = at;
    while start < end {
        let stop = ((start / SECTOR + 1) * SECTOR).min(end);
        let chunk = &bytes[(start - at) as usize..(stop - at) as usize];
        if chunk.iter().all(|b| *b == 0) {
            return Ok(true);
        }
        start = stop;
    }
    Ok(false)
}

fn damaged(at: u64) -> io::Error {
    invalid(format!(
        "a damaged record at offset {at} (its checksum fails, and it is not a write \
         that a crash cut short)"
    ))
}

/// The sequence numbers of the segments in `dir`, in order.
fn segment_seqs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Makes a new or removed directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogFile {
    /// Opens the log in `dir` (creating it if needed), replays every
    /// segment, and starts a new one to append to.
    pub(crate) fn open(dir: &Path) -> io::Result<LogFile> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The folder's own entry, in the data dir, must last too.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let seqs = segment_seqs(dir)?;
        // Only whole segments at the head are ever deleted: a gap is a
        // segment lost.
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(invalid(format!(
                    "{}: segment {} is missing (found {} and {})",
                    dir.display(),
                    segment_name(pair[0] + 1),
                    segment_name(pair[0]),
                    segment_name(pair[1])
                )));
            }
        }
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            active: 0,
            write_at: 0,
            capacity: 0,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            failed: None,
            syncs: Syncs::default(),
        };
        let mut replayed = Vec::new();
        for &seq in &seqs {
            let path = dir.join(segment_name(seq));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let found = log
                .replay(seq, &file)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            replayed.push((path, found));
            log.segments.insert(seq, Arc::new(file));
            log.active = seq;
        }
        // A segment followed by another can end early only if a crash hit
        // it while it was the last: a torn end is damage when a full
        // segment, not a start, opened the next one.
        let written: Vec<_> = replayed.iter().filter(|(_, r)| !r.headerless).collect();
        for pair in written.windows(2) {
            let ((path, this), (_, next)) = (pair[0], pair[1]);
            if this.torn && next.origin == Some(ROTATED) {
                return Err(invalid(format!(
                    "{}: its last record fails its check, though the segment was \
                     synced whole before the next one was opened",
                    path.display()
                )));
            }
        }
        log.start_segment(0, STARTED)?;
        Ok(log)
    }

    /// Whether `dir` holds any segment (a log that was never created, or
    /// was lost, holds none).
    pub(crate) fn exists(dir: &Path) -> io::Result<bool> {
        match segment_seqs(dir) {
            Ok(seqs) => Ok(!seqs.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies one segment's records, up to the first that is torn, to the
    /// state.
    fn replay(&mut self, seq: u64, file: &File) -> io::Result<Replayed> {
        let size = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        let mut found = Replayed {
            origin: None,
            headerless: true,
            torn: false,
        };
        if size < MAGIC.len() as u64 {
            // Created, and the crash came before its header: empty.
            return Ok(found);
        }
        reader.read_exact(&mut magic)?;
        if &magic != MAGIC {
            // Preallocated, and the crash (or a full disk) came before its
            // header. No record was ever written to it: a segment takes
            // records only once its header is synced. Damage that zeroed
            // the header would leave records after it.
            let mut head = vec![0u8; size.min(64 << 10) as usize];
            file.read_exact_at(&mut head, 0)?;
            if head.iter().all(|b| *b == 0) {
                return Ok(found);
            }
            return Err(invalid("not a Fuddle log segment (no header)".into()));
        }
        found.headerless = false;
        let mut at = MAGIC.len() as u64;
        let mut body = Vec::new();
        loop {
            let mut header = [0u8; RECORD_HEADER as usize];
            if at + RECORD_HEADER > size {
                break;
            }
            reader.read_exact(&mut header)?;
            if header == [0; RECORD_HEADER as usize] {
                // The end: nothing was ever written here.
                break;
            }
            let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
            let len_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(len_bytes);
            let end = at + RECORD_HEADER + u64::from(len);
            if crc32fast::hash(&len_bytes) != len_crc || (len as usize) < BODY_HEADER || end > size
            {
                // A length that is not the one written: judge the header
                // alone.
                if !is_torn(file, at, at + RECORD_HEADER)? {
                    return Err(damaged(at));
                }
                found.torn = true;
                break;
            }
            body.resize(len as usize, 0);
            reader.read_exact(&mut body)?;
            if crc32fast::hash(&body) != crc {
                if !is_torn(file, at, end)? {
                    return Err(damaged(at));
                }
                found.torn = true;
                break;
            }
            let index = u64::from_le_bytes(body[1..BODY_HEADER].try_into().expect("8 bytes"));
            let data = &body[BODY_HEADER..];
            let location = Location {
                segment: seq,
                offset: at + RECORD_HEADER + BODY_HEADER as u64,
                len: len - BODY_HEADER as u32,
            };
            // What each record does to the state; writing a record makes
            // the same change through the same helpers.
            match body[0] {
                ENTRY => self.put_entry(index, location),
                TRUNCATE => self.drop_from(index),
                PURGE => self.drop_through(index, data.to_vec()),
                VOTE => self.vote = Some(data.to_vec()),
                COMMITTED => self.committed = Some(data.to_vec()),
                ORIGIN => found.origin = Some(index),
                other => {
                    return Err(invalid(format!(
                        "at offset {at}: unknown record kind {other}"
                    )));
                }
            }
            at += RECORD_HEADER + u64::from(len);
        }
        Ok(found)
    }

    /// Records a live entry. An entry at or below the last replaces the
    /// tail, as a truncation would (openraft truncates first anyway).
    fn put_entry(&mut self, index: u64, location: Location) {
        if self.last_index().is_some_and(|last| last >= index) {
            self.drop_from(index);
        }
        self.entries.insert(index, location);
    }

    /// Forgets the entries from `index` on.
    fn drop_from(&mut self, index: u64) {
        self.entries.split_off(&index);
    }

    /// Forgets the entries up to and including `index`, keeping `marker`.
    fn drop_through(&mut self, index: u64, marker: Vec<u8>) {
        self.entries = self.entries.split_off(&index.saturating_add(1));
        self.purged = Some((index, marker));
    }

    /// Syncs the active segment and starts the next, holding a checkpoint,
    /// with room for at least `room` bytes of records.
    fn start_segment(&mut self, room: u64, origin: u64) -> io::Result<()> {
        if let Some(file) = self.segments.get(&self.active) {
            // Nothing written to the old segment may become durable after
            // what goes to the new one.
            self.syncs.sync(file)?;
        }
        let seq = self
            .active
            .checked_add(1)
            .ok_or_else(|| invalid(format!("{}: no segment number left", self.dir.display())))?;
        let mut buf = MAGIC.to_vec();
        push_record(&mut buf, ORIGIN, origin, &[])?;
        if let Some(vote) = &self.vote {
            push_record(&mut buf, VOTE, 0, vote)?;
        }
        if let Some(committed) = &self.committed {
            push_record(&mut buf, COMMITTED, 0, committed)?;
        }
        if let Some((index, marker)) = &self.purged {
            push_record(&mut buf, PURGE, *index, marker)?;
        }
        let capacity = SEGMENT_BYTES.max(buf.len() as u64 + room);
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let made = file
            .set_len(capacity)
            .and_then(|()| file.write_all_at(&buf, 0))
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = made {
            // Best effort: a segment without its header holds nothing, and
            // a start skips it anyway.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.segments.insert(seq, Arc::new(file));
        self.active = seq;
        self.write_at = buf.len() as u64;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `records` (built by `push_record`, with each entry's offset
    /// relative to their start), starting a new segment if they do not
    /// fit, and returns the segment to sync.
    fn write(&mut self, records: Vec<u8>, entries: &[(u64, u64, u32)]) -> io::Result<Arc<File>> {
        if let Some(failed) = &self.failed {
            return Err(io::Error::other(format!(
                "the log takes no more writes after an earlier failure: {failed}"
            )));
        }
        let written = self.write_unchecked(records, entries);
        if let Err(e) = &written {
            self.fail(e);
        }
        written
    }

    /// Stops all later writes after `error` (see `failed`).
    pub(crate) fn fail(&mut self, error: &io::Error) {
        self.failed.get_or_insert_with(|| error.to_string());
    }

    fn write_unchecked(
        &mut self,
        records: Vec<u8>,
        entries: &[(u64, u64, u32)],
    ) -> io::Result<Arc<File>> {
        if self.write_at + records.len() as u64 > self.capacity {
            self.start_segment(records.len() as u64, ROTATED)?;
        }
        let base = self.write_at;
        let file = Arc::clone(&self.segments[&self.active]);
        file.write_all_at(&records, base)?;
        self.write_at += records.len() as u64;
        for &(index, offset, len) in entries {
            let location = Location {
                segment: self.active,
                offset: base + offset,
                len,
            };
            self.put_entry(index, location);
        }
        Ok(file)
    }

    /// The segment being appended to: a sync of it makes every write so far
    /// durable (each segment before it was synced whole when it was left).
    pub(crate) fn active_segment(&self) -> Arc<File> {
        Arc::clone(&self.segments[&self.active])
    }

    /// How the segments are synced (see `Syncs`).
    pub(crate) fn syncs(&self) -> Syncs {
        self.syncs.clone()
    }

    /// Whether `records` records holding `bytes` bytes in all fit in the
    /// active segment: a write that does not starts a new segment, with
    /// syncs and a file's creation that should not block an async worker.
    pub(crate) fn fits(&self, records: usize, bytes: usize) -> bool {
        let size = records as u64 * (RECORD_HEADER + BODY_HEADER as u64) + bytes as u64;
        self.write_at + size <= self.capacity
    }

    /// Writes entries (index and encoded bytes, in index order); they are
    /// durable once the returned segment is synced (with `syncs`).
    pub(crate) fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<Arc<File>> {
        let mut records = Vec::new();
        let mut locations = Vec::new();
        for (index, bytes) in entries {
            let offset = records.len() as u64 + RECORD_HEADER + BODY_HEADER as u64;
            push_record(&mut records, ENTRY, index, bytes)?;
            locations.push((index, offset, bytes.len() as u32));
        }
        self.write(records, &locations)
    }

    /// Writes the vote; the caller syncs the returned segment.
    pub(crate) fn set_vote(&mut self, vote: Vec<u8>) -> io::Result<Arc<File>> {
        let mut record = Vec::new();
        push_record(&mut record, VOTE, 0, &vote)?;
        let file = self.write(record, &[])?;
        self.vote = Some(vote);
        Ok(file)
    }

    /// Writes the commit marker. It needs no sync of its own: openraft
    /// re-derives one that a power cut loses.
    pub(crate) fn set_committed(&mut self, committed: Vec<u8>) -> io::Result<()> {
        let mut record = Vec::new();
        push_record(&mut record, COMMITTED, 0, &committed)?;
        self.write(record, &[])?;
        self.committed = Some(committed);
        Ok(())
    }

    /// Removes the entries from `index` on; the caller syncs the returned
    /// segment.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<Arc<File>> {
        let mut record = Vec::new();
        push_record(&mut record, TRUNCATE, index, &[])?;
        let file = self.write(record, &[])?;
        self.drop_from(index);
        Ok(file)
    }

    /// Removes the entries up to and including `index` and keeps `marker`;
    /// the caller syncs the returned segment, then calls
    /// `delete_dead_segments` (a segment deleted before the purge is
    /// durable would leave a log with a hole at its start).
    pub(crate) fn purge(&mut self, index: u64, marker: Vec<u8>) -> io::Result<Arc<File>> {
        let mut record = Vec::new();
        push_record(&mut record, PURGE, index, &marker)?;
        let file = self.write(record, &[])?;
        self.drop_through(index, marker);
        Ok(file)
    }

    /// Deletes the segments before the one holding the first live entry
    /// (all but the active one if none is alive): they hold nothing a
    /// replay needs, as the later segments' checkpoints hold the markers.
    pub(crate) fn delete_dead_segments(&mut self) -> io::Result<()> {
        let keep_from = self
            .entries
            .values()
            .next()
            .map_or(self.active, |l| l.segment);
        let dead: Vec<u64> = self.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for seq in &dead {
            self.segments.remove(seq);
            std::fs::remove_file(self.dir.join(segment_name(*seq)))?;
        }
        if !dead.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The vote, as stored.
    pub(crate) fn vote(&self) -> Option<&[u8]> {
        self.vote.as_deref()
    }

    /// The commit marker, as stored.
    pub(crate) fn committed(&self) -> Option<&[u8]> {
        self.committed.as_deref()
    }

    /// The purge marker, as stored.
    pub(crate) fn purged(&self) -> Option<&[u8]> {
        self.purged.as_ref().map(|(_, m)| m.as_slice())
    }

    /// The last live entry's index.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Whether the entry at `index` is live.
    pub(crate) fn contains(&self, index: u64) -> bool {
        self.entries.contains_key(&index)
    }

    /// How many segment files are on disk.
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The live entries in `range`, in index order, as stored.
    pub(crate) fn read_range(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for (index, location) in self.entries.range(range) {
            let file = self.segments.get(&location.segment).ok_or_else(|| {
                invalid(format!(
                    "{}: entry {index} is in segment {} which is gone",
                    self.dir.display(),
                    location.segment
                ))
            })?;
            let mut bytes = vec![0; location.len as usize];
            file.read_exact_at(&mut bytes, location.offset)?;
            out.push(bytes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(log: &LogFile) -> Vec<(u64, Vec<u8>)> {
        let indexes: Vec<u64> = log.entries.keys().copied().collect();
        indexes
            .into_iter()
            .zip(log.read_range(..).unwrap())
            .collect()
    }

    fn bytes(i: u64) -> Vec<u8> {
        format!("entry {i}").into_bytes()
    }

    fn append(log: &mut LogFile, range: std::ops::RangeInclusive<u64>) {
        let data: Vec<(u64, Vec<u8>)> = range.map(|i| (i, bytes(i))).collect();
        let file = log
            .append(data.iter().map(|(i, b)| (*i, b.as_slice())))
            .unwrap();
        file.sync_data().unwrap();
    }

    fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, bytes(i))).collect()
    }

    /// A segment file opened to be damaged.
    fn open_rw(segment: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment)
            .unwrap()
    }

    #[test]
    fn records_replay_to_the_same_log_and_markers() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, 1..=10);
            log.set_vote(b"vote 1".to_vec()).unwrap();
            log.truncate(8).unwrap();
            append(&mut log, 8..=12);
            log.set_committed(b"commit 9".to_vec()).unwrap();
            log.purge(3, b"purged 3".to_vec())
                .unwrap()
                .sync_data()
                .unwrap();
            log.delete_dead_segments().unwrap();
            assert_eq!(entries(&log), expected(4..=12));
        }
        let log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(4..=12));
        assert_eq!(log.vote(), Some(&b"vote 1"[..]));
        assert_eq!(log.committed(), Some(&b"commit 9"[..]));
        assert_eq!(log.purged(), Some(&b"purged 3"[..]));
        assert_eq!(log.last_index(), Some(12));
        assert!(log.contains(4) && !log.contains(3));
    }

    #[test]
    fn a_torn_tail_ends_the_replay_and_the_next_start_writes_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let segment;
        let torn_at;
        {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, 1..=3);
            torn_at = log.write_at;
            append(&mut log, 4..=6);
            segment = tmp.path().join(segment_name(log.active));
        }
        // Entry 4's record never reached the disk while entries 5 and 6,
        // written with it, did: a half-synced write can leave that.
        let file = open_rw(&segment);
        let record = RECORD_HEADER as usize + BODY_HEADER + bytes(4).len();
        file.write_all_at(&vec![0; record], torn_at).unwrap();
        drop(file);

        let mut log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(1..=3));
        append(&mut log, 4..=4);
        drop(log);
        // Entries 5 and 6 stay unreadable: the new 4 went to a new segment.
        let log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(1..=4));
    }

    #[test]
    fn a_damaged_record_stops_the_start_and_a_torn_one_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let segment;
        let second;
        let last;
        {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, 1..=1);
            second = log.write_at;
            append(&mut log, 2..=3);
            last = log.write_at;
            // Entry 4 spans sectors, so that a crash can tear it.
            let big = vec![4u8; 1500];
            log.append([(4, big.as_slice())])
                .unwrap()
                .sync_data()
                .unwrap();
            segment = tmp.path().join(segment_name(log.active));
        }
        let pristine = std::fs::read(&segment).unwrap();
        let file = || open_rw(&segment);
        // One byte of entry 2 flipped: in its body, in its length (which
        // would stretch it into the zeros after the log), in its checksum.
        for offset in [24, 1, 9] {
            std::fs::write(&segment, &pristine).unwrap();
            let mut byte = [0u8; 1];
            file().read_exact_at(&mut byte, second + offset).unwrap();
            file()
                .write_all_at(&[byte[0] ^ 0x01], second + offset)
                .unwrap();
            let err = LogFile::open(tmp.path()).unwrap_err();
            assert!(err.to_string().contains("damaged record"), "{err}");
            assert!(err.to_string().contains(&segment_name(1)), "{err}");
        }
        // The last record cut short: the sector after the one it starts in
        // never written.
        std::fs::write(&segment, &pristine).unwrap();
        let next_sector = (last / 512 + 1) * 512;
        file().write_all_at(&[0; 512], next_sector).unwrap();
        let log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(1..=3));
    }

    #[test]
    fn a_purge_deletes_only_segments_with_nothing_alive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(tmp.path()).unwrap();
        log.set_vote(b"v".to_vec()).unwrap();
        // Each start opens a segment: three segments of entries.
        append(&mut log, 1..=5);
        drop(log);
        let mut log = LogFile::open(tmp.path()).unwrap();
        append(&mut log, 6..=10);
        drop(log);
        let mut log = LogFile::open(tmp.path()).unwrap();
        append(&mut log, 11..=15);
        assert_eq!(log.segment_count(), 3);

        log.purge(7, b"p7".to_vec()).unwrap();
        log.delete_dead_segments().unwrap();
        assert_eq!(log.segment_count(), 2, "the segment of 1..=5 is gone");
        log.purge(15, b"p15".to_vec()).unwrap();
        log.delete_dead_segments().unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment is left");
        drop(log);

        // The markers survive in the checkpoint of the segment left.
        let mut log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(log.vote(), Some(&b"v"[..]));
        assert_eq!(log.purged(), Some(&b"p15"[..]));
        assert_eq!(log.last_index(), None);
        append(&mut log, 16..=16);
        assert_eq!(entries(&log), expected(16..=16));
    }

    #[test]
    fn a_full_segment_continues_in_the_next_with_its_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(tmp.path()).unwrap();
        log.set_vote(b"v".to_vec()).unwrap();
        log.set_committed(b"c".to_vec()).unwrap();
        // An append bigger than a segment gets a segment of its size.
        let big = vec![7u8; SEGMENT_BYTES as usize];
        log.append([(1, big.as_slice())])
            .unwrap()
            .sync_data()
            .unwrap();
        append(&mut log, 2..=3);
        assert_eq!(log.segment_count(), 3);
        drop(log);
        let log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(log.read_range(1..=1).unwrap(), vec![big]);
        assert_eq!(log.read_range(2..).unwrap(), vec![bytes(2), bytes(3)]);
        assert_eq!(log.committed(), Some(&b"c"[..]));
    }

    /// A segment the next one was rotated from was synced whole: a record
    /// there that fails its check is damage even if it looks torn (here
    /// its payload holds a sector of zeros), or the log would go on after
    /// a silent hole.
    #[test]
    fn a_torn_looking_record_in_a_full_segment_is_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let at;
        {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, 1..=1);
            at = log.write_at;
            let zeros = vec![0u8; 2048];
            log.append([(2, zeros.as_slice())]).unwrap();
            // Fill the segment: the next append rotates.
            let filler = vec![9u8; (SEGMENT_BYTES / 2) as usize];
            log.append([(3, filler.as_slice())]).unwrap();
            log.append([(4, filler.as_slice())])
                .unwrap()
                .sync_data()
                .unwrap();
            assert_eq!(log.segment_count(), 2);
        }
        let segment = tmp.path().join(segment_name(1));
        let file = open_rw(&segment);
        // Entry 2's checksum changed.
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at + 8).unwrap();
        file.write_all_at(&[byte[0] ^ 0x10], at + 8).unwrap();
        let err = LogFile::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("synced whole"), "{err}");
    }

    #[test]
    fn a_missing_segment_is_refused_and_one_never_written_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 1..=3 {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, i..=i);
        }
        // Three segments (each start opens one); a crash while the fourth
        // was created, before its header, leaves it all zeros.
        let file = File::create(tmp.path().join(segment_name(4))).unwrap();
        file.set_len(4096).unwrap();
        drop(file);
        let mut log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(1..=3));
        append(&mut log, 4..=4);
        drop(log);
        assert_eq!(
            entries(&LogFile::open(tmp.path()).unwrap()),
            expected(1..=4)
        );

        std::fs::remove_file(tmp.path().join(segment_name(2))).unwrap();
        let err = LogFile::open(tmp.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("segment {} is missing", segment_name(2))),
            "{err}"
        );
    }

    /// After a failed write the log takes no more: a later write at the
    /// same offset would leave stale bytes after it, which the next start
    /// would take for damage.
    #[test]
    fn a_failed_write_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut log = LogFile::open(tmp.path()).unwrap();
            append(&mut log, 1..=2);
            log.fail(&io::Error::other("disk full"));
            assert!(log.set_committed(b"c".to_vec()).is_err());
            let err = log.append([(3, &b"three"[..])]).unwrap_err();
            assert!(err.to_string().contains("disk full"), "{err}");
            assert!(log.set_vote(b"v".to_vec()).is_err());
            assert!(log.truncate(1).is_err());
        }
        let log = LogFile::open(tmp.path()).unwrap();
        assert_eq!(entries(&log), expected(1..=2));
        assert_eq!(log.committed(), None, "nothing written after the failure");
    }

    #[test]
    fn a_segment_that_is_not_ours_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        drop(LogFile::open(tmp.path()).unwrap());
        std::fs::write(tmp.path().join(segment_name(2)), b"something else").unwrap();
        let err = LogFile::open(tmp.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&segment_name(2)), "{err}");
    }
}
