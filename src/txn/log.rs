//! The decision log: an append-only file of commit decisions, made durable
//! (fdatasync) before any `COMMIT PREPARED` is sent.
//!
//! Record: `u32 length | u32 crc32 | payload`, little-endian. Payloads:
//! - `1 epoch`: this process's epoch (written once at startup; gids carry it,
//!   so transaction numbers never repeat across restarts).
//! - `2 commit`: node id, epoch, transaction number, participant shards.
//! - `3 done`: every participant committed; the commit record may be dropped.
//!
//! Concurrent committers share fsyncs: appends queue to one writer task, which
//! writes whatever has queued and syncs once for all of them (group commit).
//! At open, a torn last record is cut off; a bad record followed by more data
//! is corruption and stops the proxy. The file is rewritten with only the
//! undone commits when it grows past a threshold.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::router::ShardId;

/// Identifies a distributed transaction of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId {
    pub epoch: u64,
    pub number: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("decision log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("decision log {path} is corrupt at byte {offset}: {reason}; refusing to guess which transactions committed (restore the file or move it aside after checking pg_prepared_xacts by hand)")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("decision log {path} belongs to node `{found}`, not `{expected}`")]
    WrongNode {
        path: String,
        found: String,
        expected: String,
    },
    #[error("decision log writer has stopped")]
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Epoch(u64),
    Commit {
        node: String,
        txn: TxnId,
        shards: Vec<ShardId>,
    },
    Done(TxnId),
}

/// CRC-32 (IEEE), table-driven.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Record::Epoch(e) => {
                p.push(1);
                p.extend_from_slice(&e.to_le_bytes());
            }
            Record::Commit { node, txn, shards } => {
                p.push(2);
                p.push(node.len() as u8);
                p.extend_from_slice(node.as_bytes());
                p.extend_from_slice(&txn.epoch.to_le_bytes());
                p.extend_from_slice(&txn.number.to_le_bytes());
                p.extend_from_slice(&(shards.len() as u16).to_le_bytes());
                for s in shards {
                    p.extend_from_slice(&s.0.to_le_bytes());
                }
            }
            Record::Done(txn) => {
                p.push(3);
                p.extend_from_slice(&txn.epoch.to_le_bytes());
                p.extend_from_slice(&txn.number.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(p.len() + 8);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32(&p).to_le_bytes());
        out.extend_from_slice(&p);
        out
    }

    fn decode(p: &[u8]) -> Option<Record> {
        let mut r = p;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, b) = (r.get(..n)?, r.get(n..)?);
            r = b;
            Some(a)
        };
        let u64le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let rec = match take(1)?[0] {
            1 => Record::Epoch(u64le(take(8)?)),
            2 => {
                let n = take(1)?[0] as usize;
                let node = String::from_utf8(take(n)?.to_vec()).ok()?;
                let epoch = u64le(take(8)?);
                let number = u64le(take(8)?);
                let count = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
                let mut shards = Vec::with_capacity(count);
                for _ in 0..count {
                    shards.push(ShardId(u32::from_le_bytes(take(4)?.try_into().ok()?)));
                }
                Record::Commit {
                    node,
                    txn: TxnId { epoch, number },
                    shards,
                }
            }
            3 => {
                let epoch = u64le(take(8)?);
                let number = u64le(take(8)?);
                Record::Done(TxnId { epoch, number })
            }
            _ => return None,
        };
        r.is_empty().then_some(rec)
    }
}

/// What the log knows: commits whose participants are not all known to be done.
#[derive(Debug, Default)]
pub struct LogState {
    pub committed: HashMap<TxnId, Vec<ShardId>>,
    pub epoch: u64,
}

