//! `--data-dir`: the embedded broker's state on disk, in one redb file, for a standalone
//! deployment that must survive a restart (or a `kill -9`).
//!
//! The in-memory state stays the truth while the process runs; this is its journal. Each
//! change is sent as an [`Op`] to one writer thread, which commits whatever has piled up
//! in one transaction (a group commit: one fsync for many changes, however busy the
//! broker is). Writes that a caller is told about before they happen (a submission's
//! id, a final verdict) wait for their commit with [`Store::sync`]; the events between
//! them do not, and after a crash the file holds a prefix of the changes in order, which
//! the loader turns back into a consistent state (memory/load.rs).
//!
//! What the file keeps: records, their event logs, the queue (with the jobs workers held:
//! they run again), the verdict feed, its consumer groups, and the two counters that
//! number queue deliveries and feed entries. What it does not: metrics, worker
//! heartbeats, live subscriptions (clients re-subscribe and replay from their `seq`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{BrokerError, Result};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const RESULTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("results");
const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const FEED: TableDefinition<u64, &str> = TableDefinition::new("feed");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file's name inside `--data-dir`.
pub const FILE: &str = "verdict.redb";
/// Changes committed in one transaction at most (bounds a transaction's memory).
const BATCH: usize = 4096;

/// One change of the state, already serialized by the caller.
#[derive(Debug)]
pub(crate) enum Op {
    /// A record without its log, as JSON (memory/stored.rs).
    Record { id: String, json: Vec<u8> },
    /// One event appended to a record's log.
    Event { id: String, seq: u64, json: Vec<u8> },
    /// A record's whole log, replacing what is stored (its final rewrite).
    Log {
        id: String,
        events: Vec<(u64, Vec<u8>)>,
    },
    /// A finished test's result (with its output), kept beside the log until the final
    /// record takes it over.
    Result {
        id: String,
        index: u32,
        json: Vec<u8>,
    },
    /// The final record took the results over.
    DropResults { id: String },
    /// A record expired or was evicted: it, its log and its results go.
    Drop { id: String },
    /// A job entered the queue under delivery number `n`.
    Enqueue { n: u64, json: Vec<u8> },
    /// The job of delivery `n` was acknowledged.
    Dequeue { n: u64 },
    /// Feed entry `n` names submission `id`.
    Feed { n: u64, id: String },
    /// Feed entries below `n` were trimmed.
    FeedTrim { below: u64 },
    /// A consumer group's state, as JSON.
    Group { name: String, json: Vec<u8> },
    /// A counter.
    Meta { key: &'static str, value: u64 },
}

enum Msg {
    Op(Op),
    /// Answered once everything sent before it is committed (or failed).
    Sync(tokio::sync::oneshot::Sender<bool>),
}

/// The state as the file holds it, for the loader.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub records: Vec<(String, Vec<u8>)>,
    /// Each record's log, in `seq` order.
    pub events: HashMap<String, Vec<(u64, Vec<u8>)>>,
    /// Each record's results kept beside the log, by test index.
    pub results: HashMap<String, Vec<(u32, Vec<u8>)>>,
    pub queue: Vec<(u64, Vec<u8>)>,
    pub feed: Vec<(u64, String)>,
    pub groups: Vec<(String, Vec<u8>)>,
    pub meta: HashMap<String, u64>,
}

/// The handle the broker writes through.
pub(crate) struct Store {
    tx: mpsc::Sender<Msg>,
    /// Set when a commit failed: [`Store::sync`] reports it from then on, so that a
    /// submission is refused rather than accepted and then lost.
    failed: Arc<AtomicBool>,
    path: PathBuf,
}

fn storage(path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(format!("{}: {e}", path.display()))
}

