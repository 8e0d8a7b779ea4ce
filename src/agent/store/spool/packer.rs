//! Packing a backlog: the spool's side of `pack`. Sealed segments the
//! writer will not read soon are packed one at a time, outside the spool's
//! lock, and swapped in under it; a packed segment is read through its
//! unpacked image.
//!
//! Packing must never cost a record: a crash at any point leaves one whole
//! copy. It never packs the segment taking appends, the one being read or
//! the next.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    Damage, DamageKind, FILE_MAGIC, Fill, FsyncPolicy, Inner, Segment, Spool, SpoolError,
    forget_handles, pack, remove,
};

/// The file of packed segment `id`.
pub(super) fn packed_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.segz"))
}

/// The segments in the spool directory (of file `names`), packed or not,
/// in order, and which are packed; left over from a crash while packing,
/// a pack cut short is deleted, and a segment's file beside its whole
/// pack too (a pack gets its name whole and synced).
pub(super) fn settle_names(
    dir: &Path,
    names: &[String],
) -> Result<(Vec<u64>, Vec<u64>), SpoolError> {
    let packed = super::numbered(names, ".segz");
    for name in names.iter().filter(|n| n.ends_with(".segz.tmp")) {
        remove(&dir.join(name))?;
    }
    let mut ids = super::numbered(names, ".seg");
    for id in ids.iter().filter(|id| packed.contains(id)) {
        remove(&super::segment_path(dir, *id))?;
    }
    ids.retain(|id| !packed.contains(id));
    ids.extend(&packed);
    ids.sort_unstable();
    Ok((ids, packed))
}

/// A packed segment found at start-up (its block headers read, not its
/// data), with what of it is no block; None for a file that is no packed
/// segment (moved aside, and said).
pub(super) fn recover_packed(
    path: &Path,
    id: u64,
) -> Result<(Option<Segment>, Option<Damage>), SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = fs::read(path).map_err(io)?;
    if !bytes.starts_with(pack::PACKED_MAGIC) {
        let moved_to = path.with_extension("segz.corrupt");
        fs::rename(path, &moved_to).map_err(io)?;
        let damage = Damage {
            segment: path.to_owned(),
            offset: 0,
            kind: DamageKind::NotASegment { moved_to },
        };
        return Ok((None, Some(damage)));
    }
    let summary = pack::summarize(&bytes);
    let end = summary.end.max(FILE_MAGIC.len() as u64);
    let damage = (summary.unreadable > 0).then(|| Damage {
        segment: path.to_owned(),
        offset: 0,
        kind: DamageKind::Corrupt {
            bytes: summary.unreadable,
        },
    });
    let segment = Segment {
        id,
        path: path.to_owned(),
        end,
        committed: end,
        sealed: true,
        unread_points: summary.points,
        seed: Some(id),
        capacity: end,
        grows: false,
        fill: Fill::at(end),
        packed: Some(bytes.len() as u64),
    };
    Ok((Some(segment), damage))
}

/// The bytes of `seg` (packed or not) before `offset`.
pub(super) fn bytes_before(seg: &Segment, offset: u64) -> Option<Vec<u8>> {
    match seg.packed {
        Some(_) => {
            let mut image = pack::unpack(&fs::read(&seg.path).ok()?, seg.id, seg.end);
            image.truncate(offset as usize);
            Some(image)
        }
        None => {
            let mut buf = vec![0; offset as usize];
            File::open(&seg.path).ok()?.read_exact(&mut buf).ok()?;
            Some(buf)
        }
    }
}

/// The CPU time this thread has used (for the cost of packing).
fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A segment chosen to be packed.
struct Chosen {
    id: u64,
    path: PathBuf,
    end: u64,
    /// The points of its records: a pack must hold as many.
    points: u64,
}

/// How often the packer looks for a segment to pack when none waited.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long it waits after a failure (a full or failing card).
const AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(30);

impl Spool {
    /// The packer thread's loop, until `shutdown`: a pack in progress is
    /// finished (seconds at most), then it returns.
    pub fn pack_until(&self, shutdown: &crate::shutdown::Shutdown) {
        while !shutdown.is_triggered() {
            match self.pack_one() {
                Ok(true) => {}
                Ok(false) => {
                    shutdown.sleep(LOOK_EVERY);
                }
                Err(e) => {
                    log::warn!(
                        "cannot pack a spool segment (it stays as it is): {}",
                        crate::error_chain(&e)
                    );
                    shutdown.sleep(AFTER_FAILURE);
                }
            }
        }
    }

