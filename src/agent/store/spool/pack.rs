//! Packed segments: a sealed segment's records, compressed into a `.segz`
//! file beside the `.seg` files, so that a long outage fits the spool's
//! budget. Unpacking rebuilds the segment's bytes exactly: positions in a
//! packed segment are those of the segment it was.
//!
//! Packing must never change what a record holds or lose one: a pack is
//! unpacked and compared with the segment before it may replace it.
//! Damage must cost one block at most: each block is checked on its own.

use std::io::Write as _;

use super::{
    FILE_MAGIC, HEADER, Kind, Parsed, STAMPING, encode_record, parse_record, read_stamping, resync,
};

/// The magic of a packed segment file; blocks follow it, each a
/// `Header` then its DEFLATE bytes.
pub(super) const PACKED_MAGIC: &[u8; 8] = b"LGSPOOLZ";
const BLOCK_MAGIC: [u8; 2] = *b"LZ";
const BLOCK_HEADER: usize = 2 + 6 * 4;
/// Bytes of records per block: what one flipped bit can cost, and big
/// enough that DEFLATE's 32 KiB window is used.
const BLOCK_RAW: usize = 64 << 10;
/// DEFLATE's level: 6 packs realistic line protocol 6.9x at about
/// 1.5 µs a point on x86 (BENCHMARKS.md); 9 gains 3 % for twice the time.
const LEVEL: u32 = 6;
/// The furthest a packed block may say its records end: a segment holds
/// at most one record over its size (4 MiB), and a record is at most
/// `MAX_RECORD`. A header that says more is damage, not an allocation.
const MAX_END: usize = super::MAX_RECORD + (8 << 20);
/// Marks a line's timestamp written as a difference.
const DELTA: u8 = 0x01;
/// A record kind's flag: its lines' timestamps are differences.
const DELTAS: u8 = 0x80;

/// A packed segment and the points it holds.
pub(super) struct Packed {
    pub bytes: Vec<u8>,
    pub points: u64,
}

/// What a packed segment's block headers say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// Where the segment's records ended (a position in the segment).
    pub end: u64,
    pub points: u64,
    /// Bytes of the file that are no block (damage), skipped.
    pub unreadable: u64,
}

/// A block's header: `"LZ" | raw_start u32 | raw_len u32 | packed_len u32 |
/// points u32 | crc u32 | header_crc u32`, then `packed_len` bytes of
/// DEFLATE.
struct Header {
    raw_start: usize,
    raw_len: usize,
    packed_len: usize,
    points: u32,
    crc: u32,
}

/// Packs the records of segment `seed` whose file bytes, up to the end of
/// its valid records, are `raw`. Bytes that are no valid record (damage
/// already reported) are left out.
pub(super) fn pack(raw: &[u8], seed: u64) -> std::io::Result<Packed> {
    let mut out = PACKED_MAGIC.to_vec();
    let mut points = 0u64;
    let mut at = FILE_MAGIC.len();
    let mut block = Block::new(at);
    while at < raw.len() {
        match parse_record(&raw[at..], Some(seed)) {
            Parsed::Record { len, points: p, .. } => {
                block.add(&raw[at..at + len], p);
                points += u64::from(p);
                at += len;
                if block.raw_len >= BLOCK_RAW {
                    block.finish(&mut out)?;
                    block = Block::new(at);
                }
            }
            Parsed::Incomplete | Parsed::Invalid => {
                block.finish(&mut out)?;
                at += resync(&raw[at..], Some(seed));
                block = Block::new(at);
            }
        }
    }
    block.finish(&mut out)?;
    Ok(Packed { bytes: out, points })
}

/// One block being packed. It inflates to its records without their
/// checksums (`kind u8 | points varint | len varint | payload`): those are
/// a function of the records and the segment's id, so unpacking rebuilds
/// them exactly.
struct Block {
    raw_start: usize,
    raw_len: usize,
    points: u32,
    crc: crc32fast::Hasher,
    compact: Vec<u8>,
    previous: i64,
}

impl Block {
    fn new(raw_start: usize) -> Block {
        Block {
            raw_start,
            raw_len: 0,
            points: 0,
            crc: crc32fast::Hasher::new(),
            compact: Vec::with_capacity(BLOCK_RAW),
            previous: 0,
        }
    }

