//! The disk spool: an append-only log of segment files holding every point
//! acknowledged to the broker and not yet accepted by InfluxDB. It owns the
//! on-disk format, crash recovery, the byte budget with its overflow policy
//! and the exact count of points it dropped (docs/spool.md says how and
//! why). It must never panic or stop on a damaged file (damage is reported
//! and skipped), never hand out a record that was not committed, and never
//! drop a point without counting it.

mod pack;
mod packer;
mod read;
mod record;
mod recover;
mod segments;

use self::read::*;
use self::record::*;
use self::recover::*;
use self::segments::*;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::{BootId, Stamping};
use crate::shutdown::Shutdown;

const FILE_MAGIC: &[u8; 8] = b"LGSPOOL1";
/// A preallocated segment ([`Spool::start_segment`]): its file is written
/// to its full size before any record goes in, so that a commit's
/// fdatasync writes the records' pages and no metadata; and its records'
/// checksums cover the segment's id, so that what an earlier use of the
/// file left after the last record never passes for a record.
const FILE_MAGIC_V2: &[u8; 8] = b"LGSPOOL2";
/// The name ending of a used segment file kept to be the next segment.
const SPARE: &str = "spare";

/// The segment id a preallocated segment's checksums cover; None in a
/// segment of the first format.
type Seed = Option<u64>;
const RECORD_MAGIC: [u8; 2] = *b"LG";
/// A record of points stamped on receipt.
const TIMED_MAGIC: [u8; 2] = *b"LT";
/// The [`Stamping`] at the start of a timed record's payload.
const STAMPING: usize = 16 + 8;
const HEADER: usize = 2 + 4 + 4 + 4;
/// A record longer than this is taken as a corrupt length field.
const MAX_RECORD: usize = 64 << 20;

pub use crate::config::units::SizeOrPercent;
pub use crate::config::{FsyncPolicy, Overflow};

/// How often the filesystem's free space is looked at while appending:
/// another program filling the card within this is seen late, and the
/// spool's own growth is counted exactly anyway.
const FLOOR_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub overflow: Overflow,
    /// What to leave free on the filesystem: the budget shrinks to keep
    /// it, whatever `max_bytes` allows.
    pub min_free: SizeOrPercent,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool is full: {0}")]
    Full(NoRoom),
    #[error("record of {0} bytes does not fit in the spool")]
    TooLarge(usize),
}

/// Why an append found no room: for the log and `leasegate status`, which
/// must name the setting that keeps the points out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// The most the spool may hold now.
    pub budget: u64,
    pub max_bytes: u64,
    /// The filesystem's available bytes and what `min_free` keeps of
    /// them, when that floor, not `max_bytes`, sets the budget.
    pub floor: Option<(u64, u64)>,
    /// `overflow = "block"`: the spool waits for room instead of dropping.
    pub block: bool,
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.floor {
            Some((available, kept)) => write!(
                f,
                "the filesystem has {available} bytes available and spool.min_free keeps {kept} of them free, so the spool may hold {} bytes (spool.max_bytes is {})",
                self.budget, self.max_bytes
            )?,
            None => write!(f, "it holds spool.max_bytes ({} bytes)", self.max_bytes)?,
        }
        if self.block {
            f.write_str(" and spool.overflow is \"block\"")?;
        } else {
            f.write_str(", with nothing older to drop")?;
        }
        Ok(())
    }
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

/// Why the spool cannot store what it is given, since when: the
/// appender is not acking until this clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Wall-clock milliseconds of the first failure in a row.
    pub since_ms: i64,
    /// The latest failure, with its cause chain.
    pub error: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of records InfluxDB has not taken yet (headers included).
    pub bytes: u64,
    /// Points stored and not yet read by the writer.
    pub points_unread: u64,
    pub segments: usize,
    pub dropped_points: u64,
    /// Bytes of records written since start (headers included), for
    /// measuring write amplification.
    pub appended_bytes: u64,
    /// The disk refuses appends or syncs (read-only, full, failing).
    pub fault: Option<Fault>,
    /// Something appended is not yet synced (`fsync = "interval"` or
    /// `"never"`).
    pub unsynced: bool,
    /// Segments packed (`pack`), waiting for InfluxDB.
    pub packed_segments: usize,
    /// Points packed since start, and the packer's CPU time for them.
    pub packed_points: u64,
    pub pack_cpu: Duration,
    /// How long the spool could take in points at the rate they came
    /// over the last minute, packed as the last pack was, before it is
    /// full (its budget, `min_free` kept); None while none come.
    pub runway: Option<Duration>,
}