    /// Packs one sealed segment that waits behind the one being read, if
    /// there is one. True if it packed one (call again), false if none
    /// waits. An error leaves the segment as it was. The pack is checked
    /// against the segment, synced and renamed into place before the
    /// segment's file is deleted, so a crash leaves one whole copy (a start
    /// prefers the `.segz`, complete once it has its name).
    pub fn pack_one(&self) -> Result<bool, SpoolError> {
        let Some(chosen) = self.choose_to_pack() else {
            return Ok(false);
        };
        let cpu = thread_cpu();
        let packed = self.pack_file(&chosen);
        let mut inner = self.lock();
        inner.packing = None;
        inner.pack_cpu += thread_cpu().saturating_sub(cpu);
        let packed = packed?;
        inner.packed_points += chosen.points;
        self.swap_in(&mut inner, &chosen, &packed)?;
        Ok(true)
    }

    /// A sealed segment two or more behind the one being read (InfluxDB is
    /// away or slow), never the last one, which takes appends.
    fn choose_to_pack(&self) -> Option<Chosen> {
        let mut inner = self.lock();
        if inner.packing.is_some() {
            return None;
        }
        let first_unread = inner.read.segment;
        let last = inner.segments.back().map(|s| s.id)?;
        let seg = inner.segments.iter().find(|s| {
            s.sealed
                && s.packed.is_none()
                && s.seed.is_some()
                && s.id >= first_unread.saturating_add(2)
                && s.id != last
        })?;
        let chosen = Chosen {
            id: seg.id,
            path: seg.path.clone(),
            end: seg.end,
            points: seg.unread_points,
        };
        inner.packing = Some(chosen.id);
        Some(chosen)
    }

