//! The spool's unit tests: the format, recovery, the budget and the cursor
//! on real files in temporary directories.

use super::*;

fn config(dir: &Path, max_bytes: u64, overflow: Overflow) -> SpoolConfig {
    SpoolConfig {
        dir: dir.join("spool"),
        max_bytes,
        fsync: FsyncPolicy::Batch,
        overflow,
        min_free: SizeOrPercent::Bytes(0),
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
    let end = FILE_MAGIC.len() + 2 * (HEADER + STAMPING + 8);
    tear(&seg, end);
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.points, 1);
    // A preallocated segment: the torn record is unused space, as
    // nothing in it was acked.
    assert_eq!(rec.damage, vec![]);
    let batch = spool.read(10, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(batch.data, b"a v=1 1\n");
    assert_eq!(batch.timed.len(), 1);
}

/// Bit rot in the last record of a preallocated segment, before the
/// zeros that were never written: it held acked points, so losing
/// them must be said, not taken for the unused rest of the file.
#[test]
fn rot_in_the_last_record_of_a_preallocated_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 4 KiB: the 300-byte records fill several.
    let cfg = || config(dir.path(), 32 << 10, Overflow::Block);
    {
        let (spool, _) = Spool::open(cfg()).unwrap();
        for _ in 0..40 {
            spool.append(&[b'x'; 300], 1).unwrap();
        }
        spool.commit().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let oldest = fs::read(&files[0]).unwrap();
    let last_x = oldest.iter().rposition(|&b| b == b'x').unwrap();
    let mut rotten = oldest.clone();
    rotten[last_x] ^= 0x41;
    fs::write(&files[0], &rotten).unwrap();
    let (_spool, rec) = Spool::open(cfg()).unwrap();
    assert_eq!(rec.points, 39);
    assert!(
        matches!(rec.damage.as_slice(), [Damage { kind: DamageKind::Corrupt { .. }, segment, .. }] if *segment == files[0]),
        "{:?}",
        rec.damage
    );
}

/// A spare keeps the records of its former life after the end of its
/// new ones: they are not damage, in the segment taking appends or in
/// one sealed full.
#[test]
fn a_recycled_spare_s_old_records_are_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), 256 << 10, Overflow::Block);
    let (spool, _) = Spool::open(cfg()).unwrap();
    for i in 0..2000 {
        spool.append(&line(i), 1).unwrap();
    }
    spool.commit().unwrap();
    assert_eq!(drain(&spool).len(), 2000);
    assert_eq!(spare_files(dir.path()).len(), 1);
    // Longer records, so that the new ones end between the old ones.
    for _ in 0..150 {
        spool.append(&[b'y'; 497], 1).unwrap();
    }
    spool.commit().unwrap();
    drop(spool);
    assert!(segment_files(dir.path()).len() >= 3);
    let (_spool, rec) = Spool::open(cfg()).unwrap();
    assert_eq!((rec.points, rec.damage), (150, vec![]));
}

#[test]
fn a_flipped_kind_or_stamping_is_damage_not_a_wrong_correction() {
    let stamping = Stamping {
        boot: BootId([5; 16]),
        wall_minus_boot_ns: 7,
    };
    let timed = encode_record(Kind::Timed(stamping), b"b v=1 2\n", 1, None);
    assert!(matches!(
        parse_record(&timed, None),
        Parsed::Record {
            stamping: Some(s),
            ..
        } if s == stamping
    ));
    let mut plain = timed.clone();
    plain[1] = b'G';
    assert!(matches!(parse_record(&plain, None), Parsed::Invalid));
    let mut moved = timed.clone();
    moved[HEADER + 17] ^= 1;
    assert!(matches!(parse_record(&moved, None), Parsed::Invalid));
    // Too short to hold a stamping, however its checksum came out.
    let short = encode_record(Kind::Plain, b"12345", 1, None);
    let mut short_timed = short.clone();
    short_timed[1] = b'T';
    let crc = checksum(TIMED_MAGIC, 1, &short[HEADER..], None);
    short_timed[10..14].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(parse_record(&short_timed, None), Parsed::Invalid));
    // A reader finds a timed record after garbage.
    let mut buf = b"xxLTgarbage".to_vec();
    buf.extend_from_slice(&timed);
    assert_eq!(resync(&buf, None), 11);
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
pub(super) fn drain(spool: &Spool) -> Vec<u64> {
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

/// The files of the spool in `dir` whose names end in `ending`, in order.
pub(super) fn files_ending(dir: &Path, ending: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ending))
        .collect();
    v.sort();
    v
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_ending(dir, ".seg")
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
    // Caught up: the read segments are gone but for one kept as the
    // spare; the one taking appends lives on.
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(spare_files(dir.path()).len(), 1);
    assert_eq!(spool.stats().points_unread, 0);
    // Nothing waits, though the segment lives on.
    assert_eq!(spool.stats().bytes, 0);
    // The next segment is the spare, renamed: no new file.
    let spare = spare_files(dir.path()).pop().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&spare).unwrap());
    for i in 0..2000 {
        spool.append(&line(i), 1).unwrap();
    }
    spool.commit().unwrap();
    let inos: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|p| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap()))
        .collect();
    assert!(inos.contains(&ino), "the spare was not used");
}

