//! The on-disk spool (cargo feature `spool`): events that would otherwise be reported failed
//! during an outage, kept in append-only segment files until PostHog takes them.
//!
//! # Layout
//!
//! A spool is a directory holding `spool.lock` (held with an exclusive file lock while a
//! client has the spool open) and segment files `NNNNNNNNNNNNNNNNNNNN.seg`, oldest first.
//! A segment is a sequence of records:
//!
//! ```text
//! magic "PHS1" (4 bytes) | payload length (u32 LE) | CRC32 of the payload (u32 LE) | payload
//! payload = the event's uuid (16 bytes) | the event's JSON, as it would have been sent
//! ```
//!
//! Every append is written with one `write` and made durable (`fsync`) before the events
//! count as spooled. A client appends only to a segment it created; a segment is deleted once
//! every event in it was acknowledged by PostHog (or refused for good, and reported).
//!
//! Reading skips what does not check out (a torn last record, a damaged one in the middle):
//! each damaged region is counted and logged, and reading resumes at the next record whose
//! header and checksum are valid, so good records after damage are never lost.

#[cfg(feature = "spool")]
pub(crate) use imp::*;
#[cfg(not(feature = "spool"))]
pub(crate) use stub::*;

#[cfg(feature = "spool")]
pub use crate::error::SpoolError;

/// Without the feature: a type with no values, so the worker's spool paths compile to nothing.
#[cfg(not(feature = "spool"))]
mod stub {
    use uuid::Uuid;

    pub(crate) enum Spool {}

    impl Spool {
        pub(crate) fn append<'a>(
            &self,
            _events: impl Iterator<Item = (Uuid, &'a [u8])>,
        ) -> std::io::Result<usize> {
            match *self {}
        }

        pub(crate) fn wake_if_pending(&self) {
            match *self {}
        }

        pub(crate) fn close(&self) {
            match *self {}
        }
    }
}

#[cfg(feature = "spool")]
mod imp {
    use std::{
        collections::VecDeque,
        fs::{self, File, OpenOptions},
        io::{self, Read, Seek, SeekFrom, Write},
        path::{Path, PathBuf},
        sync::{
            atomic::{AtomicBool, Ordering},
            Mutex,
        },
    };

    use uuid::Uuid;

    use super::SpoolError;

    const MAGIC: [u8; 4] = *b"PHS1";
    const HEADER: usize = 12;
    /// The largest payload a valid record has: a uuid and an event (at most 900 KiB), with
    /// room to spare. A length above it is damage.
    const MAX_PAYLOAD: usize = 16 + 2 * 1024 * 1024;
    /// A segment takes appends until it holds this much.
    const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
    /// The default bound on the spool's size.
    pub(crate) const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// One record read back.
    pub(crate) struct Record {
        pub(crate) uuid: Uuid,
        pub(crate) start: usize,
        pub(crate) end: usize,
    }

    /// A segment's records, read back: the file's bytes, the records' places in them, and
    /// how many damaged regions were skipped.
    pub(crate) struct SegmentData {
        pub(crate) bytes: Vec<u8>,
        pub(crate) records: Vec<Record>,
        pub(crate) damaged: u64,
    }

    impl SegmentData {
        pub(crate) fn json(&self, record: &Record) -> &[u8] {
            &self.bytes[record.start..record.end]
        }
    }