    /// Adds a whole, valid record.
    fn add(&mut self, record: &[u8], points: u32) {
        self.raw_len += record.len();
        self.points += points;
        self.crc.update(record);
        let timed = record[..2] == super::TIMED_MAGIC;
        let payload = &record[HEADER..];
        let (stamping, lines) = payload.split_at(if timed { STAMPING } else { 0 });
        let mut body = stamping.to_vec();
        let deltas = !lines.contains(&DELTA);
        if deltas {
            to_deltas(lines, &mut self.previous, &mut body);
        } else {
            body.extend_from_slice(lines);
        }
        self.compact
            .push(u8::from(timed) | if deltas { DELTAS } else { 0 });
        varint(&mut self.compact, u64::from(points));
        varint(&mut self.compact, body.len() as u64);
        self.compact.extend_from_slice(&body);
    }

    fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        if self.raw_len == 0 {
            return Ok(());
        }
        let mut deflate = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(self.compact.len() / 4),
            flate2::Compression::new(LEVEL),
        );
        deflate.write_all(&self.compact)?;
        let packed = deflate.finish()?;
        let mut header = Vec::with_capacity(BLOCK_HEADER);
        header.extend_from_slice(&BLOCK_MAGIC);
        for field in [
            self.raw_start as u32,
            self.raw_len as u32,
            packed.len() as u32,
            self.points,
            self.crc.finalize(),
        ] {
            header.extend_from_slice(&field.to_le_bytes());
        }
        let header_crc = crc32fast::hash(&header);
        header.extend_from_slice(&header_crc.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&packed);
        Ok(())
    }
}

/// The block headers of a packed file, from `at`: each one that checks,
/// with where its packed bytes start. A header that does not check is
/// skipped to the next that does (bit rot costs its block only).
fn blocks(packed: &[u8]) -> impl Iterator<Item = (usize, Header)> + '_ {
    let mut at = PACKED_MAGIC.len();
    std::iter::from_fn(move || {
        while at + BLOCK_HEADER <= packed.len() {
            let Some(header) = read_header(&packed[at..]) else {
                at += 1;
                continue;
            };
            let start = at + BLOCK_HEADER;
            at = start + header.packed_len;
            return Some((start, header));
        }
        None
    })
}

fn read_header(bytes: &[u8]) -> Option<Header> {
    let h = bytes.get(..BLOCK_HEADER)?;
    if h[..2] != BLOCK_MAGIC {
        return None;
    }
    let field = |i: usize| u32::from_le_bytes(h[2 + 4 * i..6 + 4 * i].try_into().expect("4"));
    if crc32fast::hash(&h[..BLOCK_HEADER - 4]) != field(5) {
        return None;
    }
    let header = Header {
        raw_start: field(0) as usize,
        raw_len: field(1) as usize,
        packed_len: field(2) as usize,
        points: field(3),
        crc: field(4),
    };
    let fits = header.packed_len <= bytes.len() - BLOCK_HEADER
        && header.raw_start >= FILE_MAGIC.len()
        && header
            .raw_start
            .checked_add(header.raw_len)
            .is_some_and(|end| end <= MAX_END);
    fits.then_some(header)
}

/// Reads a packed file's block headers only (fast at start-up): where its
/// records end, their points, and how much of it is no block.
pub(super) fn summarize(packed: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let mut covered = PACKED_MAGIC.len() as u64;
    for (start, header) in blocks(packed) {
        summary.end = summary.end.max((header.raw_start + header.raw_len) as u64);
        summary.points += u64::from(header.points);
        covered += (BLOCK_HEADER + header.packed_len) as u64;
        let _ = start;
    }
    summary.unreadable = (packed.len() as u64).saturating_sub(covered);
    summary
}

/// Whether `packed` unpacks, block by block, to exactly the bytes of `raw`
/// each block says it holds, with the points `raw` has.
pub(super) fn verify(packed: &[u8], raw: &[u8], seed: u64, points: u64) -> bool {
    let mut found = 0u64;
    for (start, header) in blocks(packed) {
        let Some(want) = raw.get(header.raw_start..header.raw_start + header.raw_len) else {
            return false;
        };
        match unpack_block(
            &packed[start..start + header.packed_len],
            seed,
            header.raw_len,
        ) {
            Some(got) if got == want && crc32fast::hash(&got) == header.crc => {
                found += u64::from(header.points);
            }
            _ => return false,
        }
    }
    found == points
}

/// The segment's bytes rebuilt, `end` long: the file magic, then each
/// block's records where they were; a block that does not inflate or
/// check is zeros (which a reader takes for damage and skips).
pub(super) fn unpack(packed: &[u8], seed: u64, end: u64) -> Vec<u8> {
    let mut raw = vec![0; end as usize];
    let magic = FILE_MAGIC.len().min(raw.len());
    raw[..magic].copy_from_slice(&super::FILE_MAGIC_V2[..magic]);
    for (start, header) in blocks(packed) {
        let Some(slot) = raw.get_mut(header.raw_start..header.raw_start + header.raw_len) else {
            continue;
        };
        let bytes = &packed[start..start + header.packed_len];
        match unpack_block(bytes, seed, header.raw_len) {
            Some(records) if crc32fast::hash(&records) == header.crc => {
                slot.copy_from_slice(&records)
            }
            _ => log::debug!("a packed block at {start} does not check"),
        }
    }
    raw
}

