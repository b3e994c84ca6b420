//! A small filesystem a test fills, as a full disk would: a tmpfs of a given size mounted on a
//! directory (tests run as root; see `env`), unmounted when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
pub struct Tmpfs {
    mount_point: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`16m`) on `dir`, made if missing.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("making the mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (these tests run as root)",
            dir.display()
        );
        Tmpfs {
            mount_point: dir.to_path_buf(),
        }
    }

    /// Fills what is left of it with `<dir>/filler`; answers the bytes written.
    pub fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(self.filler()).expect("creating the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        // Whole chunks, then single bytes: nothing is left free.
        for size in [chunk.len(), 4096, 1] {
            loop {
                match file.write(&chunk[..size]) {
                    Ok(n) if n > 0 => written += n as u64,
                    _ => break,
                }
            }
        }
        written
    }

    /// Fills it with `<dir>/filler` until about `left` bytes are free (to the page).
    pub fn fill_leaving(&self, left: u64) {
        let stat = rustix::fs::statvfs(&self.mount_point).expect("statvfs of the tmpfs");
        let free = stat.f_bavail * stat.f_frsize;
        let size = free.saturating_sub(left) / 4096 * 4096;
        let mut file = std::fs::File::create(self.filler()).expect("creating the filler");
        let chunk = vec![0xa5u8; 4096];
        for _ in 0..size / 4096 {
            file.write_all(&chunk).expect("writing the filler");
        }
    }

    /// Frees what [`Tmpfs::fill`] or [`Tmpfs::fill_leaving`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler");
    }

    fn filler(&self) -> PathBuf {
        self.mount_point.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process killed a moment ago may still hold a file open there.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}