pub struct Spool {
    config: SpoolConfig,
    segment_bytes: u64,
    /// Where the segment taking appends ends, for [`Tail`].
    tail: std::sync::Arc<std::sync::atomic::AtomicU64>,
    inner: Mutex<Inner>,
    readable: std::sync::Condvar,
}

#[derive(Clone, Copy)]
struct Fill {
    syncs: u32,
    from: u64,
}

impl Fill {
    /// No syncs yet, its records ending at `end`: a segment new in this
    /// run, or one found at the start (which then never counts as filled).
    fn at(end: u64) -> Fill {
        Fill {
            syncs: 0,
            from: end,
        }
    }
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes on disk that belong to valid records (plus the file header).
    end: u64,
    /// Readable: committed records end here.
    committed: u64,
    /// No more appends (full, of the first format, or let go of).
    sealed: bool,
    /// Points in records not yet read.
    unread_points: u64,
    /// What its records' checksums cover (None: the first format).
    seed: Seed,
    /// The file's preallocated length: appends end there.
    capacity: u64,
    /// The file grows with its records (not preallocated): a write that
    /// fails part way must be cut off again, or it stays a torn record.
    grows: bool,
    /// How it filled in this run: the syncs it took and where its records
    /// ended when it started taking appends. The next new segment is made
    /// by it ([`Spool::start_segment`]).
    fill: Fill,
    /// Packed ([`pack`]): its `.segz` file's length, which is what it
    /// takes of the budget; positions are still those of its records.
    packed: Option<u64>,
}

impl Segment {
    /// What the segment takes of the budget.
    fn stored(&self) -> u64 {
        self.packed.unwrap_or(self.end)
    }
}

/// A used segment file kept to become the next segment (renamed), so that
/// no file is written full of zeros again (as PostgreSQL recycles its WAL
/// segments).
struct Spare {
    path: PathBuf,
    len: u64,
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
    fault: Option<Fault>,
    /// The last append since the last commit failed.
    append_failed: bool,
    /// Segments let go of whose files could not be deleted yet.
    doomed: Vec<PathBuf>,
    /// The most bytes the spool may hold without taking the filesystem's
    /// last `min_free`, the most the filesystem has room for at all, and
    /// when those were worked out.
    floor: u64,
    room: u64,
    /// What `min_free` keeps free, in bytes, at that check.
    kept: u64,
    floor_checked: Option<Instant>,
    spare: Option<Spare>,
    /// Where InfluxDB has accepted everything before.
    released: Position,
    /// The last `released` saved to the cursor file, and when.
    saved: Option<(Position, Instant)>,
    /// The packed segment being read, unpacked.
    image: Option<(u64, std::sync::Arc<Vec<u8>>)>,
    /// The segment being packed ([`packer`]).
    packing: Option<u64>,
    /// Bytes packed to, per byte of records, in the last pack.
    pack_ratio: Option<f64>,
    packed_points: u64,
    pack_cpu: Duration,
    /// The rate records come at, for the runway.
    ingest: Ingest,
}

/// Bytes of records appended per second, over windows of [`Ingest::WINDOW`].
struct Ingest {
    since: Instant,
    appended_then: u64,
    per_sec: Option<f64>,
}

impl Ingest {
    const WINDOW: Duration = Duration::from_secs(60);

