//! The on-disk cache of compiled code, shared by every process that uses the same directory,
//! and verified before anything in it is trusted.
//!
//! Loading compiled code runs it as native code, so a scribbled entry (a failing disk, a crash
//! while it was written, a stray write) must never reach the engine. Each entry is
//! `<dir>/<module sha256>-<engine fingerprint>.cwasm`: [`ENTRY_MAGIC`], the sha256 of the
//! artifact, then the artifact. [`CodeCache::load`] reads the whole entry into memory, checks
//! the magic and the digest, and only then hands the bytes on; an entry that fails is removed
//! with a warning and the module is compiled again. The bytes are checked in memory and loaded
//! from that same memory, so the file changing after the check cannot matter.
//!
//! The engine fingerprint (wasmtime's compatibility hash of the engine's settings and version,
//! and Corral's version) keeps entries of differently configured engines apart. The directory is
//! created private to its user (0700) and entries are written 0600, through a temporary file
//! renamed into place. The cache is bounded: past [`CodeCache::max_bytes`] the least recently
//! used entries are removed.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// Starts every cache entry.
pub(crate) const ENTRY_MAGIC: &[u8; 8] = b"CORRALC1";
/// Temporary files older than this are a dead writer's and are removed.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Compiled code that matched the sha256 framed with it (a cache entry's, recorded when it was
/// written, or a compile worker's): the only bytes [`super::modules`] deserialises. Made only
/// by [`Verified::unframe`].
pub(crate) struct Verified(Vec<u8>);

impl Verified {
    /// The code inside `framed` (`magic`, the sha256 of the code, the code), once the magic and
    /// the digest check out.
    pub(crate) fn unframe(mut framed: Vec<u8>, magic: &[u8; 8]) -> Result<Self, &'static str> {
        let header = magic.len() + 32;
        if framed.len() < header || &framed[..magic.len()] != magic {
            return Err("it is not framed as compiled code (bad magic, or too short)");
        }
        let (digest, code) = framed[magic.len()..].split_at(32);
        if Sha256::digest(code).as_slice() != digest {
            return Err("its contents do not match the digest recorded with them");
        }
        framed.drain(..header);
        Ok(Self(framed))
    }

    /// The code.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A directory of verified compiled-code entries.
pub(crate) struct CodeCache {
    dir: PathBuf,
    fingerprint: String,
    /// Entries are evicted, least recently used first, past this many bytes.
    pub(crate) max_bytes: u64,
}

