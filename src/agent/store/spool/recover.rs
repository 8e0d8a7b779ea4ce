//! What a start finds on disk: each segment scanned, its damage reported
//! and skipped, a torn tail cut and the end marked, so that the spool
//! resumes after the last whole record. It must never stop on a damaged
//! file, and never count a point twice or not at all.

use super::*;

/// Scans the segments `ids` of `dir`, oldest first.
pub(super) fn recover(
    dir: &Path,
    ids: &[u64],
    packed: &[u64],
) -> Result<(VecDeque<Segment>, Recovery), SpoolError> {
    let mut recovery = Recovery::default();
    let mut segments = VecDeque::new();
    for (i, id) in ids.iter().enumerate() {
        if packed.contains(id) {
            let (segment, damage) = packer::recover_packed(&packer::packed_path(dir, *id), *id)?;
            recovery.damage.extend(damage);
            if let Some(segment) = segment {
                recovery.points += segment.unread_points;
                recovery.bytes += segment.stored();
                segments.push_back(segment);
            }
            continue;
        }
        let path = segment_path(dir, *id);
        let newest = i + 1 == ids.len();
        match scan_segment(&path, *id, newest)? {
            Scan::Valid {
                end,
                points,
                damage,
                seed,
                len,
                marked,
            } => {
                if newest && !marked && seed.is_some() {
                    mark_end(&path, end);
                }
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
                    seed,
                    capacity: if seed.is_some() { len } else { end },
                    grows: len <= end,
                    fill: Fill::at(end),
                    packed: None,
                });
            }
            Scan::Unstarted => {
                log::info!(
                    "removing {}: a segment file whose start was cut short, with no record in it",
                    path.display()
                );
                remove(&path)?;
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
    Ok((segments, recovery))
}

/// Zeros a record header's worth after the newest segment's last valid
/// record (a write cut short, or a spare's former records): once a newer
/// segment exists, only zeros there tell its end from damage. A failure
/// costs at most a false report of damage at a later start.
pub(super) fn mark_end(path: &Path, end: u64) {
    use std::os::unix::fs::FileExt as _;
    let marked = OpenOptions::new().write(true).open(path).and_then(|file| {
        let len = file.metadata()?.len();
        let n = (len.saturating_sub(end)).min(HEADER as u64) as usize;
        file.write_all_at(&[0; HEADER][..n], end)?;
        file.sync_data()
    });
    if let Err(e) = marked {
        log::warn!("cannot mark the end of {}: {e}", path.display());
    }
}

/// Takes a torn record at the very end of the newest segment out of the
/// damage and says it plainly: under `fsync = "batch"` nothing is acked
/// before it is synced, so a record cut short by a power cut or a kill was
/// never acknowledged, and the broker has it still.
pub(super) fn excuse_cut_tail(recovery: &mut Recovery, newest: Option<&Path>) {
    let Some(last) = recovery.damage.last() else {
        return;
    };
    if let DamageKind::TornTail { bytes } = last.kind
        && Some(last.segment.as_path()) == newest
    {
        log::info!(
            "{}: the last write before the stop was cut short ({bytes} bytes at byte {}); it was never acknowledged (fsync = batch), so the broker still has it",
            last.segment.display(),
            last.offset
        );
        recovery.damage.pop();
    }
}

pub(super) enum Scan {
    Valid {
        end: u64,
        points: u64,
        damage: Vec<Damage>,
        seed: Seed,
        /// The file's length.
        len: u64,
        /// Zeros (or the file's end) follow the last valid record.
        marked: bool,
    },
    /// Shorter than the file magic and the start of it: a segment whose
    /// start was cut short (a full disk, a power cut), holding no record.
    Unstarted,
    Foreign,
}

/// Reads a whole segment (number `id`) at start-up, finding where its
/// valid records end and what is damaged. In a preallocated segment what
/// follows the last valid record is its unused space (zeros, or records of
/// the file's earlier use), not damage, when zeros mark its end (as
/// sealing writes them) or when it is the `newest`, taking appends up to
/// the stop. Anything else there is a record of its own gone bad.
pub(super) fn scan_segment(path: &Path, id: u64, newest: bool) -> Result<Scan, SpoolError> {
    let bytes = fs::read(path).map_err(|source| SpoolError::Io {
        path: path.to_owned(),
        source,
    })?;
    let started = |magic: &[u8]| bytes.len() < magic.len() && magic.starts_with(&bytes);
    if started(FILE_MAGIC) || started(FILE_MAGIC_V2) {
        return Ok(Scan::Unstarted);
    }
    let seed = match bytes.get(..FILE_MAGIC.len()) {
        Some(m) if m == FILE_MAGIC => None,
        Some(m) if m == FILE_MAGIC_V2 => Some(id),
        _ => return Ok(Scan::Foreign),
    };
    let mut damage = Vec::new();
    let mut offset = FILE_MAGIC.len();
    let mut end = offset;
    let mut points = 0u64;
    while offset < bytes.len() {
        let parsed = parse_record(&bytes[offset..], seed);
        // A record running past the end of the file is a write cut short
        // in a file that grew with its records (below, as in the first
        // format); anything else invalid in a preallocated one is damage
        // only if a valid record follows.
        if seed.is_some() && matches!(parsed, Parsed::Invalid) {
            let skip = resync(&bytes[offset..], seed);
            if offset + skip >= bytes.len() {
                if !newest && !zero_mark(&bytes, offset) {
                    damage.push(Damage {
                        segment: path.to_owned(),
                        offset: offset as u64,
                        kind: DamageKind::Corrupt {
                            bytes: claimed_len(&bytes[offset..]) as u64,
                        },
                    });
                }
                // The unused rest of the file.
                break;
            }
            damage.push(Damage {
                segment: path.to_owned(),
                offset: offset as u64,
                kind: DamageKind::Corrupt { bytes: skip as u64 },
            });
            offset += skip;
            end = offset;
            continue;
        }
        match parsed {
            Parsed::Record { len, points: p, .. } => {
                points += u64::from(p);
                offset += len;
                end = offset;
            }
            Parsed::Incomplete => {
                // A flipped length field also looks incomplete; only when
                // no valid record follows is it really a torn tail.
                let skip = resync(&bytes[offset..], seed);
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
                let skip = resync(&bytes[offset..], seed);
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
        seed,
        len: bytes.len() as u64,
        marked: zero_mark(&bytes, end),
    })
}
