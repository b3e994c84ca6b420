//! The free space of the host's data dir, and the check that refuses new work while too
//! little would be left of it ([`HostConfig::min_free_disk`](crate::config::HostConfig)).
//!
//! A full disk fails the store's commits, and the host recovers by reopening the store (see
//! [`crate::control`]); but a result the host could not keep costs an agent's work, and a
//! tenant's large submits could fill the disk again and again. So the room is kept for what
//! the host has already accepted (final reports, agents' records): a new task or module that
//! would leave less than `min_free_disk` is refused as `RESOURCE_EXHAUSTED`, saying why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytesize::ByteSize;

use crate::error::HostError;

/// How long a reading of the free space stands (less what was accepted since).
const FRESH: Duration = Duration::from_millis(100);

/// The data dir's free space, read with `statvfs` at most every [`FRESH`].
#[derive(Debug)]
pub struct FreeSpace {
    dir: PathBuf,
    keep: u64,
    /// The last reading, and the bytes free then less those accepted since.
    last: Mutex<Option<(Instant, u64)>>,
    /// A failed reading was reported (once).
    warned: AtomicBool,
}

impl FreeSpace {
    /// Keeps `keep` bytes free on the filesystem of `dir`; 0 checks nothing.
    pub fn new(dir: &Path, keep: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keep,
            last: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Refuses a new `what` that would write about `bytes` when less than the room kept would
    /// be left; otherwise counts the bytes as taken until the next reading. When the free
    /// space cannot be read, takes it (the store's own failure handling stands behind).
    pub fn take(&self, bytes: u64, what: &str) -> Result<(), HostError> {
        if self.keep == 0 {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (at, free) = match *last {
            Some((at, free)) if at.elapsed() < FRESH => (at, free),
            _ => match rustix::fs::statvfs(&self.dir) {
                Ok(stat) => (Instant::now(), stat.f_bavail.saturating_mul(stat.f_frsize)),
                Err(e) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            dir = %self.dir.display(),
                            error = %e,
                            "cannot read the data dir's free space: min_free_disk is not checked"
                        );
                    }
                    return Ok(());
                }
            },
        };
        if free < self.keep.saturating_add(bytes) {
            *last = Some((at, free));
            return Err(HostError::Exhausted(format!(
                "the host's disk is nearly full: {} free on its data dir, and it keeps {} \
                 (min_free_disk) for the results of tasks already accepted, so it takes no new \
                 {what} of {} until space is freed",
                ByteSize::b(free),
                ByteSize::b(self.keep),
                ByteSize::b(bytes)
            )));
        }
        *last = Some((at, free - bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_would_eat_into_the_room_kept_is_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let free = {
            let stat = rustix::fs::statvfs(dir.path()).unwrap();
            stat.f_bavail * stat.f_frsize
        };
        // Keep all but 1 MiB: a 512 KiB task fits once, not twice within one reading.
        let space = FreeSpace::new(dir.path(), free - (1 << 20));
        space.take(512 << 10, "task").unwrap();
        let e = space.take(768 << 10, "task").unwrap_err().to_string();
        assert!(e.contains("min_free_disk") && e.contains("task"), "{e}");
        // Nothing is kept: anything goes.
        assert!(FreeSpace::new(dir.path(), 0)
            .take(u64::MAX, "module")
            .is_ok());
        // Keeping more than the disk has refuses even an empty task.
        assert!(FreeSpace::new(dir.path(), u64::MAX)
            .take(0, "task")
            .is_err());
    }
}