impl Store {
    /// Opens (or creates) `dir/verdict.redb`, reads it whole, and starts the writer.
    /// Fails when another process has it open: one standalone process per data dir.
    pub(crate) fn open(dir: &Path) -> Result<(Store, Snapshot)> {
        std::fs::create_dir_all(dir).map_err(|e| storage(dir, e))?;
        let path = dir.join(FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(storage(
                    &path,
                    "already open in another process (one standalone process per --data-dir)",
                ))
            }
            Err(e) => return Err(storage(&path, e)),
        };
        let snapshot = read(&db).map_err(|e| storage(&path, e))?;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let at = path.clone();
        std::thread::Builder::new()
            .name("verdict-store".into())
            .spawn(move || writer(db, rx, flag, at))
            .map_err(|e| storage(&path, e))?;
        Ok((Store { tx, failed, path }, snapshot))
    }

    /// Queues a change; the writer commits it soon, in order with the others.
    pub(crate) fn send(&self, op: Op) {
        // The writer only stops when the store is dropped, so a send cannot fail while
        // `self` lives; if it did, the next sync reports it.
        if self.tx.send(Msg::Op(op)).is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// Waits until every change sent before is on disk.
    pub(crate) async fn sync(&self) -> Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Msg::Sync(done)).is_ok();
        let ok = sent && wait.await.unwrap_or(false);
        if ok && !self.failed.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(storage(&self.path, "a write failed; see the log"))
        }
    }
}

fn read(db: &Database) -> std::result::Result<Snapshot, redb::Error> {
    // Creates the tables on first use, so that the read below finds them.
    let txn = db.begin_write()?;
    txn.open_table(RECORDS)?;
    txn.open_table(EVENTS)?;
    txn.open_table(RESULTS)?;
    txn.open_table(QUEUE)?;
    txn.open_table(FEED)?;
    txn.open_table(GROUPS)?;
    txn.open_table(META)?;
    txn.commit()?;

    let txn = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    for row in txn.open_table(RECORDS)?.iter()? {
        let (k, v) = row?;
        snapshot
            .records
            .push((k.value().to_owned(), v.value().to_vec()));
    }
    for row in txn.open_table(EVENTS)?.iter()? {
        let (k, v) = row?;
        let (id, seq) = k.value();
        snapshot
            .events
            .entry(id.to_owned())
            .or_default()
            .push((seq, v.value().to_vec()));
    }
    for row in txn.open_table(RESULTS)?.iter()? {
        let (k, v) = row?;
        let (id, index) = k.value();
        snapshot
            .results
            .entry(id.to_owned())
            .or_default()
            .push((index, v.value().to_vec()));
    }
    for row in txn.open_table(QUEUE)?.iter()? {
        let (k, v) = row?;
        snapshot.queue.push((k.value(), v.value().to_vec()));
    }
    for row in txn.open_table(FEED)?.iter()? {
        let (k, v) = row?;
        snapshot.feed.push((k.value(), v.value().to_owned()));
    }
    for row in txn.open_table(GROUPS)?.iter()? {
        let (k, v) = row?;
        snapshot
            .groups
            .push((k.value().to_owned(), v.value().to_vec()));
    }
    for row in txn.open_table(META)?.iter()? {
        let (k, v) = row?;
        snapshot.meta.insert(k.value().to_owned(), v.value());
    }
    Ok(snapshot)
}

/// The writer thread: one transaction per batch of whatever has arrived.
fn writer(db: Database, rx: mpsc::Receiver<Msg>, failed: Arc<AtomicBool>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let mut waiting = Vec::new();
        let mut ops = Vec::with_capacity(batch.len());
        for msg in batch {
            match msg {
                Msg::Op(op) => ops.push(op),
                Msg::Sync(done) => waiting.push(done),
            }
        }
        let ok = ops.is_empty()
            || {
                match commit(&db, ops) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "--data-dir: a commit failed; the state on disk is behind");
                        failed.store(true, Ordering::Relaxed);
                        false
                    }
                }
            };
        for done in waiting {
            let _ = done.send(ok);
        }
    }
}