/// Reads a log file: its records, and the length of the valid prefix.
fn read_records(path: &Path) -> Result<(Vec<Record>, u64), LogError> {
    let p = path.display().to_string();
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(|source| LogError::Io {
                path: p.clone(),
                source,
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(LogError::Io { path: p, source }),
    }
    parse_records(&data, &p)
}

/// The records in a log file's bytes (`p` names the file in errors), and
/// the length of the valid prefix: a torn last record is cut off, a bad
/// record with more after it is corruption.
pub(crate) fn parse_records(data: &[u8], p: &str) -> Result<(Vec<Record>, u64), LogError> {
    let p = p.to_string();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < data.len() {
        let torn = |_: &str| Ok((out.clone(), off as u64));
        let Some(head) = data.get(off..off + 8) else {
            return torn("short header");
        };
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or([0; 4])) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or([0; 4]));
        let end = off + 8 + len;
        let Some(payload) = data.get(off + 8..end) else {
            // The record runs past the end: the last write was torn.
            return torn("short payload");
        };
        let rec = if crc32(payload) == crc {
            Record::decode(payload)
        } else {
            None
        };
        match rec {
            Some(r) => out.push(r),
            // A bad last record is a torn write; a bad record with more after it is corruption.
            None if end >= data.len() => return torn("bad last record"),
            None => {
                return Err(LogError::Corrupt {
                    path: p,
                    offset: off as u64,
                    reason: "checksum or format mismatch".into(),
                })
            }
        }
        off = end;
    }
    Ok((out, off as u64))
}

fn apply(state: &mut LogState, r: &Record) {
    match r {
        Record::Epoch(e) => state.epoch = state.epoch.max(*e),
        Record::Commit { txn, shards, .. } => {
            state.committed.insert(*txn, shards.clone());
        }
        Record::Done(txn) => {
            state.committed.remove(txn);
        }
    }
}

struct Append {
    bytes: Vec<u8>,
    sync: bool,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the decision log; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: mpsc::UnboundedSender<Append>,
    state: Arc<Mutex<LogState>>,
    node: String,
    path: PathBuf,
}

/// Rewrite the file when it grows past this, keeping only undone commits.
const COMPACT_AT: u64 = 4 << 20;

impl DecisionLog {
    /// Opens (or creates) `dir/decisions.log`, checks it, starts a new epoch.
    pub fn open(dir: &Path, node: &str) -> Result<DecisionLog, LogError> {
        let path = dir.join("decisions.log");
        let p = path.display().to_string();
        std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let (records, valid) = read_records(&path)?;
        let mut state = LogState::default();
        for r in &records {
            if let Record::Commit { node: n, .. } = r {
                if n != node {
                    return Err(LogError::WrongNode {
                        path: p,
                        found: n.clone(),
                        expected: node.to_string(),
                    });
                }
            }
            apply(&mut state, r);
        }
        state.epoch += 1;
        // Start from a compacted file: the undone commits and the new epoch.
        let mut body = Record::Epoch(state.epoch).encode();
        let mut undone: Vec<_> = state.committed.iter().collect();
        undone.sort();
        for (txn, shards) in undone {
            body.extend(
                Record::Commit {
                    node: node.to_string(),
                    txn: *txn,
                    shards: shards.clone(),
                }
                .encode(),
            );
        }
        let _ = valid;
        rewrite(&path, &body).map_err(|source| LogError::Io {
            path: p.clone(),
            source,
        })?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| LogError::Io {
                path: p.clone(),
                source,
            })?;
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            file,
            path: path.clone(),
            size: body.len() as u64,
            state: state.clone(),
            node: node.to_string(),
        };
        std::thread::Builder::new()
            .name("pieskieo-decision-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| LogError::Io { path: p, source })?;
        Ok(DecisionLog {
            tx,
            state,
            node: node.to_string(),
            path,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.state.lock().map(|s| s.epoch).unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn append(&self, r: Record, sync: bool) -> Result<(), LogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Append {
                bytes: r.encode(),
                sync,
                done,
            })
            .map_err(|_| LogError::Stopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LogError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(LogError::Stopped),
        }
    }

    /// Makes the commit decision durable. Returns once it is on disk.
    pub async fn commit(&self, txn: TxnId, shards: &[ShardId]) -> Result<(), LogError> {
        let rec = Record::Commit {
            node: self.node.clone(),
            txn,
            shards: shards.to_vec(),
        };
        self.append(rec, true).await?;
        if let Ok(mut s) = self.state.lock() {
            s.committed.insert(txn, shards.to_vec());
        }
        Ok(())
    }

    /// Notes that every participant committed. Not synced: if it is lost,
    /// recovery finds nothing prepared and writes it again.
    pub async fn done(&self, txn: TxnId) -> Result<(), LogError> {
        if let Ok(mut s) = self.state.lock() {
            s.committed.remove(&txn);
        }
        self.append(Record::Done(txn), false).await
    }

    pub fn is_committed(&self, txn: TxnId) -> bool {
        self.state
            .lock()
            .map(|s| s.committed.contains_key(&txn))
            .unwrap_or(false)
    }

    /// Commits the log holds whose completion is not recorded.
    pub fn undone(&self) -> Vec<(TxnId, Vec<ShardId>)> {
        self.state
            .lock()
            .map(|s| s.committed.iter().map(|(t, v)| (*t, v.clone())).collect())
            .unwrap_or_default()
    }
}

