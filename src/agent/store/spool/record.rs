//! The record format: `magic | len | points | crc32 | payload`, the
//! checksum that covers the segment's id (so an earlier use of a recycled
//! file never passes for a record), and finding the next record after a
//! damaged one. Pure functions over bytes: no file, no lock.

use super::*;

/// The checksum of a record: of its payload and point count, and for a
/// timed record of its kind too, so that a flipped magic is caught.
pub(super) fn checksum(magic: [u8; 2], points: u32, payload: &[u8], seed: Seed) -> u32 {
    let mut h = checksum_start(magic, points, seed);
    h.update(payload);
    h.finalize()
}

/// What a record's checksum covers first: in a preallocated segment the
/// segment's id ([`Seed`]), so that records left from the file's earlier
/// use never pass for its own.
pub(super) fn checksum_start(magic: [u8; 2], points: u32, seed: Seed) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    if let Some(id) = seed {
        h.update(&id.to_le_bytes());
    }
    if magic == TIMED_MAGIC {
        h.update(&TIMED_MAGIC);
    }
    h.update(&points.to_le_bytes());
    h
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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

    pub(super) fn header_len(self) -> usize {
        match self {
            Kind::Plain => 0,
            Kind::Timed(_) => STAMPING,
        }
    }
}

pub(super) fn is_magic(bytes: &[u8]) -> bool {
    bytes == RECORD_MAGIC || bytes == TIMED_MAGIC
}

/// The stamping a timed record's payload starts with.
pub(super) fn read_stamping(payload: &[u8]) -> Stamping {
    let mut boot = [0; 16];
    boot.copy_from_slice(&payload[..16]);
    Stamping {
        boot: BootId(boot),
        wall_minus_boot_ns: i64::from_le_bytes(payload[16..STAMPING].try_into().expect("8 bytes")),
    }
}

/// Whether a record header's worth of zeros (or the file's end) follows
/// `at`: the end of a segment's records.
pub(super) fn zero_mark(bytes: &[u8], at: usize) -> bool {
    bytes[at..(at + HEADER).min(bytes.len())]
        .iter()
        .all(|&b| b == 0)
}

/// How many bytes an invalid record claims to span, if its header says
/// so and fits; else all of `rest`.
pub(super) fn claimed_len(rest: &[u8]) -> usize {
    match rest.get(2..6) {
        Some(len) if is_magic(&rest[..2]) => {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            (HEADER + len).min(rest.len())
        }
        _ => rest.len(),
    }
}

pub(super) enum Parsed {
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

pub(super) fn parse_record(buf: &[u8], seed: Seed) -> Parsed {
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
    if checksum(magic, points, payload, seed) != crc {
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
pub(super) fn resync(buf: &[u8], seed: Seed) -> usize {
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
        let mut whole = checksum_start(magic, points, seed);
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
pub(super) struct PrefixCrc<'a> {
    pub(super) buf: &'a [u8],
    /// `marks[k]` is the CRC of `buf[..k * STRIDE]`.
    pub(super) marks: Vec<u32>,
}

impl<'a> PrefixCrc<'a> {
    const STRIDE: usize = 256;

    pub(super) fn new(buf: &'a [u8]) -> Self {
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
    pub(super) fn range(&mut self, start: usize, end: usize) -> u32 {
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

/// Reads whole records from `offset` up to `end` of a segment, stopping
/// before `max_bytes` of payload or `max_points` (with `force_one`, at least
/// one record, so a record larger than the limits still goes). Damage found here (bits that flipped after start-up) is skipped
/// to the next valid record, searched for in the whole rest of the segment
/// so a record cut by the read buffer is never mistaken for damage.
/// A record as it is on disk: `magic | len | points | crc32 | payload`,
/// where a timed record's payload is its stamping, then `lines`.
pub(super) fn encode_record(kind: Kind, lines: &[u8], points: u64, seed: Seed) -> Vec<u8> {
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
    let crc = checksum(kind.magic(), points as u32, &record[HEADER..], seed);
    record[10..14].copy_from_slice(&crc.to_le_bytes());
    record
}