impl CodeCache {
    /// Opens (creating, private to this user) the cache in `dir` for code of `engine`.
    pub(crate) fn open(dir: &Path, engine: &Engine, max_bytes: u64) -> std::io::Result<Self> {
        private_dir(dir)?;
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let fingerprint = hex(&hasher.0.finalize()[..8]);
        let cache = Self {
            dir: dir.to_path_buf(),
            fingerprint,
            max_bytes,
        };
        cache.remove_stale_temps();
        Ok(cache)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.fingerprint))
    }

    /// The entry for module `sha256`, verified; `None` when there is none or it was bad (then
    /// it is removed, with a warning).
    pub(crate) fn load(&self, sha256: &str) -> Option<Verified> {
        let path = self.path(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a compiled-code cache entry: compiling again");
                return None;
            }
        };
        match Verified::unframe(bytes, ENTRY_MAGIC) {
            Ok(verified) => {
                // Its use, for eviction.
                crate::lru::touch(&path);
                Some(verified)
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), reason, "discarding a damaged compiled-code cache entry: compiling again");
                self.discard(sha256);
                None
            }
        }
    }

    /// Removes the entry for module `sha256`.
    pub(crate) fn discard(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.path(sha256));
    }

    /// Stores `artifact` as the entry for module `sha256`, then evicts past the cap. A cache
    /// that cannot be written is only slower: the failure is a warning.
    pub(crate) fn store(&self, sha256: &str, artifact: &[u8]) {
        if let Err(e) = self.write(sha256, artifact) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write to the compiled-code cache");
        }
        self.evict();
    }

    fn write(&self, sha256: &str, artifact: &[u8]) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(sha256);
        let temp = self.dir.join(format!(
            ".{sha256}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(ENTRY_MAGIC)?;
            file.write_all(&Sha256::digest(artifact))?;
            file.write_all(artifact)?;
            std::fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// Removes the least recently used entries until the cache holds at most
    /// [`CodeCache::max_bytes`].
    fn evict(&self) {
        crate::lru::evict(&self.dir, ".cwasm", self.max_bytes, None);
    }

    fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let stale = entry.file_name().to_string_lossy().ends_with(".tmp")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Creates `dir` (and its parents) if missing, and makes it private to this user.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Feeds `Hash` into a sha256, so that a fingerprint is the same in every process.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max_bytes: u64) -> CodeCache {
        let engine = Engine::default();
        CodeCache::open(dir, &engine, max_bytes).unwrap()
    }

    #[test]
    fn an_entry_comes_back_verified_and_a_scribbled_one_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("code"), 1 << 20);
        let sha = "ab".repeat(32);
        cache.store(&sha, b"native code");
        assert_eq!(cache.load(&sha).unwrap().bytes(), b"native code");
        // 16 bytes scribbled over the artifact.
        let path = cache.path(&sha);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 11;
        bytes[at..].copy_from_slice(&[0x5a; 11]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(cache.load(&sha).is_none());
        assert!(!path.exists(), "the damaged entry was kept");
        // Truncated, empty and foreign files are refused alike.
        for damaged in [
            &bytes[..20],
            &b""[..],
            &b"\x7fELF and then some native code"[..],
        ] {
            std::fs::write(&path, damaged).unwrap();
            assert!(cache.load(&sha).is_none());
            assert!(!path.exists());
        }
    }

    #[test]
    fn the_directory_and_its_entries_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("a").join("code");
        std::fs::create_dir_all(&code).unwrap();
        std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o777)).unwrap();
        let cache = cache(&code, 1 << 20);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&code), 0o700);
        let sha = "cd".repeat(32);
        cache.store(&sha, b"x");
        assert_eq!(mode(&cache.path(&sha)), 0o600);
    }

    #[test]
    fn past_its_cap_the_least_recently_used_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let entry = 1000u64;
        let cache = cache(dir.path(), 2 * (entry + 40));
        let shas: Vec<String> = ["01", "02", "03"].iter().map(|s| s.repeat(32)).collect();
        let old = std::time::SystemTime::now() - Duration::from_secs(100);
        cache.store(&shas[0], &vec![1; entry as usize]);
        cache.store(&shas[1], &vec![2; entry as usize]);
        for (sha, age) in [(&shas[0], 50), (&shas[1], 10)] {
            std::fs::File::options()
                .write(true)
                .open(cache.path(sha))
                .unwrap()
                .set_modified(old + Duration::from_secs(age))
                .unwrap();
        }
        // Using the older one makes the other the least recently used.
        assert!(cache.load(&shas[0]).is_some());
        cache.store(&shas[2], &vec![3; entry as usize]);
        assert!(cache.path(&shas[0]).exists());
        assert!(
            !cache.path(&shas[1]).exists(),
            "the least recently used was kept"
        );
        assert!(cache.path(&shas[2]).exists());
    }

    #[test]
    fn engines_configured_differently_use_different_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = CodeCache::open(dir.path(), &Engine::default(), 1 << 20).unwrap();
        let mut other = wasmtime::Config::new();
        other.consume_fuel(true);
        let b = CodeCache::open(dir.path(), &Engine::new(&other).unwrap(), 1 << 20).unwrap();
        let sha = "ef".repeat(32);
        assert_ne!(a.path(&sha), b.path(&sha));
    }
}
