//! The free space of the host's data dir, and the check that refuses new work while too
//! little would be left of it ([`HostConfig::min_free_disk`](crate::config::HostConfig)).
//!
//! A full disk fails the store's commits, and the host recovers by reopening the store (see
//! [`crate::control`]); but a result the host could not keep costs an agent's work, and a
//! tenant's large submits could fill the disk again and again. So some headroom is kept for
//! what the host has already accepted (final reports, agents' records): a new task or module
//! that would leave less than `min_free_disk` is refused as `RESOURCE_EXHAUSTED`, saying why.
//! It is headroom, not a reservation per task: results larger than it in all can still fill
//! the disk, and then the store's recovery stands behind.
//!
//! The free space is read with `statvfs` every 100 ms on a blocking thread (a hung network
//! filesystem stalls that thread, never the host), and the actor checks against the last
//! reading less what it accepted that is not yet on disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytesize::ByteSize;

use crate::error::HostError;

/// How often the free space is read.
const PERIOD: Duration = Duration::from_millis(100);
/// A reading that could not be taken: nothing is refused.
const UNKNOWN: u64 = u64::MAX;

/// The room kept on the data dir's disk, as the actor checks it.
#[derive(Debug)]
pub struct FreeSpace {
    keep: u64,
    /// Bytes free at the last reading, or [`UNKNOWN`].
    reading: Arc<AtomicU64>,
    /// New work is being refused (logged when it starts and when it ends).
    refusing: bool,
}

impl FreeSpace {
    /// Keeps `keep` bytes free on the filesystem of `dir` (0 checks nothing), reading it every
    /// 100 ms until this is dropped. Must be called inside a tokio runtime.
    pub fn watch(dir: &Path, keep: u64) -> Self {
        let reading = Arc::new(AtomicU64::new(UNKNOWN));
        if keep > 0 {
            tokio::spawn(read_every_period(
                dir.to_path_buf(),
                Arc::downgrade(&reading),
            ));
        }
        Self {
            keep,
            reading,
            refusing: false,
        }
    }

    /// A check against a fixed reading: for tests.
    pub fn fixed(free: u64, keep: u64) -> Self {
        Self {
            keep,
            reading: Arc::new(AtomicU64::new(free)),
            refusing: false,
        }
    }

    /// Whether a new `what` that would write about `bytes`, with `pending` bytes accepted and
    /// not yet on disk, leaves the room kept; refused, saying why, when it does not.
    pub fn check(&mut self, pending: u64, bytes: u64, what: &str) -> Result<(), HostError> {
        let free = self.reading.load(Ordering::Relaxed);
        if self.keep == 0 || free == UNKNOWN {
            return Ok(());
        }
        let left = free.saturating_sub(pending);
        if left >= self.keep.saturating_add(bytes) {
            if std::mem::take(&mut self.refusing) {
                tracing::info!(free = %ByteSize::b(left), "the data dir has room again: new work is taken");
            }
            return Ok(());
        }
        if !std::mem::replace(&mut self.refusing, true) {
            tracing::warn!(
                free = %ByteSize::b(left),
                min_free_disk = %ByteSize::b(self.keep),
                "the data dir's disk is nearly full: new tasks and modules are refused"
            );
        }
        Err(HostError::Exhausted(format!(
            "the host's disk is nearly full: {} free on its data dir, and it keeps {} \
             (min_free_disk) for the results of tasks already accepted, so it takes no new \
             {what} of {} until space is freed",
            ByteSize::b(left),
            ByteSize::b(self.keep),
            ByteSize::b(bytes)
        )))
    }
}

/// Reads `dir`'s free space into `reading` every [`PERIOD`], until the reading is dropped.
async fn read_every_period(dir: std::path::PathBuf, reading: Weak<AtomicU64>) {
    let mut warned = false;
    loop {
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir)).await
        };
        let Some(reading) = reading.upgrade() else {
            return;
        };
        let free = match read {
            Ok(Ok(stat)) => stat.f_bavail.saturating_mul(stat.f_frsize).min(UNKNOWN - 1),
            Ok(Err(e)) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        "cannot read the data dir's free space: min_free_disk is not checked"
                    );
                }
                UNKNOWN
            }
            Err(_) => UNKNOWN,
        };
        reading.store(free, Ordering::Relaxed);
        drop(reading);
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_would_eat_into_the_room_kept_is_refused_naming_the_setting() {
        const MIB: u64 = 1 << 20;
        let mut space = FreeSpace::fixed(10 * MIB, 8 * MIB);
        space.check(0, 2 * MIB, "task").unwrap();
        let e = space.check(0, 2 * MIB + 1, "task").unwrap_err().to_string();
        assert!(e.contains("min_free_disk") && e.contains("task"), "{e}");
        // What was accepted and is not on disk yet counts as taken.
        assert!(space.check(MIB, MIB + 1, "module").is_err());
        assert!(space.check(MIB, MIB, "module").is_ok());
        // Nothing kept, or nothing known: anything goes.
        assert!(FreeSpace::fixed(0, 0).check(0, u64::MAX, "task").is_ok());
        assert!(FreeSpace::fixed(UNKNOWN, 8 * MIB)
            .check(u64::MAX, u64::MAX, "task")
            .is_ok());
    }
}
