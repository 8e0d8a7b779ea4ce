//! Spool recovery from arbitrary segment bytes, through the public API of
//! `leasegate::agent::store::spool` (open, read, release, append, commit).
//!
//! Input: a mode byte, then the rest. Mode bit 0 clear: the rest is the
//! bytes of a segment file as they are. Set: the rest describes records
//! (each a length byte, a points byte and that many payload bytes) that
//! the target writes in the spool's format, then damages one way (byte 1:
//! none, flip a byte, cut the tail, insert junk; bytes 2-3: where; byte 4:
//! the flip), so it knows which records must survive. Bit 1 adds a second,
//! intact segment after the first.
//!
//! Properties: opening never fails or panics on any bytes (damage is
//! reported, not fatal); reading drains in a bounded number of reads and
//! delivers exactly the points recovery counted; for described records,
//! exactly the undamaged ones come back, in order (records of zero points
//! are padding, whose payloads never come back; a record counts as
//! undamaged when its bytes are whole where the reader meets them; when the
//! damage itself forms a valid record, this check is skipped); the spool
//! still takes, commits and returns a new record afterwards, and a restart
//! after everything was released finds nothing to send again.

#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use leasegate::agent::store::spool::{FsyncPolicy, Overflow, SizeOrPercent, Spool, SpoolConfig};
use libfuzzer_sys::fuzz_target;

mod common;

const FILE_MAGIC: &[u8; 8] = b"LGSPOOL1";

fuzz_target!(|data: &[u8]| common::timed(data, check));

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("leasegate-fuzz-spool-{}", std::process::id()))
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// One record in the spool's format.
fn record(out: &mut Vec<u8>, payload: &[u8], points: u32) {
    let mut h = crc32fast::Hasher::new();
    h.update(&points.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(b"LG");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&points.to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the target knows must come back: payloads concatenated, and points.
struct Expected {
    data: Vec<u8>,
    points: u64,
}

fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (segment, expected) = if mode & 1 == 0 {
        (rest.to_vec(), None)
    } else {
        described(rest)
    };
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join(segment_name(1)), &segment).expect("segment");
    let second = mode & 2 != 0;
    if second {
        let mut seg = FILE_MAGIC.to_vec();
        record(&mut seg, b"second segment\n", 1);
        std::fs::write(dir.join(segment_name(2)), &seg).expect("segment");
    }

    // A small budget keeps the segments the spool writes whole before use
    // small (an eighth of it): writing 4 MiB of zeros per input would slow
    // the target forty-fold.
    let config = SpoolConfig {
        dir: dir.clone(),
        max_bytes: 256 << 10,
        fsync: FsyncPolicy::Never,
        overflow: Overflow::Block,
        min_free: SizeOrPercent::Bytes(0),
    };
    let (spool, recovery) = Spool::open(config.clone())
        .unwrap_or_else(|e| panic!("open failed on {} segment bytes: {e}", segment.len()));
    for d in &recovery.damage {
        let _ = d.to_string();
    }

    let (got, got_points) = drain(&spool);
    assert_eq!(
        got_points, recovery.points,
        "read {got_points} points, recovery counted {}",
        recovery.points
    );
    if let Some(mut e) = expected {
        if second {
            e.data.extend_from_slice(b"second segment\n");
            e.points += 1;
        }
        assert_eq!(e.points, got_points, "points of the undamaged records");
        assert!(
            e.data == got,
            "undamaged records did not come back as written:\n  expected {:?}\n  got      {:?}",
            String::from_utf8_lossy(&e.data),
            String::from_utf8_lossy(&got)
        );
    }
    let _ = spool.take_damage();

    // The spool still works: a new record goes in and comes back.
    spool.append(b"m v=1i\n", 1).expect("append after recovery");
    spool.commit().expect("commit after recovery");
    let (after, points) = drain(&spool);
    assert_eq!((after.as_slice(), points), (&b"m v=1i\n"[..], 1));
    assert_eq!(spool.stats().points_unread, 0);
    drop(spool);

    // And a restart after all was released finds nothing left to send.
    let (spool, recovery) = Spool::open(config).expect("reopen");
    assert_eq!(
        recovery.points, 0,
        "released records came back after a restart"
    );
    let (left, _) = drain(&spool);
    assert!(left.is_empty());
}

