//! Directories of files kept as caches, bounded by size: a file's modification time is its last
//! use ([`touch`]), and [`evict`] removes the least recently used past a cap. Shared by the
//! sandbox's compiled-code cache and the agent's module cache.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Marks `path` as just used. Opened for reading: the owner of a read-only entry (as kept
/// inputs are) may still set its times. A file that cannot be touched is still a cache entry.
pub(crate) fn touch(path: &Path) {
    let _ = std::fs::File::open(path).and_then(|f| f.set_modified(SystemTime::now()));
}

/// Removes the least recently used files of `dir` whose names end with `suffix` until those
/// left hold at most `max_bytes`; never `keep` (the entry about to be used, which may alone
/// be larger than the cap).
pub(crate) fn evict(dir: &Path, suffix: &str, max_bytes: u64, keep: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter(|e| keep.is_none_or(|k| e.path() != k))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= max_bytes {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => total -= len,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot evict a cache file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_least_recently_used_go_first_until_the_rest_fit() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(100);
        for (name, age) in [
            ("a.wasm", 10),
            ("b.wasm", 50),
            ("c.wasm", 90),
            ("d.other", 0),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, [0u8; 100]).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old + Duration::from_secs(age))
                .unwrap();
        }
        touch(&dir.path().join("a.wasm"));
        evict(dir.path(), ".wasm", 200, None);
        let left = |n: &str| dir.path().join(n).exists();
        assert!(left("a.wasm"), "the one just used went");
        assert!(!left("b.wasm"), "the least recently used stayed");
        assert!(left("c.wasm"));
        assert!(left("d.other"), "a file of another kind was evicted");
    }
}