#[test]
fn a_read_that_fails_part_way_hands_out_what_it_read_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
    for i in 0..2000 {
        spool.append(&line(i), 1).unwrap();
    }
    spool.commit().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() > 2, "expected rotation");
    // The second segment cannot be read (its file is away): a read
    // across it returns the first segment's records, not an error
    // that would lose them after the cursor moved.
    let away = dir.path().join("away");
    fs::rename(&files[1], &away).unwrap();
    let first = spool.read(u64::MAX, usize::MAX, Duration::ZERO).unwrap();
    assert!(first.points > 0);
    assert!(spool.read(u64::MAX, usize::MAX, Duration::ZERO).is_err());
    fs::rename(&away, &files[1]).unwrap();
    let text = String::from_utf8(first.data.clone()).unwrap();
    let mut seqs: Vec<u64> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    spool.release(&first).unwrap();
    seqs.extend(drain(&spool));
    assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
}

#[test]
fn a_segment_cut_short_before_its_first_record_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    // A full disk at the create, or a power cut right after it.
    fs::write(segment_path(&spool_dir, 3), b"").unwrap();
    fs::write(segment_path(&spool_dir, 4), &FILE_MAGIC[..5]).unwrap();
    let (spool, rec) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
    assert_eq!(rec.damage, vec![]);
    assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());
    // The ids stay used: the next segment comes after them.
    spool.append(&line(1), 1).unwrap();
    spool.commit().unwrap();
    assert_eq!(segment_files(dir.path()), vec![segment_path(&spool_dir, 5)]);
    // Anything else that short is not ours, and is moved aside.
    drop(spool);
    fs::write(segment_path(&spool_dir, 9), b"LGX").unwrap();
    let (_, rec) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
    assert!(matches!(
        rec.damage[..],
        [Damage {
            kind: DamageKind::NotASegment { .. },
            ..
        }]
    ));
}

#[test]
fn a_segment_that_cannot_be_started_uses_up_no_id_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
    // The directory taken away: every start fails, as on a read-only
    // or full disk, retried as the appender retries.
    let spool_dir = dir.path().join("spool");
    fs::remove_dir(&spool_dir).unwrap();
    for _ in 0..5 {
        let failed = spool.append(&line(1), 1);
        assert!(matches!(failed, Err(SpoolError::Io { .. })), "{failed:?}");
        assert!(spool.stats().fault.is_some());
    }
    fs::create_dir(&spool_dir).unwrap();
    spool.append(&line(1), 1).unwrap();
    spool.commit().unwrap();
    assert_eq!(segment_files(dir.path()), vec![segment_path(&spool_dir, 1)]);
    assert_eq!(spool.stats().fault, None);
}

