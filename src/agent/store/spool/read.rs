//! Reading the spool: batches from the cursor on, in order and whole
//! records only, the cursor file that says where InfluxDB has everything
//! before, and releasing what was written. It never hands out a record that
//! was not committed, and never moves the cursor past a point not written.

use super::*;

/// The cursor file: where InfluxDB had accepted everything before, as of
/// the last save (`segment | offset | crc32`, little-endian). Written in
/// place and not synced but at a clean stop: after a power cut a little is
/// sent again (InfluxDB merges it), but no segment is read again from its
/// start because its file lives on.
pub(super) const CURSOR: &str = "cursor";
pub(super) const CURSOR_LEN: usize = 8 + 8 + 4;
/// How often the cursor file is written at most while points flow.
pub(super) const CURSOR_EVERY: Duration = Duration::from_secs(10);

pub(super) fn read_cursor(dir: &Path) -> Option<Position> {
    let bytes = fs::read(dir.join(CURSOR)).ok()?;
    let bytes: &[u8; CURSOR_LEN] = bytes.get(..CURSOR_LEN)?.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[16..].try_into().ok()?);
    (crc32fast::hash(&bytes[..16]) == crc).then(|| Position {
        segment: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    })
}

pub(super) fn write_cursor(dir: &Path, at: Position, sync: bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut bytes = [0; CURSOR_LEN];
    bytes[..8].copy_from_slice(&at.segment.to_le_bytes());
    bytes[8..16].copy_from_slice(&at.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(CURSOR))?;
    file.write_all_at(&bytes, 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Starts reading at the saved `cursor`: segments before it were accepted
/// whole (their deletion was lost in a crash) and are deleted, and the
/// records before it in its own segment are skipped. A cursor that is not
/// at a record of a segment here is ignored past that.
pub(super) fn skip_released(
    segments: &mut VecDeque<Segment>,
    read: &mut Position,
    cursor: Position,
    recovery: &mut Recovery,
) {
    while let Some(front) = segments.front().filter(|s| s.id < cursor.segment) {
        if let Err(e) = remove(&front.path) {
            log::debug!("{e}");
        }
        recovery.points -= front.unread_points;
        recovery.bytes -= front.stored();
        segments.pop_front();
    }
    let Some(seg) = segments.front_mut().filter(|s| s.id == cursor.segment) else {
        return;
    };
    if let Some(points) = points_before(seg, cursor.offset) {
        seg.unread_points -= points;
        recovery.points -= points;
        *read = cursor;
    }
}

/// The points in `seg`'s records before `offset`, if a record starts (or
/// the valid records end) there.
pub(super) fn points_before(seg: &Segment, offset: u64) -> Option<u64> {
    if offset < FILE_MAGIC.len() as u64 || offset > seg.end {
        return None;
    }
    let buf = packer::bytes_before(seg, offset)?;
    let (mut at, mut points) = (FILE_MAGIC.len(), 0);
    while at < buf.len() {
        match parse_record(&buf[at..], seg.seed) {
            Parsed::Record { len, points: p, .. } => {
                at += len;
                points += u64::from(p);
            }
            _ => return None,
        }
    }
    Some(points)
}

impl Spool {
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
            let (path, committed, seed) = (seg.path.clone(), seg.committed, seg.seed);
            let image = match seg.packed {
                Some(_) => self.image(&mut inner, read.segment).map(Some),
                None => Ok(None),
            };
            let budget = max_bytes.saturating_sub(batch.data.len());
            let force_one = batch.records == 0;
            let chunk = image.and_then(|image| {
                read_records(
                    &path,
                    image.as_deref().map(Vec::as_slice),
                    seed,
                    read.offset,
                    committed,
                    budget,
                    max_points - batch.points,
                    force_one,
                )
            });
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The cursor has moved past what this batch holds: hand it
                // out, or it would be lost. The failure comes back at the
                // next read, which starts here.
                Err(e) if batch.records > 0 => {
                    log::debug!("spool read stopped early: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
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
    pub(super) fn has_unread(&self, inner: &mut Inner) -> bool {
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

    /// Frees the space of everything up to the end of `batch`, once
    /// InfluxDB has accepted it: segments read to the end are deleted.
    pub fn release(&self, batch: &Batch) -> Result<(), SpoolError> {
        let Some(end) = batch.end else { return Ok(()) };
        let mut inner = self.lock();
        let doomed = std::mem::take(&mut inner.doomed);
        for path in doomed {
            // Failed again: the error was told the first time.
            let _ = delete(&mut inner, path);
        }
        inner.released = inner.released.max(end);
        while let Some(front) = inner.segments.front() {
            let done =
                front.id < end.segment || (front.id == end.segment && end.offset >= front.end);
            // The segment taking appends lives on when the writer catches
            // up with it (a new file a second at low rates would cost the
            // card a create, a sync of the directory and a delete each).
            if !done
                || !front.sealed
                || (front.id == inner.read.segment && inner.read.offset < front.end)
            {
                break;
            }
            let seg = inner.segments.pop_front().expect("front exists");
            inner.total_bytes -= seg.stored();
            self.retire(&mut inner, seg)?;
        }
        let due = inner
            .saved
            .is_none_or(|(at, when)| at != inner.released && when.elapsed() >= CURSOR_EVERY);
        if due {
            let released = inner.released;
            inner.saved = Some((released, Instant::now()));
            if let Err(e) = write_cursor(&self.config.dir, released, false) {
                log::debug!("cannot save the spool's cursor: {e}");
            }
        }
        Ok(())
    }

    /// Moves the read cursor past segments that are read to their end and
    /// will get no more records.
    pub(super) fn skip_finished(&self, inner: &mut Inner) {
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
}

pub(super) fn position_in(read: &Position, seg: &Segment) -> u64 {
    if seg.id == read.segment {
        read.offset
    } else {
        FILE_MAGIC.len() as u64
    }
}

pub(super) struct Chunk {
    pub(super) data: Vec<u8>,
    pub(super) timed: Vec<Timed>,
    pub(super) points: u64,
    pub(super) records: u64,
    pub(super) next: u64,
    pub(super) damage: Option<Damage>,
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

/// Where a segment's bytes are read from: its file, or the image of a
/// packed one.
pub(super) enum Source<'a> {
    File(File),
    Image(&'a [u8]),
}

impl Source<'_> {
    fn read_at(&mut self, from: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Source::File(file) => {
                let mut buf = vec![0; len];
                file.seek(SeekFrom::Start(from))?;
                file.read_exact(&mut buf)?;
                Ok(buf)
            }
            Source::Image(image) => usize::try_from(from)
                .ok()
                .and_then(|from| image.get(from..from.checked_add(len)?))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn read_records(
    path: &Path,
    image: Option<&[u8]>,
    seed: Seed,
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
    let mut file = match image {
        Some(image) => Source::Image(image),
        None => Source::File(File::open(path).map_err(io)?),
    };
    let read_at = |file: &mut Source<'_>, from: u64, len: usize| -> Result<Vec<u8>, SpoolError> {
        file.read_at(from, len).map_err(io)
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
        let parsed = match parse_record(&buf[at..], seed) {
            Parsed::Incomplete if chunk.records == 0 && force_one && buf.len() - at >= 6 => {
                // Maybe one record larger than the buffer: read it whole.
                let len =
                    u32::from_le_bytes(buf[at + 2..at + 6].try_into().expect("4 bytes")) as usize;
                let whole_end = offset + (at + HEADER + len) as u64;
                if len <= MAX_RECORD && whole_end <= end {
                    let whole = read_at(&mut file, offset + at as u64, HEADER + len)?;
                    match parse_record(&whole, seed) {
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
                let skip = resync(&rest, seed);
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
