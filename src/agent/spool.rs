//! The disk spool: an append-only log of segment files holding every point
//! that was acknowledged to the broker and not yet accepted by InfluxDB.
//!
//! It owns the on-disk format, crash recovery, the byte budget with its
//! overflow policy, and the exact count of points it dropped. Records are
//! `magic | len | points | crc32 | payload` in segment files that start with
//! a file magic; the record magic lets a reader find the next record after a
//! corrupt one, and the checksum tells a torn or flipped record from a good
//! one. Written for SD cards: nothing is ever rewritten or truncated. A
//! segment whose tail is damaged, or whose write failed, is sealed at its
//! last good record and a new one is started; fully written segments are
//! deleted whole.
//!
//! A record whose magic is `LT` holds points stamped on receipt: its
//! payload starts with how they were stamped ([`Stamping`]: the boot's id
//! and the wall clock's lead on `CLOCK_BOOTTIME`, 24 bytes), which the
//! checksum covers together with the kind, so that the writer can correct
//! them once it knows the true time (`super::trueclock`). Readers hand the
//! lines on without that header and say where such lines lie
//! ([`Batch::timed`]).
//!
//! A record of zero points is padding: [`Spool::pad_page`] writes one to
//! the end of a page after a group commit that nearly filled it, so that
//! the next commit starts on a fresh page rather than dirtying a page the
//! last fsync already wrote. Readers skip its payload.
//!
//! It must never panic or stop on a damaged file (damage is reported and
//! skipped), never hand out a record that was not committed, and never drop
//! a point without counting it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::{BootId, Stamping};
use crate::shutdown::Shutdown;

const FILE_MAGIC: &[u8; 8] = b"LGSPOOL1";
const RECORD_MAGIC: [u8; 2] = *b"LG";
/// A record of points stamped on receipt.
const TIMED_MAGIC: [u8; 2] = *b"LT";
/// The [`Stamping`] at the start of a timed record's payload.
const STAMPING: usize = 16 + 8;
const HEADER: usize = 2 + 4 + 4 + 4;
/// A record longer than this is taken as a corrupt length field.
const MAX_RECORD: usize = 64 << 20;

pub use crate::config::{FsyncPolicy, Overflow};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub overflow: Overflow,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool is full ({max_bytes} bytes) and the overflow policy is block")]
    Full { max_bytes: u64 },
    #[error("record of {0} bytes does not fit in the spool")]
    TooLarge(usize),
}

/// Damage found in a segment, reported once when it is first scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub kind: DamageKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// An incomplete record at the end (a write cut short by power loss).
    TornTail { bytes: u64 },
    /// Bytes that are not a valid record, skipped up to the next one.
    Corrupt { bytes: u64 },
    /// The file does not start with the spool's magic; it was moved aside.
    NotASegment { moved_to: PathBuf },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.segment.display();
        match &self.kind {
            DamageKind::TornTail { bytes } => write!(
                f,
                "{s}: torn record at byte {}, {bytes} bytes skipped",
                self.offset
            ),
            DamageKind::Corrupt { bytes } => write!(
                f,
                "{s}: corrupt data at byte {}, {bytes} bytes skipped",
                self.offset
            ),
            DamageKind::NotASegment { moved_to } => write!(
                f,
                "{s}: not a spool segment, moved to {}",
                moved_to.display()
            ),
        }
    }
}

/// What opening the spool found on disk.
#[derive(Debug, Default)]
pub struct Recovery {
    pub segments: usize,
    pub points: u64,
    pub bytes: u64,
    pub damage: Vec<Damage>,
}

/// The result of an append that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// Overflow policy drop_newest refused the record; its points are
    /// counted as dropped.
    DroppedNewest(u64),
}

/// Records read for one write, with where they end.
#[derive(Debug, Default)]
pub struct Batch {
    /// Concatenated payloads (line protocol).
    pub data: Vec<u8>,
    pub points: u64,
    pub records: u64,
    /// Where in `data` lie lines stamped on receipt, and how they were
    /// stamped; in order, not overlapping.
    pub timed: Vec<Timed>,
    end: Option<Position>,
}

/// Lines of a batch stamped on receipt, as one record stored them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub range: std::ops::Range<usize>,
    pub points: u64,
    pub stamping: Stamping,
}

impl Batch {
    /// Adds the records of a later read to this batch.
    pub fn append(&mut self, later: Batch) {
        let base = self.data.len();
        self.data.extend_from_slice(&later.data);
        self.timed.extend(later.timed.into_iter().map(|t| Timed {
            range: t.range.start + base..t.range.end + base,
            ..t
        }));
        self.points += later.points;
        self.records += later.records;
        self.end = later.end.or(self.end);
    }
}