#[test]
fn a_commit_between_failed_appends_does_not_clear_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), 256 << 10, Overflow::Block)).unwrap();
    let spool_dir = dir.path().join("spool");
    fs::remove_dir(&spool_dir).unwrap();
    assert!(spool.append(&line(1), 1).is_err());
    let since = spool.stats().fault.unwrap().since_ms;
    // The appender commits what it could append before each retry.
    spool.commit().unwrap();
    assert!(spool.append(&line(1), 1).is_err());
    let fault = spool.stats().fault.expect("still failing");
    assert_eq!(fault.since_ms, since);
    assert!(fault.error.contains("spool I/O on"), "{}", fault.error);
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
    let t = std::thread::spawn(move || s2.read(10, 1000, Duration::from_secs(20)).unwrap().records);
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
fn a_record_torn_in_a_preallocated_segment_costs_only_itself_and_is_written_over() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        for i in 0..100 {
            spool.append(&line(i), 1).unwrap();
        }
        spool.commit().unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let end = FILE_MAGIC.len() + (0..100).map(|i| HEADER + line(i).len()).sum::<usize>();
    tear(&seg, end);
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.damage, vec![]);
    assert_eq!(rec.points, 99);
    assert_eq!(drain(&spool), (0..99).collect::<Vec<_>>());
    // The segment goes on where its last good record ends.
    spool.append(&line(500), 1).unwrap();
    spool.commit().unwrap();
    assert_eq!(segment_files(dir.path()), vec![seg]);
    drop(spool);
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.damage, vec![]);
    assert_eq!(drain(&spool), vec![500]);
}

#[test]
fn a_restart_reads_on_from_what_influxdb_accepted_not_from_the_segments_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
        for i in 0..100 {
            spool.append(&line(i), 1).unwrap();
        }
        spool.commit().unwrap();
        let batch = spool.read(40, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(batch.points, 40);
        spool.release(&batch).unwrap();
        // Read and not accepted: comes again after the restart.
        let _unwritten = spool.read(10, 1 << 20, Duration::ZERO).unwrap();
    }
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.points, 60);
    assert_eq!(spool.stats().points_unread, 60);
    assert_eq!(drain(&spool), (40..100).collect::<Vec<_>>());
}

#[test]
fn a_saved_cursor_deletes_segments_whose_deletion_a_crash_lost() {
    let dir = tempfile::tempdir().unwrap();
    let old = first_format_segment(dir.path(), 1, 0..5);
    first_format_segment(dir.path(), 2, 5..10);
    // Everything before segment 2 was accepted.
    let spool_dir = dir.path().join("spool");
    write_cursor(
        &spool_dir,
        Position {
            segment: 2,
            offset: FILE_MAGIC.len() as u64,
        },
        false,
    )
    .unwrap();
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.points, 5);
    assert!(!old.exists());
    assert_eq!(drain(&spool), (5..10).collect::<Vec<_>>());
    // A cursor that is not at a record is not followed.
    drop(spool);
    first_format_segment(dir.path(), 7, 0..3);
    write_cursor(
        &spool_dir,
        Position {
            segment: 7,
            offset: 11,
        },
        false,
    )
    .unwrap();
    let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(drain(&spool), vec![0, 1, 2]);
}

#[test]
fn segments_of_the_first_format_are_read_and_new_records_go_to_a_preallocated_one() {
    let dir = tempfile::tempdir().unwrap();
    first_format_segment(dir.path(), 3, 0..10);
    let (spool, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!((rec.points, rec.damage.len()), (10, 0));
    spool.append(&line(10), 1).unwrap();
    spool.commit().unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    let new = fs::read(&files[1]).unwrap();
    assert!(new.starts_with(FILE_MAGIC_V2));
    assert_eq!(new.len() as u64, spool.segment_bytes);
    assert_eq!(drain(&spool), (0..11).collect::<Vec<_>>());
}

/// Zeros the last 5 bytes before `end` of a segment file, as a write
/// cut short by a power cut leaves a preallocated segment.
fn tear(seg: &Path, end: usize) {
    use std::os::unix::fs::FileExt as _;
    let file = OpenOptions::new().write(true).open(seg).unwrap();
    file.write_all_at(&[0; 5], end as u64 - 5).unwrap();
}

fn spare_files(dir: &Path) -> Vec<PathBuf> {
    files_ending(dir, SPARE)
}

/// A segment of the first format (before preallocation), as an older
/// version left it.
fn first_format_segment(dir: &Path, id: u64, lines: impl Iterator<Item = u64>) -> PathBuf {
    let spool_dir = dir.join("spool");
    fs::create_dir_all(&spool_dir).unwrap();
    let mut bytes = FILE_MAGIC.to_vec();
    for i in lines {
        bytes.extend(encode_record(Kind::Plain, &line(i), 1, None));
    }
    let path = segment_path(&spool_dir, id);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_torn_tail_is_reported_and_everything_before_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let seg = first_format_segment(dir.path(), 1, 0..100);
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    // Under fsync = batch the cut record was never acked: not damage.
    let (_, rec) = Spool::open(config(dir.path(), 1 << 20, Overflow::Block)).unwrap();
    assert_eq!(rec.damage, vec![]);
    assert_eq!(rec.points, 99);
    // Under an interval it may have been: damage, reported.
    let (spool, rec) = Spool::open(SpoolConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        ..config(dir.path(), 1 << 20, Overflow::Block)
    })
    .unwrap();
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
    let full = loop {
        match spool.append(&line(stored), 1) {
            Ok(Appended::Stored) => stored += 1,
            Err(e @ SpoolError::Full(_)) => break e,
            other => panic!("{other:?}"),
        }
        assert!(stored < 10_000, "never filled");
    };
    assert_eq!(
        full.to_string(),
        "spool is full: it holds spool.max_bytes (16384 bytes) and spool.overflow is \"block\""
    );
    spool.commit().unwrap();
    // Until there is room, status says why nothing is acked.
    assert_eq!(spool.stats().fault.unwrap().error, full.to_string());
    assert_eq!(spool.stats().dropped_points, 0);
    let batch = spool.read(u64::MAX, usize::MAX, Duration::ZERO).unwrap();
    spool.release(&batch).unwrap();
    assert_eq!(spool.append(&line(stored), 1).unwrap(), Appended::Stored);
    spool.commit().unwrap();
    assert_eq!(spool.stats().fault, None);
}