    /// Writes the pack of `chosen` under its `.segz` name, checked and
    /// synced (the directory too). Returns its path and length.
    fn pack_file(&self, chosen: &Chosen) -> Result<(PathBuf, u64), SpoolError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io { path, source }
        };
        let mut raw = vec![0; chosen.end as usize];
        File::open(&chosen.path)
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(io(&chosen.path))?;
        let packed = pack::pack(&raw, chosen.id).map_err(io(&chosen.path))?;
        let points = chosen.points;
        if !pack::verify(&packed.bytes, &raw, chosen.id, points) || packed.points != points {
            return Err(SpoolError::Io {
                path: chosen.path.clone(),
                source: std::io::Error::other("its pack does not unpack to its records"),
            });
        }
        let target = packed_path(&self.config.dir, chosen.id);
        let tmp = target.with_extension("segz.tmp");
        let sync = self.config.fsync != FsyncPolicy::Never;
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&packed.bytes)?;
                if sync {
                    f.sync_data()?;
                }
                Ok(())
            })
            .and_then(|()| fs::rename(&tmp, &target))
            .and_then(|()| match sync {
                true => File::open(&self.config.dir).and_then(|d| d.sync_all()),
                false => Ok(()),
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&target);
            return Err(io(&tmp)(e));
        }
        Ok((target, packed.bytes.len() as u64))
    }

    /// Puts the packed file in the segment's place and deletes its old
    /// file; deletes the packed one instead if the segment went meanwhile
    /// (dropped by the overflow policy, or read and accepted).
    fn swap_in(
        &self,
        inner: &mut Inner,
        chosen: &Chosen,
        (path, len): &(PathBuf, u64),
    ) -> Result<(), SpoolError> {
        let Some(seg) = inner
            .segments
            .iter_mut()
            .find(|s| s.id == chosen.id && s.packed.is_none())
        else {
            return remove(path);
        };
        let old = std::mem::replace(&mut seg.path, path.clone());
        seg.packed = Some(*len);
        inner.total_bytes = inner.total_bytes - chosen.end + len;
        inner.pack_ratio = Some(*len as f64 / chosen.end.max(1) as f64);
        forget_handles(inner, &old);
        log::debug!(
            "packed {} ({} bytes of records in {len})",
            old.display(),
            chosen.end
        );
        remove(&old)
    }

    /// The unpacked image of packed segment `id`, kept while it is read.
    pub(super) fn image(&self, inner: &mut Inner, id: u64) -> Result<Arc<Vec<u8>>, SpoolError> {
        if let Some((cached, image)) = &inner.image
            && *cached == id
        {
            return Ok(image.clone());
        }
        let seg = inner
            .segments
            .iter()
            .find(|s| s.id == id)
            .expect("a segment being read");
        let bytes = fs::read(&seg.path).map_err(|source| SpoolError::Io {
            path: seg.path.clone(),
            source,
        })?;
        let image = Arc::new(pack::unpack(&bytes, id, seg.end));
        inner.image = Some((id, image.clone()));
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drain, files_ending as files};
    use super::super::{Overflow, SizeOrPercent, SpoolConfig};
    use super::*;
    use std::time::Duration;

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.join("spool"),
            max_bytes: 3 << 20,
            fsync: FsyncPolicy::Batch,
            overflow: Overflow::Block,
            min_free: SizeOrPercent::Bytes(0),
        }
    }

    /// Line `i`, of a realistic shape, stamped `i` (to check the order).
    fn line(i: u64) -> Vec<u8> {
        format!(
            "env,site=s{},id=t{:02} temp={}.{:02},hum={}.{} {i}\n",
            i % 4,
            i % 20,
            20 + i % 5,
            (i * 37) % 100,
            40 + i % 17,
            i % 10
        )
        .into_bytes()
    }

    fn fill(spool: &Spool, range: std::ops::Range<u64>) {
        for i in range {
            spool.append(&line(i), 1).unwrap();
            if i % 50 == 0 {
                spool.commit().unwrap();
            }
        }
        spool.commit().unwrap();
    }

    fn pack_all(spool: &Spool) -> usize {
        (0..1000).take_while(|_| spool.pack_one().unwrap()).count()
    }

    /// A spool in `dir` holding `n` points with at least one segment
    /// packed, closed.
    fn packed_spool(dir: &Path, n: u64) {
        let (spool, _) = Spool::open(config(dir)).unwrap();
        fill(&spool, 0..n);
        assert!(pack_all(&spool) >= 1);
    }

    #[test]
    fn a_backlog_is_packed_and_read_back_in_order_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        const N: u64 = 30_000;
        {
            let (spool, _) = Spool::open(config(dir.path())).unwrap();
            fill(&spool, 0..N);
            let before = spool.stats();
            let packed = pack_all(&spool);
            assert!(packed >= 2, "{packed} packed");
            let after = spool.stats();
            assert_eq!(after.points_unread, N);
            assert!(after.bytes < before.bytes);
            for seg in spool.lock().segments.iter() {
                if let Some(len) = seg.packed {
                    assert!(len * 4 < seg.end, "{} packed in {len}", seg.end);
                }
            }
            assert_eq!(files(dir.path(), ".segz").len(), packed);
            // Never the one being read, the next, or the one taking appends.
            assert!(
                files(dir.path(), ".seg").len() >= 3,
                "{:?} {:?}",
                files(dir.path(), ".seg"),
                files(dir.path(), ".segz")
            );
        }
        let (spool, rec) = Spool::open(config(dir.path())).unwrap();
        assert_eq!((rec.points, rec.damage.len()), (N, 0));
        assert_eq!(drain(&spool), (0..N).collect::<Vec<_>>());
        assert!(files(dir.path(), ".segz").is_empty());
    }

    #[test]
    fn a_cursor_inside_a_packed_segment_is_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        const N: u64 = 30_000;
        let taken = {
            let (spool, _) = Spool::open(config(dir.path())).unwrap();
            fill(&spool, 0..N);
            assert!(pack_all(&spool) >= 2);
            // Read into the first packed segment.
            let mut taken = Vec::new();
            while spool.lock().segments.front().unwrap().packed.is_none() {
                let batch = spool.read(300, 64 << 10, Duration::ZERO).unwrap();
                let text = String::from_utf8(batch.data.clone()).unwrap();
                taken.extend(
                    text.lines()
                        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()),
                );
                spool.release(&batch).unwrap();
            }
            let batch = spool.read(300, 64 << 10, Duration::ZERO).unwrap();
            assert_eq!(batch.points, 300);
            spool.release(&batch).unwrap();
            taken.len() as u64 + 300
        };
        let (spool, rec) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(rec.points, N - taken);
        assert_eq!(drain(&spool), (taken..N).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_between_the_pack_and_the_delete_keeps_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        const N: u64 = 30_000;
        packed_spool(dir.path(), N);
        // The segment's file back beside its pack, and a pack cut short.
        let packed = files(dir.path(), ".segz").remove(0);
        let raw = packed.with_extension("seg");
        fs::write(&raw, super::super::FILE_MAGIC_V2).unwrap();
        fs::write(packed.with_extension("segz.tmp"), b"LGSPOOLZ half").unwrap();
        let (spool, rec) = Spool::open(config(dir.path())).unwrap();
        assert_eq!((rec.points, rec.damage.len()), (N, 0));
        assert!(!raw.exists());
        assert!(files(dir.path(), ".segz.tmp").is_empty());
        assert_eq!(drain(&spool), (0..N).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_bit_in_a_pack_costs_its_block_and_is_said() {
        let dir = tempfile::tempdir().unwrap();
        const N: u64 = 30_000;
        packed_spool(dir.path(), N);
        let packed = files(dir.path(), ".segz").remove(0);
        let mut bytes = fs::read(&packed).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        fs::write(&packed, &bytes).unwrap();
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let got = drain(&spool);
        let lost = N - got.len() as u64;
        assert!(lost > 0 && lost < 2000, "{lost} lost");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "out of order");
        let damage = spool.take_damage();
        assert!(
            damage
                .iter()
                .any(|d| d.segment == packed && matches!(d.kind, DamageKind::Corrupt { .. })),
            "{damage:?}"
        );
    }
}
