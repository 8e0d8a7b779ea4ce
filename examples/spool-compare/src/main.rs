//! Measures leasegate's own segment log against two well-kept crates that
//! could hold the spool instead (BENCHMARKS.md, "Why an own spool"):
//! - `queue-file`, a port of Square's Tape QueueFile: one ring-buffer file,
//!   a header rewritten in place on every add and remove;
//! - `redb`, an embedded copy-on-write B-tree database, one transaction per
//!   group.
//!
//! The workload is the daemon's: one-point messages of about 70 bytes,
//! stored in groups of 50 with one durable commit per group (what one
//! broker in-flight window gives), read back in batches of 5,000 and
//! released, in rounds. It prints records per second and bytes written to
//! the block device per byte of payload (`write_bytes` of /proc/self/io:
//! what wears an SD card). Run: `cargo run --release --example
//! spool_compare` (about a minute); `--quick` for a smoke run.

#[path = "../../common/procfs.rs"]
mod procfs;

use std::time::{Duration, Instant};

use leasegate::agent::store::spool::{SizeOrPercent, Spool, SpoolConfig};
use leasegate::config::{FsyncPolicy, Overflow};

const GROUP: usize = 50;
const BATCH: usize = 5000;

/// One store under test: append a group durably, take a batch, release it.
trait Store {
    fn name(&self) -> &'static str;
    fn append_group(&mut self, records: &[Vec<u8>]);
    /// Reads and releases up to `max` records; returns how many.
    fn take(&mut self, max: usize) -> usize;
}

struct OwnSpool(Spool);

impl Store for OwnSpool {
    fn name(&self) -> &'static str {
        "leasegate segment log"
    }

    fn append_group(&mut self, records: &[Vec<u8>]) {
        for r in records {
            self.0.append(r, 1).unwrap();
        }
        self.0.commit().unwrap();
    }

    fn take(&mut self, max: usize) -> usize {
        let batch = self
            .0
            .read(max as u64, usize::MAX, Duration::from_millis(0))
            .unwrap();
        self.0.release(&batch).unwrap();
        batch.points as usize
    }
}

struct Tape(queue_file::QueueFile);

impl Store for Tape {
    fn name(&self) -> &'static str {
        "queue-file (Tape QueueFile)"
    }

    fn append_group(&mut self, records: &[Vec<u8>]) {
        // With sync writes on, one add_n is one durable commit.
        self.0.add_n(records.iter().map(|r| r.as_slice())).unwrap();
    }

    fn take(&mut self, max: usize) -> usize {
        let n = self.0.iter().take(max).count();
        self.0.remove_n(n).unwrap();
        n
    }
}

const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("spool");

struct Redb {
    db: redb::Database,
    next: u64,
}

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb (one transaction per group)"
    }

    fn append_group(&mut self, records: &[Vec<u8>]) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for r in records {
                table.insert(self.next, r.as_slice()).unwrap();
                self.next += 1;
            }
        }
        tx.commit().unwrap();
    }

    fn take(&mut self, max: usize) -> usize {
        let tx = self.db.begin_write().unwrap();
        let mut n = 0;
        {
            let mut table = tx.open_table(TABLE).unwrap();
            while n < max {
                let Some(entry) = table.pop_first().unwrap() else {
                    break;
                };
                std::hint::black_box(entry.1.value().len());
                n += 1;
            }
        }
        tx.commit().unwrap();
        n
    }
}

fn write_bytes() -> u64 {
    procfs::field("/proc/self/io", "write_bytes:")
}

fn record(i: u64) -> Vec<u8> {
    format!(
        "bench,sensor=s{:03} seq={i}i,value={}.{} {}\n",
        i % 100,
        i % 1000,
        i % 7,
        1_700_000_000_000_000_000u64 + i
    )
    .into_bytes()
}

fn run(store: &mut dyn Store, rounds: usize, per_round: usize) -> String {
    let disk = write_bytes();
    let started = Instant::now();
    let (mut payload, mut i, mut taken) = (0u64, 0u64, 0usize);
    for _ in 0..rounds {
        for _ in 0..per_round / GROUP {
            let group: Vec<Vec<u8>> = (0..GROUP)
                .map(|_| {
                    i += 1;
                    record(i)
                })
                .collect();
            payload += group.iter().map(|r| r.len() as u64).sum::<u64>();
            store.append_group(&group);
        }
        loop {
            let n = store.take(BATCH);
            taken += n;
            if n == 0 {
                break;
            }
        }
    }
    let took = started.elapsed();
    assert_eq!(taken as u64, i, "{}: records lost", store.name());
    let written = write_bytes() - disk;
    format!(
        "| {} | {:.0} | {:.1} |",
        store.name(),
        i as f64 / took.as_secs_f64(),
        written as f64 / payload as f64
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round) = if quick { (2, 5_000) } else { (10, 10_000) };
    // On disk, not tmpfs: the point is what reaches the device.
    let base = std::env::current_dir().unwrap().join("target");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();

    let (spool, _) = Spool::open(SpoolConfig {
        dir: dir.path().join("own"),
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Batch,
        overflow: Overflow::Block,
        min_free: SizeOrPercent::Bytes(0),
    })
    .unwrap();
    let mut tape = queue_file::QueueFile::open(dir.path().join("tape.qf")).unwrap();
    tape.set_sync_writes(true);
    let redb = redb::Database::create(dir.path().join("spool.redb")).unwrap();

    let stores: Vec<Box<dyn Store>> = vec![
        Box::new(OwnSpool(spool)),
        Box::new(Tape(tape)),
        Box::new(Redb { db: redb, next: 0 }),
    ];
    println!(
        "{} records of ~70 bytes, groups of {GROUP} with one durable commit each, read in batches of {BATCH}",
        rounds * per_round
    );
    println!("| store | records/s | device bytes per payload byte |");
    println!("| --- | --- | --- |");
    for mut store in stores {
        println!("{}", run(store.as_mut(), rounds, per_round));
    }
}