/// A filesystem whose free space is all `min_free` keeps: even an empty
/// spool under `drop_oldest` has nothing to drop, and the error names the
/// floor, not a failing disk.
#[test]
fn no_room_under_the_floor_names_min_free() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1 << 20, Overflow::DropOldest);
    config.min_free = SizeOrPercent::Bytes(u64::MAX / 2);
    let (spool, _) = Spool::open(config).unwrap();
    let Err(SpoolError::Full(no_room)) = spool.append(&line(0), 1) else {
        panic!("stored above the floor");
    };
    let (_, kept) = no_room.floor.expect("the floor set the budget");
    assert_eq!((no_room.budget, kept), (0, u64::MAX / 2));
    let text = no_room.to_string();
    assert!(
        text.contains("spool.min_free keeps") && text.ends_with("with nothing older to drop"),
        "{text}"
    );
    assert!(spool.stats().fault.is_some());
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
    r.extend_from_slice(&checksum(RECORD_MAGIC, points, payload, None).to_le_bytes());
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
        let started = Instant::now();
        let skip = resync(buf, None);
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
        took <= base * 50 + Duration::from_millis(500),
        "{took:?} against {base:?}"
    );
}

/// The first record of the segment after one that `fill` filled: whether
/// that new file was written full of zeros first (its length is the
/// segment size) or grows with its records.
fn next_segment_is_zero_filled(fill: impl Fn(&Spool)) -> bool {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 1 MiB.
    let (spool, _) = Spool::open(config(dir.path(), 8 << 20, Overflow::Block)).unwrap();
    assert_eq!(spool.segment_bytes, 1 << 20);
    fill(&spool);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(spool.stats().points_unread, 300);
    let len = fs::metadata(&files[1]).unwrap().len();
    assert!(len <= spool.segment_bytes);
    len == spool.segment_bytes
}

/// A segment filled in few syncs (a backlog drained, a fast stream) makes
/// the next new file grow with its records: its zeros would cost the card
/// more than the journal writes of so few syncs, and an append would wait
/// for them. One filled in many syncs (a slow stream, a commit a group)
/// keeps its zeros.
#[test]
fn the_next_new_segment_grows_only_after_one_filled_in_few_syncs() {
    let record = vec![b'x'; 4000];
    // About 105 KiB a commit: ten syncs for the first segment.
    let fast = |spool: &Spool| {
        for i in 0..300 {
            spool.append(&record, 1).unwrap();
            if i % 27 == 26 {
                spool.commit().unwrap();
            }
        }
        spool.commit().unwrap();
    };
    assert!(!next_segment_is_zero_filled(fast));
    // A sync per 4 KiB record: 262 syncs, 2 MiB of journal writes for a
    // file of 1 MiB.
    let slow = |spool: &Spool| {
        for _ in 0..300 {
            spool.append(&record, 1).unwrap();
            spool.commit().unwrap();
        }
    };
    assert!(next_segment_is_zero_filled(slow));
}