/// A block's records rebuilt, if it inflates to whole records of exactly
/// `raw_len` bytes.
fn unpack_block(bytes: &[u8], seed: u64, raw_len: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut compact = Vec::with_capacity(raw_len);
    flate2::read::DeflateDecoder::new(bytes)
        .take(2 * raw_len as u64 + 64)
        .read_to_end(&mut compact)
        .ok()?;
    let mut out = Vec::with_capacity(raw_len);
    let mut previous = 0i64;
    let mut at = 0;
    while at < compact.len() {
        let kind = compact[at];
        at += 1;
        let points = read_varint(&compact, &mut at)?;
        let len = read_varint(&compact, &mut at)? as usize;
        let body = compact.get(at..at.checked_add(len)?)?;
        at += len;
        let timed = kind & 1 == 1;
        let (stamping, lines) = body.split_at_checked(if timed { STAMPING } else { 0 })?;
        let lines = if kind & DELTAS != 0 {
            from_deltas(lines, &mut previous)?
        } else {
            lines.to_vec()
        };
        let kind = if timed {
            Kind::Timed(read_stamping(stamping))
        } else {
            Kind::Plain
        };
        out.extend_from_slice(&encode_record(kind, &lines, points, Some(seed)));
        if out.len() > raw_len {
            return None;
        }
    }
    (out.len() == raw_len).then_some(out)
}

/// Writes `lines` with each timestamp (a line's last word, a canonical
/// integer) as its difference to the previous one, after [`DELTA`]: the
/// low digits of receipt stamps are what does not compress.
fn to_deltas(lines: &[u8], previous: &mut i64, out: &mut Vec<u8>) {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let (body, newline) = match line.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (line, false),
        };
        let stamp = body
            .iter()
            .rposition(|&b| b == b' ')
            .and_then(|space| Some((space, canonical(&body[space + 1..])?)));
        match stamp {
            Some((space, t)) => {
                out.extend_from_slice(&body[..=space]);
                out.push(DELTA);
                out.extend_from_slice(t.wrapping_sub(*previous).to_string().as_bytes());
                *previous = t;
            }
            None => out.extend_from_slice(body),
        }
        if newline {
            out.push(b'\n');
        }
    }
}

/// The inverse of [`to_deltas`]; None if a difference is no integer.
fn from_deltas(lines: &[u8], previous: &mut i64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(lines.len() + lines.len() / 4);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let (body, newline) = match line.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (line, false),
        };
        match body.iter().rposition(|&b| b == DELTA) {
            Some(mark) => {
                let delta: i64 = std::str::from_utf8(&body[mark + 1..]).ok()?.parse().ok()?;
                let t = previous.wrapping_add(delta);
                *previous = t;
                out.extend_from_slice(&body[..mark]);
                out.extend_from_slice(t.to_string().as_bytes());
            }
            None => out.extend_from_slice(body),
        }
        if newline {
            out.push(b'\n');
        }
    }
    Some(out)
}