    /// A sealed segment, taken for replay.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Segment {
        id: u64,
        len: u64,
    }

    struct Active {
        id: u64,
        file: File,
        len: u64,
    }

    struct Files {
        active: Option<Active>,
        /// Sealed segments not taken for replay, oldest first.
        sealed: VecDeque<Segment>,
        /// Bytes in every segment this spool knows of (taken ones included until removed).
        total: u64,
        next_id: u64,
        /// Set by [`Spool::close`]: appends fail from then on.
        closed: bool,
    }

    /// An open spool directory, locked for this client.
    pub(crate) struct Spool {
        dir: PathBuf,
        max_bytes: u64,
        files: Mutex<Files>,
        /// Set when something was appended or found at open, until a replay finds nothing.
        pending: AtomicBool,
        /// Wakes the replayer: PostHog answered.
        pub(crate) wake: tokio::sync::Notify,
        /// Tells the replayer that events were spooled (so it schedules a probe).
        pub(crate) spilled: tokio::sync::Notify,
        /// Held for the spool's life: the exclusive lock.
        _lock: File,
    }

    impl std::fmt::Debug for Spool {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Spool")
                .field("dir", &self.dir)
                .field("max_bytes", &self.max_bytes)
                .finish_non_exhaustive()
        }
    }

    fn io_error(dir: &Path, what: &str, e: io::Error) -> SpoolError {
        SpoolError::Io {
            path: dir.to_owned(),
            message: format!("{what}: {e}"),
        }
    }

    fn segment_name(id: u64) -> String {
        format!("{id:020}.seg")
    }

    impl Spool {
        /// Opens (creating it if needed) and locks the spool in `dir`.
        pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create", e))?;
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join("spool.lock"))
                .map_err(|e| io_error(dir, "cannot open spool.lock", e))?;
            // `File::try_lock` (Rust 1.89): the `spool` feature needs Rust 1.89, like
            // `sentry`; the crate's `rust-version` is for its default features.
            #[allow(clippy::incompatible_msrv)]
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(SpoolError::Locked {
                        path: dir.to_owned(),
                    })
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(io_error(dir, "cannot lock spool.lock", e))
                }
            }
            let mut sealed = Vec::new();
            let mut total = 0;
            for entry in fs::read_dir(dir).map_err(|e| io_error(dir, "cannot list", e))? {
                let entry = entry.map_err(|e| io_error(dir, "cannot list", e))?;
                let name = entry.file_name();
                let Some(id) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let len = entry
                    .metadata()
                    .map_err(|e| io_error(dir, "cannot read a segment's size", e))?
                    .len();
                total += len;
                sealed.push(Segment { id, len });
            }
            sealed.sort_by_key(|s| s.id);
            let next_id = sealed.last().map_or(0, |s| s.id + 1);
            let pending = !sealed.is_empty();
            if pending {
                tracing::info!(
                    dir = %dir.display(),
                    segments = sealed.len(),
                    bytes = total,
                    "posthog: spool holds events from an earlier run; sending them"
                );
            }
            Ok(Spool {
                dir: dir.to_owned(),
                max_bytes,
                files: Mutex::new(Files {
                    active: None,
                    sealed: sealed.into(),
                    total,
                    next_id,
                    closed: false,
                }),
                pending: AtomicBool::new(pending),
                wake: tokio::sync::Notify::new(),
                spilled: tokio::sync::Notify::new(),
                _lock: lock,
            })
        }

        fn files(&self) -> std::sync::MutexGuard<'_, Files> {
            // A panic while holding the lock leaves consistent counters (each update is one
            // assignment after the I/O it accounts for).
            self.files.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Whether the spool may hold events to replay.
        pub(crate) fn has_pending(&self) -> bool {
            self.pending.load(Ordering::Acquire)
        }

        /// Wakes the replayer if the spool holds events (PostHog just answered).
        pub(crate) fn wake_if_pending(&self) {
            if self.has_pending() {
                self.wake.notify_one();
            }
        }

        /// Appends as many of `events` as the size bound allows, in order, durably (written
        /// and `fsync`ed); returns how many (a prefix of `events`). On an error nothing of
        /// this call is kept.
        pub(crate) fn append<'a>(
            &self,
            events: impl Iterator<Item = (Uuid, &'a [u8])>,
        ) -> io::Result<usize> {
            self.append_inner(events, true)
        }

        /// [`append`](Self::append) without the size bound: for events already counted in it
        /// (the rest of a segment a replay could not finish).
        pub(crate) fn append_unbounded<'a>(
            &self,
            events: impl Iterator<Item = (Uuid, &'a [u8])>,
        ) -> io::Result<usize> {
            self.append_inner(events, false)
        }

        fn append_inner<'a>(
            &self,
            events: impl Iterator<Item = (Uuid, &'a [u8])>,
            bounded: bool,
        ) -> io::Result<usize> {
            let mut files = self.files();
            if files.closed {
                return Err(io::Error::other(
                    "the spool was closed (the client shut down)",
                ));
            }
            let mut buf = Vec::new();
            let mut count = 0;
            for (uuid, json) in events {
                let size = (HEADER + 16 + json.len()) as u64;
                if bounded && files.total + buf.len() as u64 + size > self.max_bytes {
                    break;
                }
                let payload_len = (16 + json.len()) as u32;
                let mut crc = crc32fast::Hasher::new();
                crc.update(uuid.as_bytes());
                crc.update(json);
                buf.extend_from_slice(&MAGIC);
                buf.extend_from_slice(&payload_len.to_le_bytes());
                buf.extend_from_slice(&crc.finalize().to_le_bytes());
                buf.extend_from_slice(uuid.as_bytes());
                buf.extend_from_slice(json);
                count += 1;
            }
            if count == 0 {
                return Ok(0);
            }
            if files
                .active
                .as_ref()
                .is_some_and(|a| a.len >= SEGMENT_BYTES)
            {
                self.seal(&mut files);
            }
            if files.active.is_none() {
                let id = files.next_id;
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(self.dir.join(segment_name(id)))?;
                files.next_id += 1;
                // The new name must survive a crash too.
                if let Ok(dir) = File::open(&self.dir) {
                    let _ = dir.sync_all();
                }
                files.active = Some(Active { id, file, len: 0 });
            }
            let dir = &self.dir;
            let Some(active) = files.active.as_mut() else {
                unreachable!("opened above")
            };
            let written = active
                .file
                .write_all(&buf)
                .and_then(|()| active.file.sync_data());
            if let Err(e) = written {
                // Keep nothing of a failed append: its events are reported failed.
                let _ = active.file.set_len(active.len);
                tracing::error!(dir = %dir.display(), error = %e, "posthog: spool write failed");
                return Err(e);
            }
            active.len += buf.len() as u64;
            files.total += buf.len() as u64;
            self.pending.store(true, Ordering::Release);
            if bounded {
                self.spilled.notify_one();
            }
            Ok(count)
        }

        /// Closes the spool when its client's worker ends: the segment being appended to is
        /// sealed and the lock released, so another client can open the directory at once.
        pub(crate) fn close(&self) {
            let mut files = self.files();
            if files.closed {
                return;
            }
            files.closed = true;
            self.seal(&mut files);
            #[allow(clippy::incompatible_msrv)]
            if let Err(e) = self._lock.unlock() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "posthog: cannot release the spool's lock");
            }
        }

        fn seal(&self, files: &mut Files) {
            if let Some(active) = files.active.take() {
                if active.len > 0 {
                    files.sealed.push_back(Segment {
                        id: active.id,
                        len: active.len,
                    });
                } else {
                    let _ = fs::remove_file(self.dir.join(segment_name(active.id)));
                }
            }
        }

        /// Takes the oldest segment for replay (sealing the one being appended to, if it is
        /// the only one); `None` when the spool is empty.
        pub(crate) fn take(&self) -> Option<Segment> {
            let mut files = self.files();
            if files.sealed.is_empty() {
                self.seal(&mut files);
            }
            let segment = files.sealed.pop_front();
            if segment.is_none() {
                self.pending.store(false, Ordering::Release);
            }
            segment
        }

        /// Gives back a segment taken for replay (a replay cut short by a deadline).
        pub(crate) fn untake(&self, segment: Segment) {
            self.files().sealed.push_front(segment);
            self.pending.store(true, Ordering::Release);
        }

        /// Deletes a replayed segment.
        pub(crate) fn remove(&self, segment: Segment) {
            let path = self.dir.join(segment_name(segment.id));
            if let Err(e) = fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "posthog: cannot delete a replayed spool segment; its events may be sent again");
            }
            let mut files = self.files();
            files.total = files.total.saturating_sub(segment.len);
        }

        /// Reads a segment's records back.
        pub(crate) fn read(&self, segment: Segment) -> io::Result<SegmentData> {
            let path = self.dir.join(segment_name(segment.id));
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(0))?;
            let mut bytes = Vec::with_capacity(segment.len as usize);
            file.read_to_end(&mut bytes)?;
            let (records, damaged) = parse(&bytes);
            if damaged > 0 {
                tracing::error!(
                    path = %path.display(),
                    damaged_regions = damaged,
                    records = records.len(),
                    "posthog: spool segment has torn or corrupt records; skipped them, kept the rest"
                );
            }
            Ok(SegmentData {
                bytes,
                records,
                damaged,
            })
        }
    }

    /// The payload length of a valid record at `pos`, if there is one.
    fn record_at(bytes: &[u8], pos: usize) -> Option<usize> {
        let header = bytes.get(pos..pos + HEADER)?;
        if header[..4] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if !(16..=MAX_PAYLOAD).contains(&len) {
            return None;
        }
        let payload = bytes.get(pos + HEADER..pos + HEADER + len)?;
        (crc32fast::hash(payload) == crc).then_some(len)
    }

    /// The valid records in `bytes`, and how many damaged regions lie between them.
    pub(crate) fn parse(bytes: &[u8]) -> (Vec<Record>, u64) {
        let mut records = Vec::new();
        let mut damaged = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            if let Some(len) = record_at(bytes, pos) {
                let payload = pos + HEADER;
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&bytes[payload..payload + 16]);
                records.push(Record {
                    uuid: Uuid::from_bytes(uuid),
                    start: payload + 16,
                    end: payload + len,
                });
                pos = payload + len;
                continue;
            }
            // Damage: resume at the next place a valid record starts.
            damaged += 1;
            let mut next = pos + 1;
            pos = bytes.len();
            while let Some(offset) = find_magic(&bytes[next..]) {
                let at = next + offset;
                if record_at(bytes, at).is_some() {
                    pos = at;
                    break;
                }
                next = at + 1;
            }
        }
        (records, damaged)
    }

    fn find_magic(bytes: &[u8]) -> Option<usize> {
        bytes.windows(4).position(|w| w == MAGIC)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn record(uuid: u128, json: &str) -> Vec<u8> {
            let uuid = Uuid::from_u128(uuid);
            let mut payload = uuid.as_bytes().to_vec();
            payload.extend_from_slice(json.as_bytes());
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
            out
        }

        #[test]
        fn damage_is_skipped_and_counted_and_later_records_kept() {
            let a = record(1, r#"{"a":1}"#);
            let b = record(2, r#"{"b":2}"#);
            let c = record(3, r#"{"c":3}"#);
            let mut bytes = [a.clone(), b.clone(), c.clone()].concat();
            // Corrupt b's payload.
            let at = a.len() + HEADER + 18;
            bytes[at] ^= 0xff;
            // And a torn record at the end.
            bytes.extend_from_slice(&record(4, r#"{"d":4}"#)[..15]);
            let (records, damaged) = parse(&bytes);
            let uuids: Vec<u128> = records.iter().map(|r| r.uuid.as_u128()).collect();
            assert_eq!(uuids, [1, 3]);
            assert_eq!(damaged, 2);
            let r = &records[1];
            assert_eq!(&bytes[r.start..r.end], br#"{"c":3}"#);
        }

        #[test]
        fn garbage_alone_is_one_region() {
            let (records, damaged) = parse(b"PHS1PHS1 not a record at all");
            assert!(records.is_empty());
            assert_eq!(damaged, 1);
        }
    }
}