/// The offset in its segment file where the spool's next append goes,
/// as of the last append: a hint (a new segment may start first), read
/// without locking anything.
#[derive(Debug, Clone)]
pub struct Tail(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Tail {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    segment: u64,
    offset: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    pub bytes: u64,
    /// Points stored and not yet read by the writer.
    pub points_unread: u64,
    pub segments: usize,
    pub dropped_points: u64,
    /// Bytes of records written since start (headers included), for
    /// measuring write amplification.
    pub appended_bytes: u64,
    /// Something appended is not yet synced (`fsync = "interval"` or
    /// `"never"`).
    pub unsynced: bool,
}

pub struct Spool {
    config: SpoolConfig,
    segment_bytes: u64,
    /// Where the segment taking appends ends, for [`Tail`].
    tail: std::sync::Arc<std::sync::atomic::AtomicU64>,
    inner: Mutex<Inner>,
    readable: std::sync::Condvar,
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes on disk that belong to valid records (plus the file header).
    end: u64,
    /// Readable: committed records end here.
    committed: u64,
    /// No more appends (recovered, full, or a write failed).
    sealed: bool,
    /// Points in records not yet read.
    unread_points: u64,
}

struct Inner {
    segments: VecDeque<Segment>,
    /// Open handle of the last segment while it takes appends.
    active: Option<File>,
    /// Segments sealed since the last sync whose records are not yet on
    /// disk: the next commit syncs them before acking anything.
    unsynced: Vec<(PathBuf, File)>,
    /// Appended since the last fsync.
    dirty: bool,
    /// Next record to read.
    read: Position,
    total_bytes: u64,
    dropped_points: u64,
    appended_bytes: u64,
    last_sync: Instant,
    next_id: u64,
    pending_damage: Vec<Damage>,
}

impl Spool {
    /// Opens (creating if needed) the spool directory and scans every
    /// segment in it, reporting damage; recovered segments are read from
    /// their first record.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        let io = |source| SpoolError::Io {
            path: config.dir.clone(),
            source,
        };
        crate::lifecycle::files::private_dir(&config.dir).map_err(io)?;
        let mut ids: Vec<u64> = fs::read_dir(&config.dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        for id in &ids {
            let path = segment_path(&config.dir, *id);
            match scan_segment(&path)? {
                Scan::Valid {
                    end,
                    points,
                    damage,
                } => {
                    recovery.points += points;
                    recovery.bytes += end;
                    recovery.damage.extend(damage);
                    segments.push_back(Segment {
                        id: *id,
                        path,
                        end,
                        committed: end,
                        sealed: true,
                        unread_points: points,
                    });
                }
                Scan::Foreign => {
                    let moved_to = path.with_extension("seg.corrupt");
                    fs::rename(&path, &moved_to).map_err(|source| SpoolError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    recovery.damage.push(Damage {
                        segment: path,
                        offset: 0,
                        kind: DamageKind::NotASegment { moved_to },
                    });
                }
            }
        }
        recovery.segments = segments.len();
        let total_bytes = segments.iter().map(|s| s.end).sum();
        let read = Position {
            segment: segments.front().map_or(0, |s| s.id),
            offset: FILE_MAGIC.len() as u64,
        };
        let next_id = ids.last().map_or(1, |id| id + 1);
        // Several segments per budget, so drop_oldest frees a fraction of
        // it rather than everything; large enough to keep files few.
        let segment_bytes = (config.max_bytes / 8)
            .clamp(4 << 10, 16 << 20)
            .min(config.max_bytes / 2);
        let spool = Spool {
            segment_bytes,
            // Appends go to a new segment after a start.
            tail: Default::default(),
            inner: Mutex::new(Inner {
                segments,
                active: None,
                unsynced: Vec::new(),
                dirty: false,
                read,
                total_bytes,
                dropped_points: 0,
                appended_bytes: 0,
                last_sync: Instant::now(),
                next_id,
                pending_damage: Vec::new(),
            }),
            readable: std::sync::Condvar::new(),
            config,
        };
        Ok((spool, recovery))
    }

    /// Where the next append will go in its segment file, readable
    /// without the spool's lock (for the intake's group commit).
    pub fn tail(&self) -> Tail {
        Tail(self.tail.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record. It is neither durable nor readable until
    /// [`Spool::commit`].
    pub fn append(&self, payload: &[u8], points: u64) -> Result<Appended, SpoolError> {
        self.append_record(Kind::Plain, payload, points)
    }

    /// Appends one record of lines stamped on receipt as `stamping` says
    /// (each line ends in its stamp), like [`Spool::append`].
    pub fn append_stamped(
        &self,
        stamping: Stamping,
        lines: &[u8],
        points: u64,
    ) -> Result<Appended, SpoolError> {
        self.append_record(Kind::Timed(stamping), lines, points)
    }

    fn append_record(&self, kind: Kind, lines: &[u8], points: u64) -> Result<Appended, SpoolError> {
        let payload_len = lines.len() + kind.header_len();
        let record_len = (HEADER + payload_len) as u64;
        if payload_len > MAX_RECORD || record_len + FILE_MAGIC.len() as u64 > self.config.max_bytes
        {
            return Err(SpoolError::TooLarge(payload_len));
        }
        let mut inner = self.lock();
        while inner.total_bytes + record_len > self.config.max_bytes {
            match self.config.overflow {
                Overflow::DropNewest => {
                    inner.dropped_points += points;
                    return Ok(Appended::DroppedNewest(points));
                }
                Overflow::Block => {
                    return Err(SpoolError::Full {
                        max_bytes: self.config.max_bytes,
                    });
                }
                Overflow::DropOldest => {
                    // The segment taking appends can be dropped too once
                    // sealed; a new one starts below.
                    if inner.segments.front().is_some_and(|s| !s.sealed) {
                        self.seal_active(&mut inner, false);
                    }
                    if !self.drop_oldest(&mut inner)? {
                        return Err(SpoolError::Full {
                            max_bytes: self.config.max_bytes,
                        });
                    }
                }
            }
        }
        let needs_new = match inner.segments.back() {
            Some(s) => {
                s.sealed
                    || s.end + record_len
                        > self.segment_bytes.max(record_len + FILE_MAGIC.len() as u64)
            }
            None => true,
        };
        if needs_new {
            self.seal_active(&mut inner, true);
            self.start_segment(&mut inner)?;
        }
        let record = encode_record(kind, lines, points);
        let seg = inner.segments.back().expect("a segment was just ensured");
        let path = seg.path.clone();
        let file = inner.active.as_mut().expect("an active segment is open");
        if let Err(source) = file.write_all(&record) {
            // What reached the file is not a valid record and later records
            // must not follow it: seal at the last good record.
            self.seal_active(&mut inner, true);
            return Err(SpoolError::Io { path, source });
        }
        let seg = inner.segments.back_mut().expect("active segment");
        seg.end += record_len;
        seg.unread_points += points;
        self.tail
            .store(seg.end, std::sync::atomic::Ordering::Relaxed);
        inner.total_bytes += record_len;
        inner.appended_bytes += record_len;
        inner.dirty = true;
        Ok(Appended::Stored)
    }

    /// Pads the segment taking appends to the end of its page (`page`
    /// bytes) with a record of zero points, if what is left of the page
    /// holds such a record and is at most `most` bytes; so the next
    /// commit starts a fresh page. Returns the bytes of padding written.
    /// The padding is part of the next commit, like any append.
    pub fn pad_page(&self, page: u64, most: u64) -> Result<u64, SpoolError> {
        // Only a sync per commit rewrites a page; the kernel's writeback
        // writes each page once anyway.
        if self.config.fsync != FsyncPolicy::Batch {
            return Ok(0);
        }
        let mut inner = self.lock();
        let Some(seg) = inner.segments.back().filter(|s| !s.sealed) else {
            return Ok(0);
        };
        let left = (page - seg.end % page) % page;
        if left < HEADER as u64
            || left > most
            || inner.total_bytes + left > self.config.max_bytes
            || seg.end + left > self.segment_bytes
        {
            return Ok(0);
        }
        let payload = vec![b'\n'; left as usize - HEADER];
        let path = seg.path.clone();
        let record = encode_record(Kind::Plain, &payload, 0);
        let file = inner.active.as_mut().expect("an active segment is open");
        if let Err(source) = file.write_all(&record) {
            self.seal_active(&mut inner, true);
            return Err(SpoolError::Io { path, source });
        }
        let seg = inner.segments.back_mut().expect("active segment");
        seg.end += left;
        self.tail
            .store(seg.end, std::sync::atomic::Ordering::Relaxed);
        inner.total_bytes += left;
        inner.appended_bytes += left;
        inner.dirty = true;
        Ok(left)
    }

    /// Makes everything appended so far durable under the fsync policy and
    /// readable by the writer. Acknowledge to the broker only after this.
    pub fn commit(&self) -> Result<(), SpoolError> {
        let (to_sync, ends, due) = {
            let mut inner = self.lock();
            let due = match self.config.fsync {
                FsyncPolicy::Batch => true,
                FsyncPolicy::Interval(every) => inner.last_sync.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
            let to_sync = if due {
                take_unsynced(&mut inner)?
            } else {
                Vec::new()
            };
            // Only what exists now is made readable: records appended while
            // this commit syncs belong to the next one.
            let ends: Vec<(u64, u64)> = inner.segments.iter().map(|s| (s.id, s.end)).collect();
            (to_sync, ends, due)
        };
        // The sync runs without the lock so the writer keeps reading.
        self.sync_files(to_sync)?;
        let mut inner = self.lock();
        if due {
            inner.last_sync = Instant::now();
        }
        for (id, end) in ends {
            if let Some(seg) = inner.segments.iter_mut().find(|s| s.id == id) {
                seg.committed = seg.committed.max(end);
            }
        }
        drop(inner);
        self.readable.notify_all();
        Ok(())
    }

    /// Reads records from the oldest unread one, up to `max_points` points
    /// and `max_bytes` bytes (at least one record), waiting up to `wait` for
    /// something committed. Returns an empty batch if nothing arrived.
    pub fn read(
        &self,
        max_points: u64,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Batch, SpoolError> {
        let deadline = Instant::now() + wait;
        let mut inner = self.lock();
        loop {
            if self.has_unread(&mut inner) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Batch::default());
            }
            inner = self
                .readable
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut batch = Batch::default();
        while batch.points < max_points && batch.data.len() < max_bytes {
            self.skip_finished(&mut inner);
            let read = inner.read;
            let Some(seg) = inner.segments.iter().find(|s| s.id == read.segment) else {
                break;
            };
            if read.offset >= seg.committed {
                break;
            }
            let (path, committed) = (seg.path.clone(), seg.committed);
            let budget = max_bytes.saturating_sub(batch.data.len());
            let force_one = batch.records == 0;
            let chunk = read_records(
                &path,
                read.offset,
                committed,
                budget,
                max_points - batch.points,
                force_one,
            )?;
            if let Some(damage) = chunk.damage {
                log::error!("spool damage: {damage}");
                inner.pending_damage.push(damage);
            }
            let base = batch.data.len();
            batch.data.extend_from_slice(&chunk.data);
            batch.timed.extend(chunk.timed.into_iter().map(|t| Timed {
                range: t.range.start + base..t.range.end + base,
                ..t
            }));
            batch.points += chunk.points;
            batch.records += chunk.records;
            let seg = inner
                .segments
                .iter_mut()
                .find(|s| s.id == read.segment)
                .expect("segment still there");
            seg.unread_points = seg.unread_points.saturating_sub(chunk.points);
            inner.read.offset = chunk.next;
            if chunk.next == read.offset {
                break;
            }
        }
        batch.end = Some(inner.read);
        Ok(batch)
    }

    /// Waits until something committed is unread, for at most `timeout`
    /// (None: as long as it takes), or until `shutdown` (which must wake
    /// this spool's readers, [`Spool::wake_readers`]). True if something
    /// is readable. The wait is on the commit's condition variable: an
    /// idle writer sleeps.
    pub fn wait_readable(&self, timeout: Option<Duration>, shutdown: &Shutdown) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        crate::shutdown::wait_while(&self.readable, self.lock(), deadline, shutdown, |inner| {
            self.has_unread(inner)
        })
        .1
    }

    /// Whether committed records wait to be read (finished segments
    /// skipped first).
    fn has_unread(&self, inner: &mut Inner) -> bool {
        self.skip_finished(inner);
        inner
            .segments
            .iter()
            .any(|s| s.id >= inner.read.segment && s.committed > position_in(&inner.read, s))
    }

    /// Wakes every [`Spool::wait_readable`] (to see a shutdown).
    pub fn wake_readers(&self) {
        let _inner = self.lock();
        self.readable.notify_all();
    }

    /// Under `fsync = "interval"` with something appended and not synced:
    /// how long until [`Spool::sync_if_due`] has work. None otherwise, so
    /// that nothing needs to wake for it.
    pub fn sync_due_in(&self) -> Option<Duration> {
        let FsyncPolicy::Interval(every) = self.config.fsync else {
            return None;
        };
        let inner = self.lock();
        inner
            .dirty
            .then(|| every.saturating_sub(inner.last_sync.elapsed()))
    }

    /// Under `fsync = "interval"`: how long a waiter that cannot see new
    /// commits may sleep and still sync in time: until a sync is due, or
    /// one interval when nothing is unsynced yet. None under the other
    /// policies.
    pub fn sync_interval_bound(&self) -> Option<Duration> {
        let FsyncPolicy::Interval(every) = self.config.fsync else {
            return None;
        };
        Some(self.sync_due_in().unwrap_or(every))
    }

    /// Frees the space of everything up to the end of `batch`, once
    /// InfluxDB has accepted it: segments read to the end are deleted.
    pub fn release(&self, batch: &Batch) -> Result<(), SpoolError> {
        let Some(end) = batch.end else { return Ok(()) };
        let mut inner = self.lock();
        while let Some(front) = inner.segments.front() {
            let done =
                front.id < end.segment || (front.id == end.segment && end.offset >= front.end);
            if !done || (front.id == inner.read.segment && inner.read.offset < front.end) {
                break;
            }
            if !front.sealed {
                // The writer caught up with the segment taking appends:
                // free it too (the next append starts a new one), or a
                // full spool under overflow = block could never drain.
                self.seal_active(&mut inner, false);
            }
            let seg = inner.segments.pop_front().expect("front exists");
            inner.total_bytes -= seg.end;
            if inner.segments.is_empty() {
                inner.active = None;
            }
            forget_handles(&mut inner, &seg.path);
            remove(&seg.path)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        let inner = self.lock();
        SpoolStats {
            bytes: inner.total_bytes,
            points_unread: inner.segments.iter().map(|s| s.unread_points).sum(),
            segments: inner.segments.len(),
            dropped_points: inner.dropped_points,
            appended_bytes: inner.appended_bytes,
            unsynced: inner.dirty,
        }
    }

    /// Under `fsync = "interval"`, syncs what was appended once the interval
    /// has passed, even when nothing else is appended: without this, the
    /// last points before a quiet spell would wait in the page cache until
    /// the next message. A no-op under the other policies. Called by the
    /// writer when it is idle.
    pub fn sync_if_due(&self) -> Result<(), SpoolError> {
        let FsyncPolicy::Interval(every) = self.config.fsync else {
            return Ok(());
        };
        let to_sync = {
            let mut inner = self.lock();
            if !inner.dirty || inner.last_sync.elapsed() < every {
                return Ok(());
            }
            inner.last_sync = Instant::now();
            take_unsynced(&mut inner)?
        };
        self.sync_files(to_sync)
    }

    /// Syncs the files `take_unsynced` handed out, without the lock; on a
    /// failure, gives them back with the dirty mark so a retry syncs them
    /// again.
    fn sync_files(&self, to_sync: Vec<(PathBuf, File)>) -> Result<(), SpoolError> {
        let failed = to_sync
            .iter()
            .find_map(|(path, file)| file.sync_data().err().map(|e| (path.clone(), e)));
        if let Some((path, source)) = failed {
            let mut inner = self.lock();
            inner.dirty = true;
            inner.unsynced.extend(to_sync);
            return Err(SpoolError::Io { path, source });
        }
        Ok(())
    }

    /// Damage found while reading since the last call.
    pub fn take_damage(&self) -> Vec<Damage> {
        std::mem::take(&mut self.lock().pending_damage)
    }

    /// Moves the read cursor past segments that are read to their end and
    /// will get no more records.
    fn skip_finished(&self, inner: &mut Inner) {
        loop {
            let read = inner.read;
            let next = inner
                .segments
                .iter()
                .find(|s| s.id >= read.segment)
                .map(|s| (s.id, s.end, s.sealed));
            match next {
                Some((id, _, _)) if id > read.segment => {
                    inner.read = Position {
                        segment: id,
                        offset: FILE_MAGIC.len() as u64,
                    };
                }
                Some((_, end, true)) if read.offset >= end => {
                    let after = inner
                        .segments
                        .iter()
                        .find(|s| s.id > read.segment)
                        .map(|s| s.id);
                    match after {
                        Some(id) => {
                            inner.read = Position {
                                segment: id,
                                offset: FILE_MAGIC.len() as u64,
                            }
                        }
                        None => return,
                    }
                }
                _ => return,
            }
        }
    }

    /// Deletes the oldest sealed segment, counting its unread points as
    /// dropped. Returns false if there is none to delete.
    fn drop_oldest(&self, inner: &mut Inner) -> Result<bool, SpoolError> {
        let Some(front) = inner.segments.front() else {
            return Ok(false);
        };
        if !front.sealed {
            return Ok(false);
        }
        let seg = inner.segments.pop_front().expect("front exists");
        inner.total_bytes -= seg.end;
        inner.dropped_points += seg.unread_points;
        if seg.unread_points > 0 {
            log::warn!(
                "spool full ({} bytes): dropped the oldest {} points (overflow = drop_oldest)",
                self.config.max_bytes,
                seg.unread_points
            );
        }
        if inner.read.segment <= seg.id {
            inner.read = Position {
                segment: seg.id + 1,
                offset: FILE_MAGIC.len() as u64,
            };
        }
        forget_handles(inner, &seg.path);
        remove(&seg.path)?;
        Ok(true)
    }

    /// Stops appends to the last segment. With `sync_later`, its handle is
    /// kept for the next commit to sync, because its newest records may be
    /// acked by that commit; without, the segment is about to be deleted.
    fn seal_active(&self, inner: &mut Inner, sync_later: bool) {
        if let Some(seg) = inner.segments.back_mut() {
            seg.sealed = true;
            if let Some(file) = inner.active.take()
                && sync_later
                && self.config.fsync != FsyncPolicy::Never
            {
                inner.unsynced.push((seg.path.clone(), file));
            }
        }
        inner.active = None;
    }

    fn start_segment(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        let id = inner.next_id;
        inner.next_id += 1;
        let path = segment_path(&self.config.dir, id);
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(FILE_MAGIC).map_err(io)?;
        // The new name must survive a crash too, or its records would be
        // acked and then lost with the directory entry.
        if self.config.fsync != FsyncPolicy::Never {
            File::open(&self.config.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let len = FILE_MAGIC.len() as u64;
        self.tail.store(len, std::sync::atomic::Ordering::Relaxed);
        inner.total_bytes += len;
        inner.segments.push_back(Segment {
            id,
            path,
            end: len,
            committed: len,
            sealed: false,
            unread_points: 0,
        });
        if inner.segments.len() == 1 {
            inner.read = Position {
                segment: id,
                offset: len,
            };
        }
        inner.active = Some(file);
        Ok(())
    }
}

fn position_in(read: &Position, seg: &Segment) -> u64 {
    if seg.id == read.segment {
        read.offset
    } else {
        FILE_MAGIC.len() as u64
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpoolError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The checksum of a record: of its payload and point count, and for a
/// timed record of its kind too, so that a flipped magic is caught.
fn checksum(magic: [u8; 2], points: u32, payload: &[u8]) -> u32 {
    let mut h = checksum_start(magic, points);
    h.update(payload);
    h.finalize()
}

fn checksum_start(magic: [u8; 2], points: u32) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    if magic == TIMED_MAGIC {
        h.update(&TIMED_MAGIC);
    }
    h.update(&points.to_le_bytes());
    h
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Timed(Stamping),
}

impl Kind {
    fn magic(self) -> [u8; 2] {
        match self {
            Kind::Plain => RECORD_MAGIC,
            Kind::Timed(_) => TIMED_MAGIC,
        }
    }

    fn header_len(self) -> usize {
        match self {
            Kind::Plain => 0,
            Kind::Timed(_) => STAMPING,
        }
    }
}

fn is_magic(bytes: &[u8]) -> bool {
    bytes == RECORD_MAGIC || bytes == TIMED_MAGIC
}

/// The stamping a timed record's payload starts with.
fn read_stamping(payload: &[u8]) -> Stamping {
    let mut boot = [0; 16];
    boot.copy_from_slice(&payload[..16]);
    Stamping {
        boot: BootId(boot),
        wall_minus_boot_ns: i64::from_le_bytes(payload[16..STAMPING].try_into().expect("8 bytes")),
    }
}

enum Scan {
    Valid {
        end: u64,
        points: u64,
        damage: Vec<Damage>,
    },
    Foreign,
}

/// Reads a whole segment at start-up, finding where its valid records end
/// and what is damaged.
fn scan_segment(path: &Path) -> Result<Scan, SpoolError> {
    let bytes = fs::read(path).map_err(|source| SpoolError::Io {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() < FILE_MAGIC.len() || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Ok(Scan::Foreign);
    }
    let mut damage = Vec::new();
    let mut offset = FILE_MAGIC.len();
    let mut end = offset;
    let mut points = 0u64;
    while offset < bytes.len() {
        match parse_record(&bytes[offset..]) {
            Parsed::Record { len, points: p, .. } => {
                points += u64::from(p);
                offset += len;
                end = offset;
            }
            Parsed::Incomplete => {
                // A flipped length field also looks incomplete; only when
                // no valid record follows is it really a torn tail.
                let skip = resync(&bytes[offset..]);
                if offset + skip < bytes.len() {
                    damage.push(Damage {
                        segment: path.to_owned(),
                        offset: offset as u64,
                        kind: DamageKind::Corrupt { bytes: skip as u64 },
                    });
                    offset += skip;
                    end = offset;
                    continue;
                }
                damage.push(Damage {
                    segment: path.to_owned(),
                    offset: offset as u64,
                    kind: DamageKind::TornTail {
                        bytes: (bytes.len() - offset) as u64,
                    },
                });
                break;
            }
            Parsed::Invalid => {
                let skip = resync(&bytes[offset..]);
                damage.push(Damage {
                    segment: path.to_owned(),
                    offset: offset as u64,
                    kind: DamageKind::Corrupt { bytes: skip as u64 },
                });
                offset += skip;
                end = offset;
            }
        }
    }
    Ok(Scan::Valid {
        end: end as u64,
        points,
        damage,
    })
}

enum Parsed {
    /// A whole record; `stamping` for a timed one, whose payload starts
    /// with it.
    Record {
        len: usize,
        points: u32,
        stamping: Option<Stamping>,
    },
    Incomplete,
    Invalid,
}

fn parse_record(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        let n = buf.len().min(2);
        return if buf.starts_with(&RECORD_MAGIC[..n]) || buf.starts_with(&TIMED_MAGIC[..n]) {
            Parsed::Incomplete
        } else {
            Parsed::Invalid
        };
    }
    let magic = [buf[0], buf[1]];
    if !is_magic(&magic) {
        return Parsed::Invalid;
    }
    let len = u32::from_le_bytes(buf[2..6].try_into().expect("4 bytes")) as usize;
    let points = u32::from_le_bytes(buf[6..10].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[10..14].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Parsed::Invalid;
    }
    if buf.len() < HEADER + len {
        return Parsed::Incomplete;
    }
    let payload = &buf[HEADER..HEADER + len];
    if checksum(magic, points, payload) != crc {
        return Parsed::Invalid;
    }
    let stamping = if magic == TIMED_MAGIC {
        if len < STAMPING {
            return Parsed::Invalid;
        }
        Some(read_stamping(payload))
    } else {
        None
    };
    Parsed::Record {
        len: HEADER + len,
        points,
        stamping,
    }
}

/// How many bytes to skip from a bad record to the next valid one (or to
/// the end).
///
/// Every byte is a candidate start. A candidate whose header fits is
/// checked by its checksum, which is taken from running checksums of the
/// buffer's prefixes rather than by a pass over its payload: a sensor can
/// fill a string field with text that looks like headers of long records,
/// and checksumming each of those in full made this quadratic (4 MiB of
/// them took 90 s, a 256 MiB record would take hours at start-up).
fn resync(buf: &[u8]) -> usize {
    let mut prefixes = PrefixCrc::new(buf);
    for i in 1..buf.len() {
        let rest = &buf[i..];
        if rest.len() < HEADER || !is_magic(&rest[..2]) {
            continue;
        }
        let magic = [rest[0], rest[1]];
        let len = u32::from_le_bytes(rest[2..6].try_into().expect("4 bytes")) as usize;
        let points = u32::from_le_bytes(rest[6..10].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[10..14].try_into().expect("4 bytes"));
        if len > MAX_RECORD || rest.len() < HEADER + len {
            continue;
        }
        let start = i + HEADER;
        let payload_crc = prefixes.range(start, start + len);
        // checksum(magic, points, payload) is the CRC of what
        // checksum_start takes followed by the payload.
        let mut whole = checksum_start(magic, points);
        whole.combine(&crc32fast::Hasher::new_with_initial_len(
            payload_crc,
            len as u64,
        ));
        if whole.finalize() == crc {
            return i;
        }
    }
    buf.len()
}

/// CRC-32 of any range of a buffer in time independent of its length:
/// the CRCs of the buffer's prefixes every [`PrefixCrc::STRIDE`] bytes,
/// made as far as asked, and CRC-32's linearity (the CRC of `x` followed
/// by `y` is the CRC of `x` shifted by `y`'s length, XOR the CRC of `y`).
struct PrefixCrc<'a> {
    buf: &'a [u8],
    /// `marks[k]` is the CRC of `buf[..k * STRIDE]`.
    marks: Vec<u32>,
}

impl<'a> PrefixCrc<'a> {
    const STRIDE: usize = 256;

    fn new(buf: &'a [u8]) -> Self {
        PrefixCrc {
            buf,
            marks: vec![0],
        }
    }

    /// The CRC of `buf[..end]`.
    fn prefix(&mut self, end: usize) -> u32 {
        let k = end / Self::STRIDE;
        while self.marks.len() <= k {
            let at = (self.marks.len() - 1) * Self::STRIDE;
            let last = *self.marks.last().expect("never empty");
            let mut h = crc32fast::Hasher::new_with_initial_len(last, at as u64);
            h.update(&self.buf[at..at + Self::STRIDE]);
            self.marks.push(h.finalize());
        }
        let at = k * Self::STRIDE;
        let mut h = crc32fast::Hasher::new_with_initial_len(self.marks[k], at as u64);
        h.update(&self.buf[at..end]);
        h.finalize()
    }

    /// The CRC of `buf[start..end]`.
    fn range(&mut self, start: usize, end: usize) -> u32 {
        let before = self.prefix(start);
        let through = self.prefix(end);
        // through = shift(before, end - start) ^ crc(range), and shifting
        // is combining with the CRC 0 of that many bytes.
        let mut shifted = crc32fast::Hasher::new_with_initial_len(before, start as u64);
        shifted.combine(&crc32fast::Hasher::new_with_initial_len(
            0,
            (end - start) as u64,
        ));
        through ^ shifted.finalize()
    }
}

struct Chunk {
    data: Vec<u8>,
    timed: Vec<Timed>,
    points: u64,
    records: u64,
    next: u64,
    damage: Option<Damage>,
}

/// Everything appended and not yet synced, as handles to sync without the
/// lock: the sealed segments' and a clone of the active one's. The clone
/// comes first, so a failed clone leaves the handles and the dirty mark in
/// place for the retry.
fn take_unsynced(inner: &mut Inner) -> Result<Vec<(PathBuf, File)>, SpoolError> {
    let active = match (&inner.active, inner.segments.back()) {
        (Some(file), Some(seg)) => Some((
            seg.path.clone(),
            file.try_clone().map_err(|source| SpoolError::Io {
                path: seg.path.clone(),
                source,
            })?,
        )),
        _ => None,
    };
    inner.dirty = false;
    let mut to_sync = std::mem::take(&mut inner.unsynced);
    to_sync.extend(active);
    Ok(to_sync)
}

/// Drops the handles kept to sync a segment that is being deleted: an open
/// handle keeps a deleted file's blocks allocated, and on a full disk the
/// space would never come back.
fn forget_handles(inner: &mut Inner, path: &Path) {
    inner.unsynced.retain(|(p, _)| p != path);
}

/// Reads whole records from `offset` up to `end` of a segment, stopping
/// before `max_bytes` of payload or `max_points` (with `force_one`, at least
/// one record, so a record larger than the limits still goes). Damage found here (bits that flipped after start-up) is skipped
/// to the next valid record, searched for in the whole rest of the segment
/// so a record cut by the read buffer is never mistaken for damage.
/// A record as it is on disk: `magic | len | points | crc32 | payload`,
/// where a timed record's payload is its stamping, then `lines`.
fn encode_record(kind: Kind, lines: &[u8], points: u64) -> Vec<u8> {
    let len = kind.header_len() + lines.len();
    let mut record = Vec::with_capacity(HEADER + len);
    record.extend_from_slice(&kind.magic());
    record.extend_from_slice(&(len as u32).to_le_bytes());
    record.extend_from_slice(&(points as u32).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    if let Kind::Timed(stamping) = kind {
        record.extend_from_slice(&stamping.boot.0);
        record.extend_from_slice(&stamping.wall_minus_boot_ns.to_le_bytes());
    }
    record.extend_from_slice(lines);
    let crc = checksum(kind.magic(), points as u32, &record[HEADER..]);
    record[10..14].copy_from_slice(&crc.to_le_bytes());
    record
}

impl Chunk {
    /// Takes in the payload of a record of `points` points.
    fn take(&mut self, payload: &[u8], points: u32, stamping: Option<Stamping>) {
        if points > 0 {
            let lines = match stamping {
                Some(_) => &payload[STAMPING..],
                None => payload,
            };
            let start = self.data.len();
            self.data.extend_from_slice(lines);
            if let Some(stamping) = stamping {
                self.timed.push(Timed {
                    range: start..self.data.len(),
                    points: u64::from(points),
                    stamping,
                });
            }
        }
        self.points += u64::from(points);
        self.records += 1;
    }
}

fn read_records(
    path: &Path,
    offset: u64,
    end: u64,
    max_bytes: usize,
    max_points: u64,
    force_one: bool,
) -> Result<Chunk, SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let read_at = |file: &mut File, from: u64, len: usize| -> Result<Vec<u8>, SpoolError> {
        let mut buf = vec![0; len];
        file.seek(SeekFrom::Start(from)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    };
    let remaining = (end - offset) as usize;
    let buf = read_at(
        &mut file,
        offset,
        remaining.min(max_bytes.saturating_add(HEADER * 64)),
    )?;
    let mut chunk = Chunk {
        data: Vec::new(),
        timed: Vec::new(),
        points: 0,
        records: 0,
        next: offset,
        damage: None,
    };
    let mut at = 0usize;
    while at < buf.len() {
        let parsed = match parse_record(&buf[at..]) {
            Parsed::Incomplete if chunk.records == 0 && force_one && buf.len() - at >= 6 => {
                // Maybe one record larger than the buffer: read it whole.
                let len =
                    u32::from_le_bytes(buf[at + 2..at + 6].try_into().expect("4 bytes")) as usize;
                let whole_end = offset + (at + HEADER + len) as u64;
                if len <= MAX_RECORD && whole_end <= end {
                    let whole = read_at(&mut file, offset + at as u64, HEADER + len)?;
                    match parse_record(&whole) {
                        Parsed::Record {
                            points, stamping, ..
                        } => {
                            chunk.take(&whole[HEADER..], points, stamping);
                            at += HEADER + len;
                            break;
                        }
                        _ => Parsed::Invalid,
                    }
                } else {
                    Parsed::Invalid
                }
            }
            other => other,
        };
        match parsed {
            Parsed::Record {
                len,
                points,
                stamping,
            } => {
                let payload = len - HEADER;
                let first = force_one && chunk.records == 0;
                if !first
                    && (chunk.data.len() + payload > max_bytes
                        || chunk.points + u64::from(points) > max_points)
                {
                    break;
                }
                chunk.take(&buf[at + HEADER..at + len], points, stamping);
                at += len;
            }
            // A record cut by the end of the buffer: the next read takes it.
            Parsed::Incomplete if chunk.records > 0 => break,
            Parsed::Incomplete | Parsed::Invalid => {
                if chunk.records > 0 {
                    break;
                }
                let rest = read_at(&mut file, offset + at as u64, remaining - at)?;
                let skip = resync(&rest);
                chunk.damage = Some(Damage {
                    segment: path.to_owned(),
                    offset: offset + at as u64,
                    kind: DamageKind::Corrupt { bytes: skip as u64 },
                });
                at += skip;
                break;
            }
        }
    }
    chunk.next = offset + at as u64;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64, overflow: Overflow) -> SpoolConfig {
        SpoolConfig {
            dir: dir.join("spool"),
            max_bytes,
            fsync: FsyncPolicy::Batch,
            overflow,
        }
    }

    fn line(i: u64) -> Vec<u8> {
        format!("m,t=x seq={i}i {i}\n").into_bytes()
    }

    #[test]
    fn timed_records_keep_how_their_points_were_stamped_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let stamping = Stamping {
            boot: BootId([5; 16]),
            wall_minus_boot_ns: -42,
        };
        {
            let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
            spool.append(b"a v=1 1\n", 1).unwrap();
            spool
                .append_stamped(stamping, b"b v=1 2\nb v=1 3\n", 2)
                .unwrap();
            spool.append(b"c v=1 4\n", 1).unwrap();
            spool.commit().unwrap();
        }
        let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert_eq!((rec.points, rec.damage.len()), (4, 0));
        // Read in two parts, then as one batch: the ranges follow the data.
        let mut batch = spool.read(1, 1 << 20, Duration::ZERO).unwrap();
        assert!(batch.timed.is_empty());
        batch.append(spool.read(10, 1 << 20, Duration::ZERO).unwrap());
        assert_eq!(batch.data, b"a v=1 1\nb v=1 2\nb v=1 3\nc v=1 4\n");
        assert_eq!(batch.points, 4);
        assert_eq!(
            batch.timed,
            vec![Timed {
                range: 8..24,
                points: 2,
                stamping,
            }]
        );
    }

    #[test]
    fn a_timed_record_torn_by_a_power_cut_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let stamping = Stamping {
            boot: BootId([5; 16]),
            wall_minus_boot_ns: 3,
        };
        {
            let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
            spool.append_stamped(stamping, b"a v=1 1\n", 1).unwrap();
            spool.append_stamped(stamping, b"b v=1 2\n", 1).unwrap();
            spool.commit().unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert_eq!(rec.points, 1);
        assert!(matches!(rec.damage[0].kind, DamageKind::TornTail { .. }));
        let batch = spool.read(10, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(batch.data, b"a v=1 1\n");
        assert_eq!(batch.timed.len(), 1);
    }

    #[test]
    fn a_flipped_kind_or_stamping_is_damage_not_a_wrong_correction() {
        let stamping = Stamping {
            boot: BootId([5; 16]),
            wall_minus_boot_ns: 7,
        };
        let timed = encode_record(Kind::Timed(stamping), b"b v=1 2\n", 1);
        assert!(matches!(
            parse_record(&timed),
            Parsed::Record {
                stamping: Some(s),
                ..
            } if s == stamping
        ));
        let mut plain = timed.clone();
        plain[1] = b'G';
        assert!(matches!(parse_record(&plain), Parsed::Invalid));
        let mut moved = timed.clone();
        moved[HEADER + 17] ^= 1;
        assert!(matches!(parse_record(&moved), Parsed::Invalid));
        // Too short to hold a stamping, however its checksum came out.
        let short = encode_record(Kind::Plain, b"12345", 1);
        let mut short_timed = short.clone();
        short_timed[1] = b'T';
        let crc = checksum(TIMED_MAGIC, 1, &short[HEADER..]);
        short_timed[10..14].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(parse_record(&short_timed), Parsed::Invalid));
        // A reader finds a timed record after garbage.
        let mut buf = b"xxLTgarbage".to_vec();
        buf.extend_from_slice(&timed);
        assert_eq!(resync(&buf), 11);
    }

    #[test]
    fn padding_ends_the_page_and_readers_skip_it() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        let page = 4096;
        // 40 records of about 30 bytes: 8 + 40 * 31 bytes, far from the
        // page's end; nothing is padded.
        let mut expected = Vec::new();
        for i in 0..40 {
            spool.append(&line(i), 1).unwrap();
            expected.extend(line(i));
        }
        assert_eq!(spool.pad_page(page, page / 8).unwrap(), 0);
        // Close to it: padded to the boundary exactly.
        while page - spool.tail().get() > 200 {
            let i = expected.len() as u64;
            spool.append(&line(i), 1).unwrap();
            expected.extend(line(i));
        }
        let points = spool.stats().points_unread;
        let padded = spool.pad_page(page, page / 8).unwrap();
        assert!(padded > 0);
        assert_eq!(spool.tail().get(), page);
        spool.append(&line(999), 1).unwrap();
        expected.extend(line(999));
        assert_eq!(spool.tail().get(), page + (HEADER + line(999).len()) as u64);
        spool.commit().unwrap();
        let batch = spool.read(10_000, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(batch.data, expected, "the padding's payload is not data");
        assert_eq!(batch.points, points + 1);
        drop(spool);
        // Recovered after a restart the same way.
        let (spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert!(recovery.damage.is_empty(), "{:?}", recovery.damage);
        assert_eq!(recovery.points, points + 1);
        let batch = spool.read(10_000, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(batch.data, expected);
    }

    #[test]
    fn padding_only_under_a_sync_per_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), 1 << 20, Overflow::Block);
        c.fsync = FsyncPolicy::Never;
        let (spool, _) = Spool::open(c).unwrap();
        while 4096 - spool.tail().get() > 200 {
            spool.append(&line(1), 1).unwrap();
        }
        assert_eq!(spool.pad_page(4096, 512).unwrap(), 0);
    }

    #[test]
    fn interval_fsync_also_syncs_when_the_stream_goes_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let every = Duration::from_millis(50);
        let (spool, _) = Spool::open(SpoolConfig {
            fsync: FsyncPolicy::Interval(every),
            ..config(dir.path(), 1 << 20, Overflow::Block)
        })
        .unwrap();
        spool.append(&line(1), 1).unwrap();
        spool.commit().unwrap();
        // Not due yet: left to the page cache for now.
        assert!(spool.stats().unsynced);
        spool.sync_if_due().unwrap();
        assert!(spool.stats().unsynced);
        // No further message comes; the idle writer's call syncs it.
        std::thread::sleep(every + Duration::from_millis(20));
        spool.sync_if_due().unwrap();
        assert!(!spool.stats().unsynced);
        // Batch syncs at each commit, so nothing is ever left.
        let dir = tempfile::tempdir().unwrap();
        let (batch, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        batch.append(&line(1), 1).unwrap();
        batch.commit().unwrap();
        assert!(!batch.stats().unsynced);
    }

    /// Reads and releases everything readable; returns the sequence numbers.
    fn drain(spool: &Spool) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..100_000 {
            let batch = spool.read(7, 300, Duration::ZERO).unwrap();
            if batch.records == 0 {
                break;
            }
            let text = String::from_utf8(batch.data.clone()).unwrap();
            seqs.extend(
                text.lines()
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()),
            );
            spool.release(&batch).unwrap();
        }
        seqs
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
        assert_eq!(rec.segments, 0);
        for i in 0..2000 {
            assert_eq!(spool.append(&line(i), 1).unwrap(), Appended::Stored);
        }
        spool.commit().unwrap();
        assert!(segment_files(dir.path()).len() > 2, "expected rotation");
        assert_eq!(spool.stats().points_unread, 2000);
        assert_eq!(drain(&spool), (0..2000).collect::<Vec<_>>());
        // Caught up: every segment, the one taking appends included, is gone.
        assert_eq!(segment_files(dir.path()).len(), 0);
        assert_eq!(spool.stats().points_unread, 0);
    }

    #[test]
    fn uncommitted_records_are_not_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        spool.append(&line(1), 1).unwrap();
        assert_eq!(
            spool
                .read(10, 1000, Duration::from_millis(10))
                .unwrap()
                .records,
            0
        );
        spool.commit().unwrap();
        assert_eq!(spool.read(10, 1000, Duration::ZERO).unwrap().records, 1);
    }

    #[test]
    fn a_read_waits_for_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        let spool = std::sync::Arc::new(spool);
        let s2 = spool.clone();
        let t =
            std::thread::spawn(move || s2.read(10, 1000, Duration::from_secs(20)).unwrap().records);
        std::thread::sleep(Duration::from_millis(50));
        spool.append(&line(1), 1).unwrap();
        spool.commit().unwrap();
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn unreleased_records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
            for i in 0..300 {
                spool.append(&line(i), 1).unwrap();
            }
            spool.commit().unwrap();
            // Read but never released: InfluxDB did not take it.
            assert!(spool.read(50, 10_000, Duration::ZERO).unwrap().records > 0);
        }
        let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert_eq!((rec.points, rec.damage.len()), (300, 0));
        spool.append(&line(300), 1).unwrap();
        spool.commit().unwrap();
        assert_eq!(drain(&spool), (0..=300).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_reported_and_everything_before_it_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
            for i in 0..100 {
                spool.append(&line(i), 1).unwrap();
            }
            spool.commit().unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert_eq!(rec.damage.len(), 1, "{:?}", rec.damage);
        assert!(matches!(rec.damage[0].kind, DamageKind::TornTail { .. }));
        assert!(rec.damage[0].to_string().contains("torn record"));
        assert_eq!(drain(&spool), (0..99).collect::<Vec<_>>());
        // New records go to a new segment, never after the torn bytes.
        spool.append(&line(500), 1).unwrap();
        spool.commit().unwrap();
        assert_eq!(drain(&spool), vec![500]);
    }

    #[test]
    fn flipped_bytes_skip_only_the_damaged_record() {
        for (what, at_header) in [("payload", false), ("length field", true)] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
                for i in 0..100 {
                    spool.append(&line(i), 1).unwrap();
                }
                spool.commit().unwrap();
            }
            let seg = segment_files(dir.path()).pop().unwrap();
            let mut bytes = fs::read(&seg).unwrap();
            // Record 50 starts after the file magic and 50 records.
            let start = FILE_MAGIC.len() + (0..50).map(|i| HEADER + line(i).len()).sum::<usize>();
            let target = if at_header {
                start + 4
            } else {
                start + HEADER + 3
            };
            bytes[target] ^= 0x5a;
            fs::write(&seg, &bytes).unwrap();
            let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
            assert_eq!(rec.damage.len(), 1, "{what}: {:?}", rec.damage);
            assert!(
                matches!(rec.damage[0].kind, DamageKind::Corrupt { .. }),
                "{what}"
            );
            let expected: Vec<u64> = (0..100).filter(|&i| i != 50).collect();
            assert_eq!(drain(&spool), expected, "{what}");
        }
    }

    #[test]
    fn damage_after_start_up_is_skipped_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        for i in 0..20 {
            spool.append(&line(i), 1).unwrap();
        }
        spool.commit().unwrap();
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let start = FILE_MAGIC.len() + (0..10).map(|i| HEADER + line(i).len()).sum::<usize>();
        bytes[start + HEADER] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let expected: Vec<u64> = (0..20).filter(|&i| i != 10).collect();
        assert_eq!(drain(&spool), expected);
        assert_eq!(spool.take_damage().len(), 1);
    }

    #[test]
    fn a_foreign_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("spool")).unwrap();
        fs::write(
            dir.path().join("spool/00000000000000000007.seg"),
            b"not a segment",
        )
        .unwrap();
        let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        assert!(matches!(rec.damage[0].kind, DamageKind::NotASegment { .. }));
        assert!(
            dir.path()
                .join("spool/00000000000000000007.seg.corrupt")
                .exists()
        );
        spool.append(&line(1), 1).unwrap();
        spool.commit().unwrap();
        assert_eq!(drain(&spool), vec![1]);
    }

    #[test]
    fn drop_oldest_counts_exactly_what_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 64 << 10, Overflow::DropOldest)).unwrap();
        let n = 20_000u64;
        for i in 0..n {
            // Two points per record, to check counts are per point.
            assert_eq!(
                spool
                    .append(&[line(2 * i), line(2 * i + 1)].concat(), 2)
                    .unwrap(),
                Appended::Stored
            );
            if i % 100 == 0 {
                spool.commit().unwrap();
            }
        }
        spool.commit().unwrap();
        let stats = spool.stats();
        assert!(stats.bytes <= 64 << 10, "{stats:?}");
        let delivered = drain(&spool);
        assert_eq!(delivered.len() as u64 + stats.dropped_points, 2 * n);
        // What survives is the newest data, in order.
        assert_eq!(
            delivered,
            (2 * n - delivered.len() as u64..2 * n).collect::<Vec<_>>()
        );
    }

    #[test]
    fn drop_oldest_does_not_count_points_the_writer_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 32 << 10, Overflow::DropOldest)).unwrap();
        for i in 0..200 {
            spool.append(&line(i), 1).unwrap();
        }
        spool.commit().unwrap();
        let held = spool.read(100, 1 << 20, Duration::ZERO).unwrap();
        for i in 200..5000 {
            spool.append(&line(i), 1).unwrap();
        }
        spool.commit().unwrap();
        spool.release(&held).unwrap();
        let rest = drain(&spool);
        assert_eq!(
            held.points + rest.len() as u64 + spool.stats().dropped_points,
            5000
        );
    }

    #[test]
    fn drop_newest_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 16 << 10, Overflow::DropNewest)).unwrap();
        let mut refused = 0;
        for i in 0..2000 {
            if let Appended::DroppedNewest(p) = spool.append(&line(i), 1).unwrap() {
                refused += p;
            }
        }
        spool.commit().unwrap();
        assert!(refused > 0);
        assert_eq!(spool.stats().dropped_points, refused);
        let kept = drain(&spool);
        assert_eq!(
            kept,
            (0..kept.len() as u64).collect::<Vec<_>>(),
            "the oldest are kept"
        );
        assert_eq!(kept.len() as u64 + refused, 2000);
    }

    #[test]
    fn block_refuses_until_space_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 16 << 10, Overflow::Block)).unwrap();
        let mut stored = 0;
        loop {
            match spool.append(&line(stored), 1) {
                Ok(Appended::Stored) => stored += 1,
                Err(SpoolError::Full { .. }) => break,
                other => panic!("{other:?}"),
            }
            assert!(stored < 10_000, "never filled");
        }
        spool.commit().unwrap();
        assert_eq!(spool.stats().dropped_points, 0);
        let batch = spool.read(u64::MAX, usize::MAX, Duration::ZERO).unwrap();
        spool.release(&batch).unwrap();
        assert_eq!(spool.append(&line(stored), 1).unwrap(), Appended::Stored);
    }

    #[test]
    fn reads_respect_limits_but_always_return_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        let big = vec![b'x'; 5000];
        spool.append(&big, 1).unwrap();
        for i in 0..10 {
            spool.append(&line(i), 3).unwrap();
        }
        spool.commit().unwrap();
        let first = spool.read(100, 100, Duration::ZERO).unwrap();
        assert_eq!((first.records, first.data.len()), (1, 5000));
        spool.release(&first).unwrap();
        let second = spool.read(7, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!((second.records, second.points), (2, 6));
    }

    #[test]
    fn random_operations_never_lose_or_reorder_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let cfg = config(dir.path(), 48 << 10, Overflow::Block);
        let (mut spool, _) = Spool::open(cfg.clone()).unwrap();
        let (mut appended, mut committed, mut delivered) = (0u64, 0u64, Vec::new());
        let read_batch = |spool: &Spool, delivered: &mut Vec<u64>, points: u64, bytes: usize| {
            let batch = spool.read(points, bytes, Duration::ZERO).unwrap();
            let text = String::from_utf8(batch.data.clone()).unwrap();
            delivered.extend(
                text.lines()
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()),
            );
            spool.release(&batch).unwrap();
        };
        for _ in 0..5000 {
            match next() % 10 {
                0..=4 => {
                    if spool.append(&line(appended), 1).is_ok() {
                        appended += 1;
                    }
                }
                5 | 6 => {
                    spool.commit().unwrap();
                    committed = appended;
                }
                7 | 8 => read_batch(
                    &spool,
                    &mut delivered,
                    next() % 20 + 1,
                    (next() % 2000) as usize + 1,
                ),
                _ => {
                    drop(spool);
                    spool = Spool::open(cfg.clone()).unwrap().0;
                }
            }
        }
        spool.commit().unwrap();
        delivered.extend(drain(&spool));
        // At least once: every committed record arrives; restarts may
        // replay records, and records appended but not yet committed may
        // survive a restart, but nothing unknown appears and first
        // arrivals keep their order.
        let mut seen = std::collections::BTreeSet::new();
        let mut firsts = Vec::new();
        for s in &delivered {
            assert!(*s < appended, "unknown record {s}");
            if seen.insert(*s) {
                firsts.push(*s);
            }
        }
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "reordered");
        assert!(
            (0..committed).all(|s| seen.contains(&s)),
            "lost a committed record"
        );
    }

    #[test]
    fn range_checksums_from_prefixes_are_the_checksums() {
        let buf: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut p = PrefixCrc::new(&buf);
        for (a, b) in [
            (0, 0),
            (0, 1),
            (3, 3),
            (0, 4999),
            (17, 300),
            (255, 257),
            (256, 512),
            (1000, 4321),
        ] {
            assert_eq!(p.range(a, b), crc32fast::hash(&buf[a..b]), "{a}..{b}");
        }
    }

    /// The bytes of a record as the spool writes it.
    fn record_bytes(points: u32, payload: &[u8]) -> Vec<u8> {
        let mut r = RECORD_MAGIC.to_vec();
        r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        r.extend_from_slice(&points.to_le_bytes());
        r.extend_from_slice(&checksum(RECORD_MAGIC, points, payload).to_le_bytes());
        r.extend_from_slice(payload);
        r
    }

    /// A sensor can fill a string field with text that looks like record
    /// headers with long lengths. Once such a record is damaged, finding
    /// the next good record used to checksum each fake header's whole
    /// length: quadratic (4 MiB took 90 s). Compared with plain damage of
    /// the same size in the same run, so a slow machine cannot fail it.
    #[test]
    fn resync_past_a_damaged_record_full_of_fake_headers_is_linear() {
        let size = 4 << 20;
        let mut fake = Vec::new();
        fake.extend_from_slice(b"m s=\"");
        while fake.len() < size - 64 {
            fake.extend_from_slice(&RECORD_MAGIC);
            fake.extend_from_slice(&(2u32 << 20).to_le_bytes());
            fake.extend_from_slice(&[0u8; 8]);
        }
        fake.extend_from_slice(b"\"\n");
        let mut hostile = record_bytes(1, &fake);
        hostile[0] ^= 0xFF;
        let good = record_bytes(1, b"m v=1 1\n");
        hostile.extend_from_slice(&good);
        let mut plain = vec![b'x'; hostile.len() - good.len()];
        plain.extend_from_slice(&good);
        let time = |buf: &[u8]| {
            let started = std::time::Instant::now();
            let skip = resync(buf);
            (started.elapsed(), skip)
        };
        let (base, skip) = time(&plain);
        assert_eq!(skip, plain.len() - good.len());
        let (took, skip) = time(&hostile);
        assert_eq!(
            skip,
            hostile.len() - good.len(),
            "the good record after it is found"
        );
        eprintln!("4 MiB: plain damage {base:?}, fake headers {took:?}");
        assert!(
            took <= base * 50 + std::time::Duration::from_millis(500),
            "{took:?} against {base:?}"
        );
    }
}