/// The integer `word` writes, if it is written the one way Rust prints it
/// (no sign but `-`, no leading zero), so that printing it gives it back.
fn canonical(word: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(word).ok()?;
    let value: i64 = text.parse().ok()?;
    (value.to_string() == text).then_some(value)
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{BootId, Stamping};

    fn segment(seed: u64, records: &[(Kind, &[u8], u64)]) -> Vec<u8> {
        let mut raw = super::super::FILE_MAGIC_V2.to_vec();
        for (kind, lines, points) in records {
            raw.extend(encode_record(*kind, lines, *points, Some(seed)));
        }
        raw
    }

    #[test]
    fn a_packed_segment_unpacks_to_the_same_bytes() {
        let stamping = Stamping {
            boot: BootId([7; 16]),
            wall_minus_boot_ns: -5,
        };
        let mut records: Vec<(Kind, Vec<u8>, u64)> = Vec::new();
        for i in 0..5000u64 {
            let t = 1_733_400_000_000_000_000u64 + i * 10_000_123;
            let lines = format!(
                "env,site=a,id=t{} temp={}.{},hum=4{} {t}\n",
                i % 20,
                20 + i % 3,
                i % 97,
                i % 10
            );
            let kind = if i % 7 == 0 {
                Kind::Timed(stamping)
            } else {
                Kind::Plain
            };
            records.push((kind, lines.into_bytes(), 1));
        }
        // Forms the differences must keep: no timestamp, a sign, leading
        // zeros, a word that only looks like one, the marker byte, a last
        // line without its newline, padding.
        for odd in [
            &b"m v=1\n"[..],
            b"m v=1 -5\n",
            b"m v=1 007\n",
            b"m v=1 +5\n",
            b"m v=1 -0\n",
            b"m v=1 9223372036854775807\nm v=2 -9223372036854775808\n",
            b"m s=\"a \x01 b\" 12\n",
            b"m v=1 5",
            b"",
        ] {
            records.push((Kind::Plain, odd.to_vec(), 1));
        }
        let seed = 42;
        let borrowed: Vec<(Kind, &[u8], u64)> =
            records.iter().map(|(k, l, p)| (*k, &l[..], *p)).collect();
        let raw = segment(seed, &borrowed);
        let packed = pack(&raw, seed).unwrap();
        assert_eq!(packed.points, records.len() as u64);
        assert!(
            packed.bytes.len() * 4 < raw.len(),
            "{} of {}",
            packed.bytes.len(),
            raw.len()
        );
        let summary = summarize(&packed.bytes);
        assert_eq!(
            summary,
            Summary {
                end: raw.len() as u64,
                points: records.len() as u64,
                unreadable: 0
            }
        );
        assert!(unpack(&packed.bytes, seed, summary.end) == raw);
    }

    #[test]
    fn damage_costs_one_block_and_is_zeros() {
        let seed = 3;
        let lines: Vec<Vec<u8>> = (0..20_000u64)
            .map(|i| {
                format!(
                    "m,t=a v={i}i {}\n",
                    1_700_000_000_000_000_000u64 + i * 999_983
                )
                .into_bytes()
            })
            .collect();
        let records: Vec<(Kind, &[u8], u64)> =
            lines.iter().map(|l| (Kind::Plain, &l[..], 1)).collect();
        let raw = segment(seed, &records);
        let mut packed = pack(&raw, seed).unwrap().bytes;
        let headers: Vec<(usize, usize, usize)> = blocks(&packed)
            .map(|(start, h)| (start, h.raw_start, h.raw_len))
            .collect();
        assert!(headers.len() >= 4, "{}", headers.len());
        // A flip in the second block's data, one in the third's header.
        let (start, raw_start, raw_len) = headers[1];
        packed[start + 10] ^= 0x20;
        packed[headers[2].0 - 5] ^= 0x01;
        let summary = summarize(&packed);
        assert_eq!(summary.end, raw.len() as u64);
        let image = unpack(&packed, seed, summary.end);
        let lost = raw_start..raw_start + raw_len;
        assert!(image[lost.clone()].iter().all(|&b| b == 0));
        let third = headers[2].1..headers[2].1 + headers[2].2;
        assert!(image[third.clone()].iter().all(|&b| b == 0));
        for (i, (a, b)) in image.iter().zip(&raw).enumerate() {
            if !lost.contains(&i) && !third.contains(&i) {
                assert_eq!(a, b, "byte {i}");
            }
        }
    }

    /// Headers that check but lie (a forged or very unlucky flip): no
    /// panic, no allocation beyond the cap, and nothing made up.
    #[test]
    fn lying_headers_are_damage() {
        let header = |raw_start: u32, raw_len: u32, packed_len: u32| {
            let mut h = BLOCK_MAGIC.to_vec();
            for f in [raw_start, raw_len, packed_len, 7, 0] {
                h.extend_from_slice(&f.to_le_bytes());
            }
            let crc = crc32fast::hash(&h);
            h.extend_from_slice(&crc.to_le_bytes());
            h
        };
        for (raw_start, raw_len, packed_len) in [
            (u32::MAX, u32::MAX, 4),
            (8, u32::MAX, 4),
            (0, 10, 4),
            (8, 10, u32::MAX),
            (8, 10, 4),
        ] {
            let mut file = PACKED_MAGIC.to_vec();
            file.extend(header(raw_start, raw_len, packed_len));
            file.extend_from_slice(&[0xff, 0, 1, 2]);
            let summary = summarize(&file);
            assert!(summary.end as usize <= MAX_END);
            let image = unpack(&file, 1, summary.end);
            assert!(
                image[FILE_MAGIC.len().min(image.len())..]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        // Garbage after the magic.
        let mut file = PACKED_MAGIC.to_vec();
        file.extend((0..5000u32).map(|i| (i * 7919 % 251) as u8));
        let summary = summarize(&file);
        assert_eq!((summary.end, summary.points), (0, 0));
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            let mut at = 0;
            assert_eq!(read_varint(&out, &mut at), Some(v));
            assert_eq!(at, out.len());
        }
    }
}
