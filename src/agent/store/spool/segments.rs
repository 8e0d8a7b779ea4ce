//! The spool's segment files: making one whole before it takes records
//! (zeros once, or a recycled spare) or letting it grow where that costs
//! the card less, sealing, syncing without the lock,
//! the byte budget with its overflow policy, and retiring read segments. It
//! never deletes a segment holding a point that was not released or
//! counted as dropped.

use super::*;

/// The ids in `names` (file names) that end in `suffix`, in order.
pub(super) fn numbered(names: &[String], suffix: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(suffix)?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// The newest spare segment file of those numbered `ids` (with its id),
/// if it is a preallocated segment; the others are deleted.
pub(super) fn keep_spare(dir: &Path, ids: &[u64]) -> Option<(u64, Spare)> {
    let mut kept = None;
    for id in ids.iter().rev() {
        let path = dir.join(format!("{id:020}.{SPARE}"));
        let usable = kept.is_none() && {
            let mut magic = [0; 8];
            File::open(&path)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && &magic == FILE_MAGIC_V2
        };
        match fs::metadata(&path) {
            Ok(meta) if usable => {
                kept = Some((
                    *id,
                    Spare {
                        path,
                        len: meta.len(),
                    },
                ))
            }
            _ => {
                if let Err(e) = remove(&path) {
                    log::debug!("{e}");
                }
            }
        }
    }
    kept
}

/// Makes the newest segment take appends again, if it is preallocated
/// and has room: its file, opened for writing.
pub(super) fn reopen_last(segments: &mut VecDeque<Segment>) -> Option<File> {
    let last = segments
        .back_mut()
        .filter(|s| s.seed.is_some() && s.end < s.capacity)?;
    match OpenOptions::new().write(true).open(&last.path) {
        Ok(file) => {
            last.sealed = false;
            last.fill.from = last.end;
            Some(file)
        }
        Err(e) => {
            log::debug!("{} stays sealed: {e}", last.path.display());
            None
        }
    }
}

/// What one fdatasync of a file that grew costs an ext4 card beyond the
/// records' pages: its new size and blocks go through the journal. 3.2 to
/// 6.3 KiB more than the same sync of a preallocated file, as counted by
/// a loop device for appends of 100 B to 12 KiB (BENCHMARKS.md), rounded
/// up.
const GROWTH_PER_SYNC: u64 = 8 << 10;

/// Whether `prev`, the segment sealed before a new one starts, filled
/// (half of it at least, in this run) in so few syncs that a file of its
/// size growing at that pace would cost the card less in journal writes
/// than writing it full of zeros first. A slow stream takes thousands of
/// syncs for a segment (one a group commit) and keeps its zeros.
pub(super) fn filled_fast(prev: &Segment) -> bool {
    let filled = prev.end.saturating_sub(prev.fill.from);
    filled >= prev.capacity / 2 && u64::from(prev.fill.syncs) * GROWTH_PER_SYNC < filled
}

impl Spool {
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
    pub(super) fn sync_files(&self, to_sync: Vec<(PathBuf, File)>) -> Result<(), SpoolError> {
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

    /// Deletes the oldest sealed segment, counting its unread points as
    /// dropped. Returns false if there is none to delete.
    pub(super) fn drop_oldest(&self, inner: &mut Inner, budget: u64) -> Result<bool, SpoolError> {
        let Some(front) = inner.segments.front() else {
            return Ok(false);
        };
        if !front.sealed {
            return Ok(false);
        }
        let seg = inner.segments.pop_front().expect("front exists");
        inner.total_bytes -= seg.stored();
        inner.dropped_points += seg.unread_points;
        if seg.unread_points > 0 {
            log::warn!(
                "spool full ({budget} bytes{}): dropped the oldest {} points (overflow = drop_oldest)",
                if budget < self.config.max_bytes {
                    ", less than spool.max_bytes to leave spool.min_free free on the card"
                } else {
                    ""
                },
                seg.unread_points
            );
        }
        if inner.read.segment <= seg.id {
            inner.read = Position {
                segment: seg.id + 1,
                offset: FILE_MAGIC.len() as u64,
            };
        }
        self.retire(inner, seg)?;
        Ok(true)
    }

    /// The most bytes the spool may hold now: `max_bytes`, or less where
    /// the filesystem would keep under `min_free` free (other files fill
    /// it). Looked up at most once per [`FLOOR_EVERY`] unless `fresh`;
    /// between lookups the spool's own growth is within the figure, as it
    /// counts its bytes.
    pub(super) fn budget(&self, inner: &mut Inner, fresh: bool) -> u64 {
        if fresh
            || inner
                .floor_checked
                .is_none_or(|t| t.elapsed() >= FLOOR_EVERY)
        {
            inner.floor_checked = Some(Instant::now());
            (inner.floor, inner.room, inner.kept) = match rustix::fs::statvfs(&self.config.dir) {
                Ok(fs) => {
                    let avail = fs.f_bavail.saturating_mul(fs.f_frsize);
                    let keep = self
                        .config
                        .min_free
                        .of(fs.f_blocks.saturating_mul(fs.f_frsize));
                    (
                        inner.total_bytes + avail.saturating_sub(keep),
                        inner.total_bytes + avail,
                        keep,
                    )
                }
                Err(e) => {
                    log::debug!("cannot see the spool's free space: {e}");
                    (u64::MAX, u64::MAX, 0)
                }
            };
        }
        if self.config.min_free == SizeOrPercent::Bytes(0) {
            return self.config.max_bytes;
        }
        inner.floor.min(self.config.max_bytes)
    }

    /// Why `budget` leaves no room for an append.
    pub(super) fn no_room(&self, inner: &Inner, budget: u64) -> NoRoom {
        NoRoom {
            budget,
            max_bytes: self.config.max_bytes,
            floor: (budget < self.config.max_bytes)
                .then(|| (inner.room.saturating_sub(inner.total_bytes), inner.kept)),
            block: self.config.overflow == Overflow::Block,
        }
    }

    /// Stops appends to the last segment. With `sync_later`, its handle is
    /// kept for the next commit to sync, because its newest records may be
    /// acked by that commit; without, the segment is about to be deleted.
    pub(super) fn seal_active(&self, inner: &mut Inner, sync_later: bool) {
        if let Some(seg) = inner.segments.back_mut() {
            seg.sealed = true;
            // A spare's former records may follow: zeros mark the end.
            if let Some(file) = inner.active.as_ref()
                && seg.seed.is_some()
                && !seg.grows
                && seg.end < seg.capacity
            {
                use std::os::unix::fs::FileExt as _;
                let n = (seg.capacity - seg.end).min(HEADER as u64) as usize;
                if let Err(e) = file.write_all_at(&[0; HEADER][..n], seg.end) {
                    log::debug!("cannot mark the end of {}: {e}", seg.path.display());
                }
            }
            if let Some(file) = inner.active.take()
                && sync_later
                && self.config.fsync != FsyncPolicy::Never
            {
                inner.unsynced.push((seg.path.clone(), file));
            }
        }
        inner.active = None;
    }

    /// Writes a whole record at the end of the segment taking appends. A
    /// write that fails (a read-only, full or failing disk) leaves no torn
    /// record: in a preallocated file what it wrote is unused space that
    /// the next append overwrites; a file that grows with its records is
    /// cut back to its last good record (the next start would otherwise
    /// report the cut write as damage once a newer segment exists).
    pub(super) fn write_active(&self, inner: &mut Inner, record: &[u8]) -> Result<(), SpoolError> {
        use std::os::unix::fs::FileExt as _;
        let seg = inner.segments.back().expect("a segment taking appends");
        let (path, end, grows) = (seg.path.clone(), seg.end, seg.grows);
        let file = inner.active.as_ref().expect("an active segment is open");
        file.write_all_at(record, end).map_err(|source| {
            if grows && let Err(e) = file.set_len(end) {
                log::debug!("cannot cut {} back to {end}: {e}", path.display());
            }
            SpoolError::Io { path, source }
        })
    }

    /// Starts the next segment file, of at least `min_len` bytes: the
    /// spare renamed, or a new file written full of zeros. Either way its
    /// length and blocks are on disk before any record goes in, so a
    /// commit's fdatasync has only the records' pages to write. A new file
    /// grows with its records instead while a backlog builds up (the
    /// writer is a segment behind, InfluxDB is away), or when the segment
    /// before it filled in syncs few enough that this one's would cost the
    /// card less than its zeros ([`filled_fast`]): a backlog drained or a
    /// fast stream then writes each byte once, and no append waits for
    /// megabytes of zeros. A failure (a full or read-only disk) leaves no
    /// file behind and uses up no id, so that retries do not litter the
    /// spool.
    pub(super) fn start_segment(&self, inner: &mut Inner, min_len: u64) -> Result<(), SpoolError> {
        let id = inner.next_id;
        let path = segment_path(&self.config.dir, id);
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let wanted = self.segment_size(inner).max(min_len);
        let made = match inner.spare.take() {
            Some(spare) if spare.len >= min_len => fs::rename(&spare.path, &path)
                .and_then(|()| OpenOptions::new().write(true).open(&path))
                .map(|file| (file, spare.len, false)),
            spare => {
                if let Some(spare) = spare {
                    // Too small for this record: make room for a new one.
                    remove(&spare.path)?;
                }
                let grow =
                    inner.segments.len() >= 2 || inner.segments.back().is_some_and(filled_fast);
                let zeroed = if grow { 0 } else { wanted };
                self.preallocate(&path, zeroed)
                    .map(|file| (file, wanted, grow))
                    .inspect_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            // Not ours (the ids were read at the start).
                            inner.next_id += 1;
                        }
                    })
            }
        };
        // The new name must survive a crash too, or its records would be
        // acked and then lost with the directory entry.
        let made = made.and_then(|made| match self.config.fsync {
            FsyncPolicy::Never => Ok(made),
            _ => File::open(&self.config.dir)
                .and_then(|d| d.sync_all())
                .map(|()| made),
        });
        let (file, capacity, grows) = made.map_err(io)?;
        inner.next_id += 1;
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
            seed: Some(id),
            capacity,
            grows,
            fill: Fill::at(len),
            packed: None,
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

    /// A new segment file of `len` bytes: the magic, then zeros, synced
    /// (the zeros are what keeps later fdatasyncs free of metadata); just
    /// the magic if `len` is 0. Gone again if any of it fails.
    pub(super) fn preallocate(&self, path: &Path, len: u64) -> io::Result<File> {
        use std::os::unix::fs::FileExt as _;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)?;
        let zeros = vec![0; (len as usize).min(1 << 20)];
        let filled = || -> io::Result<()> {
            file.write_all_at(FILE_MAGIC_V2, 0)?;
            let mut at = FILE_MAGIC_V2.len() as u64;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            if self.config.fsync != FsyncPolicy::Never {
                file.sync_data()?;
            }
            Ok(())
        };
        match filled() {
            Ok(()) => Ok(file),
            Err(e) => {
                drop(file);
                if let Err(gone) = fs::remove_file(path) {
                    log::debug!("cannot remove {}: {gone}", path.display());
                }
                Err(e)
            }
        }
    }

    /// How long a new segment is: a fraction of the budget (also when the
    /// filesystem's free space makes that smaller), so that drop_oldest
    /// drops a part, and so that writing one full of zeros never takes
    /// the filesystem's last space.
    pub(super) fn segment_size(&self, inner: &mut Inner) -> u64 {
        self.budget(inner, false);
        let room = inner.room.min(self.config.max_bytes);
        self.segment_bytes.min(room / 8).max(4 << 10)
    }

    /// Lets go of a segment read and accepted to its end: kept as the
    /// spare if there is none and it is preallocated, else deleted.
    pub(super) fn retire(&self, inner: &mut Inner, seg: Segment) -> Result<(), SpoolError> {
        forget_handles(inner, &seg.path);
        if inner.image.as_ref().is_some_and(|(id, _)| *id == seg.id) {
            inner.image = None;
        }
        // A file that grew with its records (see start_segment) is as good
        // as a preallocated one once it is full.
        let len = fs::metadata(&seg.path).map_or(0, |m| m.len());
        if inner.spare.is_none()
            && seg.seed.is_some()
            && seg.packed.is_none()
            && len >= self.segment_bytes / 2
        {
            let path = self.config.dir.join(format!("{:020}.{SPARE}", seg.id));
            // No sync: if the rename is lost in a crash, the cursor says
            // the segment was accepted, and the start deletes it.
            if fs::rename(&seg.path, &path).is_ok() {
                inner.spare = Some(Spare { path, len });
                return Ok(());
            }
        }
        delete(inner, seg.path)
    }

    /// Lets go of the segment taking appends if InfluxDB has accepted all
    /// of it and it is the only one: the budget is full and its space
    /// must come back. True if it did.
    pub(super) fn retire_released_active(&self, inner: &mut Inner) -> Result<bool, SpoolError> {
        let done = inner.segments.len() == 1
            && inner.segments.front().is_some_and(|s| {
                !s.sealed
                    && inner.released
                        >= Position {
                            segment: s.id,
                            offset: s.end,
                        }
            });
        if !done {
            return Ok(false);
        }
        self.seal_active(inner, false);
        let seg = inner.segments.pop_front().expect("front exists");
        inner.total_bytes -= seg.stored();
        inner.active = None;
        self.retire(inner, seg)?;
        Ok(true)
    }
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Deletes a segment the spool has let go of; one that cannot be deleted
/// now (a read-only disk) is tried again at the next release, so that it
/// is neither left behind nor read again after a restart.
pub(super) fn delete(inner: &mut Inner, path: PathBuf) -> Result<(), SpoolError> {
    let removed = remove(&path);
    if removed.is_err() {
        inner.doomed.push(path);
    }
    removed
}

pub(super) fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpoolError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Everything appended and not yet synced, as handles to sync without the
/// lock: the sealed segments' and a clone of the active one's. The clone
/// comes first, so a failed clone leaves the handles and the dirty mark in
/// place for the retry.
pub(super) fn take_unsynced(inner: &mut Inner) -> Result<Vec<(PathBuf, File)>, SpoolError> {
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
pub(super) fn forget_handles(inner: &mut Inner, path: &Path) {
    inner.unsynced.retain(|(p, _)| p != path);
}
