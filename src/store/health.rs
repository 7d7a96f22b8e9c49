//! What the writer knows about the store, shared with every [`super::EventLog`]
//! handle: whether commits succeed (and why not), which streams the writer has taken
//! from their generations because the store failed for longer than the retry window,
//! and whether this node's writes are fenced (PostgreSQL: its lease is gone).
//!
//! The writer is the only one that changes it; everything else reads.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a commit failed, in words an operator can act on. `None` from [`Fault::of`]: the
/// batch itself is wrong (a constraint it breaks), and retrying cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    DiskFull,
    Busy,
    Io,
    Connection,
    Database,
}

impl Fault {
    pub fn of(e: &sqlx::Error) -> Option<Fault> {
        use sqlx::error::ErrorKind;
        match e {
            sqlx::Error::Database(d) => {
                if !matches!(d.kind(), ErrorKind::Other) {
                    return None; // a unique, foreign-key, not-null or check violation
                }
                let code = d.code().unwrap_or_default();
                // SQLite: the extended result code, whose low byte is the primary one.
                if let Ok(n) = code.parse::<i32>() {
                    return Some(match n & 0xff {
                        13 => Fault::DiskFull,     // SQLITE_FULL
                        5 | 6 => Fault::Busy,      // SQLITE_BUSY, SQLITE_LOCKED
                        10 | 14 | 11 => Fault::Io, // IOERR, CANTOPEN, CORRUPT
                        _ => Fault::Database,
                    });
                }
                // PostgreSQL: the SQLSTATE class.
                Some(match code.get(..2) {
                    Some("53") => Fault::DiskFull, // insufficient resources
                    Some("08") | Some("57") => Fault::Connection,
                    Some("40") | Some("55") => Fault::Busy,
                    Some("58") => Fault::Io,
                    _ => Fault::Database,
                })
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Some(Fault::Connection),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Fault::DiskFull => "the disk is full",
            Fault::Busy => "the database is locked by another connection",
            Fault::Io => "the database cannot be read or written (I/O error)",
            Fault::Connection => "the connection to the database was lost",
            Fault::Database => "the database refused the commit",
        }
    }
}

pub struct Health {
    available: AtomicBool,
    fault: Mutex<Option<Fault>>,
    /// Cancelled once a commit found this node's lease gone (never undone).
    fenced: CancellationToken,
    /// Streams the writer ends itself (`store_unavailable`): their generations must
    /// write nothing more.
    doomed: Mutex<HashSet<Arc<str>>>,
    any_doomed: AtomicBool,
    /// Bumped whenever streams are added to `doomed`, so their generations stop.
    doom_changes: watch::Sender<u64>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            available: AtomicBool::new(true),
            fault: Mutex::new(None),
            fenced: CancellationToken::new(),
            doomed: Mutex::new(HashSet::new()),
            any_doomed: AtomicBool::new(false),
            doom_changes: watch::channel(0).0,
        }
    }
}

impl Health {
    /// Whether the last commit succeeded (and the node is not fenced).
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Why the store does not accept writes, while it does not.
    pub fn reason(&self) -> Option<String> {
        if self.fenced.is_cancelled() {
            return Some("this node's lease is gone; its writes are fenced".to_owned());
        }
        if self.available() {
            return None;
        }
        let fault = *lock(&self.fault);
        Some(format!(
            "commits are failing: {}",
            fault.map_or("unknown error", Fault::describe)
        ))
    }

    pub fn fenced(&self) -> CancellationToken {
        self.fenced.clone()
    }

    pub fn is_doomed(&self, id: &str) -> bool {
        self.any_doomed.load(Ordering::Acquire) && lock(&self.doomed).contains(id)
    }

    /// A receiver that changes whenever streams are doomed.
    pub fn doom_changes(&self) -> watch::Receiver<u64> {
        self.doom_changes.subscribe()
    }

    pub(super) fn failing(&self, fault: Fault) {
        *lock(&self.fault) = Some(fault);
        self.available.store(false, Ordering::Relaxed);
    }

    pub(super) fn recovered(&self) {
        self.available.store(true, Ordering::Relaxed);
    }

    pub(super) fn fence(&self) {
        self.available.store(false, Ordering::Relaxed);
        self.fenced.cancel();
    }

    pub(super) fn doom(&self, ids: impl IntoIterator<Item = Arc<str>>) {
        let mut doomed = lock(&self.doomed);
        doomed.extend(ids);
        self.any_doomed.store(!doomed.is_empty(), Ordering::Release);
        drop(doomed);
        self.doom_changes.send_modify(|n| *n += 1);
    }

    pub(super) fn undoom(&self, id: &str) {
        let mut doomed = lock(&self.doomed);
        doomed.remove(id);
        self.any_doomed.store(!doomed.is_empty(), Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Held for one set or field operation only, never across an `.await`.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doomed_stream_is_known_until_it_is_released() {
        let h = Health::default();
        let changes = h.doom_changes();
        assert!(!h.is_doomed("a"));
        h.doom([Arc::from("a")]);
        assert!(changes.has_changed().unwrap());
        assert!(h.is_doomed("a") && !h.is_doomed("b"));
        h.undoom("a");
        assert!(!h.is_doomed("a"));
    }

    #[test]
    fn the_reason_names_the_fault() {
        let h = Health::default();
        assert_eq!(h.reason(), None);
        h.failing(Fault::DiskFull);
        assert!(h.reason().unwrap().contains("disk is full"));
        h.recovered();
        assert_eq!(h.reason(), None);
        h.fence();
        assert!(h.reason().unwrap().contains("fenced"));
        assert!(!h.available());
    }
}