/// Replaces a file atomically: write a temporary, sync, rename, sync the directory.
fn rewrite(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct Writer {
    file: File,
    path: PathBuf,
    size: u64,
    state: Arc<Mutex<LogState>>,
    node: String,
}

impl Writer {
    /// Group commit: take everything queued, write it, sync once, answer all.
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Append>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut buf = Vec::new();
            let mut sync = false;
            for a in &batch {
                buf.extend_from_slice(&a.bytes);
                sync |= a.sync;
            }
            let r = self.file.write_all(&buf).and_then(|_| {
                if sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
            self.size += buf.len() as u64;
            let res = r.map_err(|e| e.to_string());
            for a in batch {
                let _ = a.done.send(res.clone());
            }
            if self.size > COMPACT_AT {
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        let body = {
            let Ok(s) = self.state.lock() else { return };
            let mut body = Record::Epoch(s.epoch).encode();
            for (txn, shards) in &s.committed {
                body.extend(
                    Record::Commit {
                        node: self.node.clone(),
                        txn: *txn,
                        shards: shards.clone(),
                    }
                    .encode(),
                );
            }
            body
        };
        if rewrite(&self.path, &body).is_ok() {
            if let Ok(f) = OpenOptions::new().append(true).open(&self.path) {
                self.file = f;
                self.size = body.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pieskieo-log-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn t(n: u64) -> TxnId {
        TxnId {
            epoch: 1,
            number: n,
        }
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_done_ones_go() {
        let d = tmpdir("reopen");
        let log = DecisionLog::open(&d, "n1").unwrap();
        assert_eq!(log.epoch(), 1);
        log.commit(t(1), &[ShardId(0), ShardId(1)]).await.unwrap();
        log.commit(t(2), &[ShardId(1), ShardId(2)]).await.unwrap();
        log.done(t(1)).await.unwrap();
        drop(log);
        let log = DecisionLog::open(&d, "n1").unwrap();
        assert_eq!(log.epoch(), 2, "a new epoch per open");
        assert!(!log.is_committed(t(1)));
        assert!(log.is_committed(t(2)));
        assert_eq!(log.undone(), vec![(t(2), vec![ShardId(1), ShardId(2)])]);
        assert!(matches!(
            DecisionLog::open(&d, "other"),
            Err(LogError::WrongNode { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn torn_tail_is_ignored_and_mid_file_corruption_refused() {
        let d = tmpdir("torn");
        let log = DecisionLog::open(&d, "n1").unwrap();
        log.commit(t(7), &[ShardId(0), ShardId(1)]).await.unwrap();
        log.commit(t(8), &[ShardId(0), ShardId(1)]).await.unwrap();
        let path = log.path().to_path_buf();
        drop(log);
        let full = std::fs::read(&path).unwrap();

        // Torn: the last record cut in half.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let log = DecisionLog::open(&d, "n1").unwrap();
        assert!(log.is_committed(t(7)));
        assert!(!log.is_committed(t(8)), "a torn record is not a decision");
        drop(log);

        // Corrupt: a flipped byte in a record with another after it.
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        bad.extend(
            Record::Commit {
                node: "n1".into(),
                txn: t(9),
                shards: vec![ShardId(0)],
            }
            .encode(),
        );
        // Flip a byte inside the first commit record (after the epoch record).
        let epoch_len = Record::Epoch(1).encode().len();
        bad[epoch_len + 10] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            DecisionLog::open(&d, "n1"),
            Err(LogError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn group_commit_and_compaction_keep_what_recovery_needs() {
        let d = tmpdir("compact");
        let log = DecisionLog::open(&d, "n1").unwrap();
        let mut tasks = Vec::new();
        for n in 0..2000u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.commit(t(n), &[ShardId(0), ShardId(1)]).await.unwrap();
                if n % 2 == 0 {
                    log.done(t(n)).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let path = log.path().to_path_buf();
        drop(log);
        let log = DecisionLog::open(&d, "n1").unwrap();
        assert_eq!(log.undone().len(), 1000);
        assert!(log.is_committed(t(1)) && !log.is_committed(t(2)));
        // Reopening compacted the file to the undone commits.
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 1000 * 64, "{size}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