    /// The rate over the last whole window, or over the time since the
    /// first one started (at least 5 s of it).
    fn rate(&mut self, appended: u64) -> Option<f64> {
        let elapsed = self.since.elapsed();
        let per_sec = (appended - self.appended_then) as f64 / elapsed.as_secs_f64();
        if elapsed >= Self::WINDOW {
            *self = Ingest {
                since: Instant::now(),
                appended_then: appended,
                per_sec: Some(per_sec),
            };
        }
        self.per_sec
            .or((elapsed >= Duration::from_secs(5)).then_some(per_sec))
    }
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
        let names: Vec<String> = fs::read_dir(&config.dir)
            .map_err(io)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let (ids, packed) = packer::settle_names(&config.dir, &names)?;
        let (mut segments, mut recovery) = recover(&config.dir, &ids, &packed)?;
        if config.fsync == FsyncPolicy::Batch {
            excuse_cut_tail(&mut recovery, segments.back().map(|s| s.path.as_path()));
        }
        let spare = keep_spare(&config.dir, &numbered(&names, &format!(".{SPARE}")));
        let mut read = Position {
            segment: segments.front().map_or(0, |s| s.id),
            offset: FILE_MAGIC.len() as u64,
        };
        if let Some(cursor) = read_cursor(&config.dir) {
            skip_released(&mut segments, &mut read, cursor, &mut recovery);
        }
        recovery.segments = segments.len();
        let total_bytes = segments.iter().map(Segment::stored).sum();
        let next_id = ids
            .last()
            .into_iter()
            .chain(spare.as_ref().map(|(id, _)| id))
            .max()
            .map_or(1, |id| id + 1);
        // Several segments per budget, so drop_oldest frees a fraction of
        // it rather than everything; small enough that writing a new one
        // full of zeros is brief.
        let segment_bytes = (config.max_bytes / 8)
            .clamp(4 << 10, 4 << 20)
            .min(config.max_bytes / 2);
        // The last segment takes appends again if it is preallocated: a
        // start does not use up a file.
        let active = reopen_last(&mut segments);
        let tail = segments
            .back()
            .filter(|_| active.is_some())
            .map_or(0, |s| s.end);
        let spool = Spool {
            segment_bytes,
            tail: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(tail)),
            inner: Mutex::new(Inner {
                segments,
                active,
                unsynced: Vec::new(),
                dirty: false,
                read,
                total_bytes,
                dropped_points: 0,
                appended_bytes: 0,
                last_sync: Instant::now(),
                next_id,
                pending_damage: Vec::new(),
                fault: None,
                append_failed: false,
                doomed: Vec::new(),
                floor: u64::MAX,
                room: u64::MAX,
                kept: 0,
                floor_checked: None,
                spare: spare.map(|(_, spare)| spare),
                released: read,
                saved: None,
                image: None,
                packing: None,
                pack_ratio: None,
                packed_points: 0,
                pack_cpu: Duration::ZERO,
                ingest: Ingest {
                    since: Instant::now(),
                    appended_then: 0,
                    per_sec: None,
                },
            }),
            readable: std::sync::Condvar::new(),
            config,
        };
        Ok((spool, recovery))
    }
}