/// Reads and releases everything readable, in small batches.
fn drain(spool: &Spool) -> (Vec<u8>, u64) {
    let mut data = Vec::new();
    let mut points = 0;
    for _ in 0..100_000 {
        let batch = spool
            .read(50, 512, Duration::ZERO)
            .unwrap_or_else(|e| panic!("read failed: {e}"));
        if batch.records == 0 {
            assert!(batch.data.is_empty() && batch.points == 0);
            spool.release(&batch).expect("release");
            return (data, points);
        }
        data.extend_from_slice(&batch.data);
        points += batch.points;
        spool.release(&batch).expect("release");
    }
    panic!("the spool did not drain in 100000 reads");
}

/// A valid record at the start of `buf`: its length and points.
fn valid_record(buf: &[u8]) -> Option<(usize, u32)> {
    if buf.len() < 14 || &buf[..2] != b"LG" {
        return None;
    }
    let len = u32::from_le_bytes(buf[2..6].try_into().unwrap()) as usize;
    let points = u32::from_le_bytes(buf[6..10].try_into().unwrap());
    let crc = u32::from_le_bytes(buf[10..14].try_into().unwrap());
    let payload = buf.get(14..14 + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&points.to_le_bytes());
    h.update(payload);
    (h.finalize() == crc).then_some((14 + len, points))
}

/// Builds a segment from a record description and damages it; returns the
/// bytes and, unless the damage happens to contain a valid record of its
/// own (which the spool rightly delivers), what must come back: every
/// record whose bytes are still whole where the reader meets them.
fn described(rest: &[u8]) -> (Vec<u8>, Option<Expected>) {
    let header = |i: usize| rest.get(i).copied().unwrap_or(0);
    let damage = header(0) % 4;
    let at = u16::from_le_bytes([header(1), header(2)]) as usize;
    let flip = header(3) | 1;
    let mut body = rest.get(4..).unwrap_or_default();

    let mut seg = FILE_MAGIC.to_vec();
    // (start, end, payload, points) of each record.
    let mut records = Vec::new();
    while let Some((&len, tail)) = body.split_first() {
        let points = tail.first().copied().unwrap_or(0);
        let tail = tail.get(1..).unwrap_or_default();
        let n = (len as usize).min(tail.len());
        // No record magic inside a payload.
        let payload: Vec<u8> = tail[..n]
            .iter()
            .map(|&b| if b == b'L' { b'l' } else { b })
            .collect();
        body = &tail[n..];
        let start = seg.len();
        record(&mut seg, &payload, u32::from(points));
        records.push((start, seg.len(), payload, u64::from(points)));
    }
    let original = seg.clone();
    let len = seg.len();
    // Inserted junk moves the records after it.
    let mut insert_at = usize::MAX;
    match damage {
        1 => {
            let p = at % len;
            seg[p] ^= flip;
        }
        2 => {
            let p = FILE_MAGIC.len() + at % (len - FILE_MAGIC.len() + 1);
            seg.truncate(p);
        }
        3 => {
            let p = FILE_MAGIC.len() + at % (len - FILE_MAGIC.len() + 1);
            let junk: Vec<u8> = [flip & !0x40 | 0x80, 0x00, 0xff, flip]
                .iter()
                .map(|&b| if b == b'L' { 0 } else { b })
                .collect();
            seg.splice(p..p, junk);
            insert_at = p;
        }
        _ => {}
    }
    let start_of = |s: usize| if s >= insert_at { s + 4 } else { s };
    let foreign = &seg[..FILE_MAGIC.len().min(seg.len())] != FILE_MAGIC;
    let mut expected = Expected {
        data: Vec::new(),
        points: 0,
    };
    let mut starts = Vec::new();
    for (s, e, payload, points) in &records {
        let at = start_of(*s);
        let whole = seg.get(at..at + (e - s)) == Some(&original[*s..*e]);
        if whole && !foreign {
            // A record of no points is padding: its payload is not data.
            if *points > 0 {
                expected.data.extend_from_slice(payload);
            }
            expected.points += points;
            starts.push(at);
        }
    }
    // A valid record anywhere else (made by the damage) is one the reader
    // may take; then only the weaker checks hold.
    let false_record = (FILE_MAGIC.len()..seg.len())
        .any(|i| !starts.contains(&i) && valid_record(&seg[i..]).is_some());
    (seg, (!false_record).then_some(expected))
}