fn commit(db: &Database, ops: Vec<Op>) -> std::result::Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut records = txn.open_table(RECORDS)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut results = txn.open_table(RESULTS)?;
        let mut queue = txn.open_table(QUEUE)?;
        let mut feed = txn.open_table(FEED)?;
        let mut groups = txn.open_table(GROUPS)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            match op {
                Op::Record { id, json } => {
                    records.insert(id.as_str(), json.as_slice())?;
                }
                Op::Event { id, seq, json } => {
                    events.insert((id.as_str(), seq), json.as_slice())?;
                }
                Op::Log { id, events: log } => {
                    events.retain_in((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| false)?;
                    for (seq, json) in log {
                        events.insert((id.as_str(), seq), json.as_slice())?;
                    }
                }
                Op::Result { id, index, json } => {
                    results.insert((id.as_str(), index), json.as_slice())?;
                }
                Op::DropResults { id } => {
                    results.retain_in((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| false)?;
                }
                Op::Drop { id } => {
                    records.remove(id.as_str())?;
                    events.retain_in((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| false)?;
                    results.retain_in((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| false)?;
                }
                Op::Enqueue { n, json } => {
                    queue.insert(n, json.as_slice())?;
                }
                Op::Dequeue { n } => {
                    queue.remove(n)?;
                }
                Op::Feed { n, id } => {
                    feed.insert(n, id.as_str())?;
                }
                Op::FeedTrim { below } => {
                    feed.retain_in(..below, |_, _| false)?;
                }
                Op::Group { name, json } => {
                    groups.insert(name.as_str(), json.as_slice())?;
                }
                Op::Meta { key, value } => {
                    meta.insert(key, value)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_synced_is_read_back_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, snapshot) = Store::open(dir.path()).expect("open");
            assert!(snapshot.records.is_empty());
            store.send(Op::Record {
                id: "a".into(),
                json: b"{1}".to_vec(),
            });
            store.send(Op::Event {
                id: "a".into(),
                seq: 1,
                json: b"e1".to_vec(),
            });
            store.send(Op::Event {
                id: "a".into(),
                seq: 2,
                json: b"e2".to_vec(),
            });
            store.send(Op::Record {
                id: "b".into(),
                json: b"{2}".to_vec(),
            });
            store.send(Op::Event {
                id: "b".into(),
                seq: 1,
                json: b"x".to_vec(),
            });
            store.send(Op::Drop { id: "b".into() });
            store.send(Op::Enqueue {
                n: 7,
                json: b"job7".to_vec(),
            });
            store.send(Op::Enqueue {
                n: 8,
                json: b"job8".to_vec(),
            });
            store.send(Op::Dequeue { n: 7 });
            store.send(Op::Feed {
                n: 1,
                id: "x".into(),
            });
            store.send(Op::Feed {
                n: 2,
                id: "a".into(),
            });
            store.send(Op::FeedTrim { below: 2 });
            store.send(Op::Log {
                id: "a".into(),
                events: vec![(1, b"E1".to_vec()), (2, b"E2".to_vec())],
            });
            store.send(Op::Meta {
                key: "next",
                value: 9,
            });
            store.sync().await.expect("sync");
        }
        // The writer thread ends once the store is dropped; wait for the file lock.
        let mut tries = 0;
        let (_store, s) = loop {
            match Store::open(dir.path()) {
                Ok(opened) => break opened,
                Err(e) if tries < 500 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopening: {e}"),
            }
        };
        assert_eq!(s.records, vec![("a".to_owned(), b"{1}".to_vec())]);
        assert_eq!(
            s.events.get("a"),
            Some(&vec![(1, b"E1".to_vec()), (2, b"E2".to_vec())])
        );
        assert!(!s.events.contains_key("b"));
        assert_eq!(s.queue, vec![(8, b"job8".to_vec())]);
        assert_eq!(s.feed, vec![(2, "a".to_owned())]);
        assert_eq!(s.meta.get("next"), Some(&9));
    }

    #[test]
    fn a_second_process_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("open");
        let second = Store::open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(second.contains("already open"), "{second}");
    }
}