impl Spool {
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
        let appended = self.try_append(kind, lines, points);
        // No room is a fault too: nothing is acked until it ends.
        if let Err(e @ (SpoolError::Io { .. } | SpoolError::Full(_))) = &appended {
            self.note_fault(e, true);
        }
        appended
    }

    /// Notes that the disk refused an append or a sync; kept until a
    /// commit succeeds and the last append before it did too (the
    /// appender commits what it could append before each retry, and that
    /// commit does not mean the disk takes appends again).
    fn note_fault(&self, e: &SpoolError, append: bool) {
        let error = crate::error_chain(e);
        let mut inner = self.lock();
        inner.append_failed |= append;
        match &mut inner.fault {
            Some(fault) => fault.error = error,
            None => {
                inner.fault = Some(Fault {
                    since_ms: crate::now_ms(),
                    error,
                })
            }
        }
    }

    fn try_append(&self, kind: Kind, lines: &[u8], points: u64) -> Result<Appended, SpoolError> {
        let payload_len = lines.len() + kind.header_len();
        let record_len = (HEADER + payload_len) as u64;
        if payload_len > MAX_RECORD || record_len + FILE_MAGIC.len() as u64 > self.config.max_bytes
        {
            return Err(SpoolError::TooLarge(payload_len));
        }
        let mut inner = self.lock();
        let mut budget = self.budget(&mut inner, false);
        if inner.total_bytes + record_len > budget {
            // Before dropping or refusing anything: the space may be back.
            budget = self.budget(&mut inner, true);
        }
        while inner.total_bytes + record_len > budget {
            // A segment taking appends that InfluxDB has taken all of makes
            // room first.
            if self.retire_released_active(&mut inner)? {
                continue;
            }
            match self.config.overflow {
                Overflow::DropNewest => {
                    inner.dropped_points += points;
                    return Ok(Appended::DroppedNewest(points));
                }
                Overflow::Block => {
                    return Err(SpoolError::Full(self.no_room(&inner, budget)));
                }
                Overflow::DropOldest => {
                    // The segment taking appends can be dropped too once
                    // sealed; a new one starts below.
                    if inner.segments.front().is_some_and(|s| !s.sealed) {
                        self.seal_active(&mut inner, false);
                    }
                    if !self.drop_oldest(&mut inner, budget)? {
                        return Err(SpoolError::Full(self.no_room(&inner, budget)));
                    }
                }
            }
        }
        let needs_new = match inner.segments.back() {
            Some(s) => s.sealed || s.end + record_len > s.capacity,
            None => true,
        };
        if needs_new {
            self.seal_active(&mut inner, true);
            self.start_segment(&mut inner, FILE_MAGIC.len() as u64 + record_len)?;
        }
        let seed = inner.segments.back().and_then(|s| s.seed);
        let record = encode_record(kind, lines, points, seed);
        self.write_active(&mut inner, &record)?;
        let seg = inner.segments.back_mut().expect("active segment");
        seg.end += record_len;
        seg.unread_points += points;
        self.tail
            .store(seg.end, std::sync::atomic::Ordering::Relaxed);
        inner.total_bytes += record_len;
        inner.appended_bytes += record_len;
        inner.dirty = true;
        inner.append_failed = false;
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
        let budget = self.budget(&mut inner, false);
        let Some(seg) = inner.segments.back().filter(|s| !s.sealed) else {
            return Ok(0);
        };
        let left = (page - seg.end % page) % page;
        if left < HEADER as u64
            || left > most
            || inner.total_bytes + left > budget
            || seg.end + left > seg.capacity
        {
            return Ok(0);
        }
        let payload = vec![b'\n'; left as usize - HEADER];
        let record = encode_record(Kind::Plain, &payload, 0, seg.seed);
        self.write_active(&mut inner, &record)?;
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
        let committed = self.try_commit();
        if let Err(e) = &committed {
            self.note_fault(e, false);
        }
        committed
    }

    fn try_commit(&self) -> Result<(), SpoolError> {
        let (to_sync, ends, due) = {
            let mut inner = self.lock();
            let due = match self.config.fsync {
                FsyncPolicy::Batch => true,
                FsyncPolicy::Interval(every) => inner.last_sync.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
            let to_sync = if due {
                if let Some(seg) = inner.segments.back_mut().filter(|s| !s.sealed) {
                    seg.fill.syncs = seg.fill.syncs.saturating_add(1);
                }
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
        if !std::mem::take(&mut inner.append_failed) {
            inner.fault = None;
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

    /// The directory the spool lives in.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn stats(&self) -> SpoolStats {
        let mut inner = self.lock();
        let runway = self.runway(&mut inner);
        // The segment taking appends outlives what InfluxDB took of it;
        // what waits is the rest.
        let taken = inner
            .segments
            .front()
            .filter(|s| s.id == inner.released.segment)
            .map_or(0, |s| match s.packed {
                // Packed: its share of what InfluxDB took.
                Some(len) => inner.released.offset * len / s.end.max(1),
                None => inner.released.offset,
            });
        SpoolStats {
            bytes: inner.total_bytes.saturating_sub(taken),
            points_unread: inner.segments.iter().map(|s| s.unread_points).sum(),
            segments: inner.segments.len(),
            dropped_points: inner.dropped_points,
            appended_bytes: inner.appended_bytes,
            fault: inner.fault.clone(),
            unsynced: inner.dirty,
            packed_segments: inner.segments.iter().filter(|s| s.packed.is_some()).count(),
            packed_points: inner.packed_points,
            pack_cpu: inner.pack_cpu,
            runway,
        }
    }

    /// See [`SpoolStats::runway`].
    fn runway(&self, inner: &mut Inner) -> Option<Duration> {
        let appended = inner.appended_bytes;
        let rate = inner.ingest.rate(appended).filter(|r| *r > 0.0)?;
        let free = self.budget(inner, false).saturating_sub(inner.total_bytes);
        let stored_rate = rate * inner.pack_ratio.unwrap_or(1.0);
        Some(Duration::from_secs_f64(
            (free as f64 / stored_rate).min(1e9),
        ))
    }

    /// Damage found while reading since the last call.
    pub fn take_damage(&self) -> Vec<Damage> {
        std::mem::take(&mut self.lock().pending_damage)
    }
}

impl Drop for Spool {
    /// Saves where InfluxDB has accepted everything before, synced: a
    /// clean stop sends nothing twice.
    fn drop(&mut self) {
        let inner = self.lock();
        if inner.saved.is_none_or(|(at, _)| at != inner.released)
            && let Err(e) = write_cursor(&self.config.dir, inner.released, true)
        {
            log::debug!("cannot save the spool's cursor: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
