//! Reading the task's input: arguments, environment, stdin and granted files.
//!
//! A Corral task sees only what it was given: the arguments and environment in its spec, the
//! stdin bytes, and the directories it was granted (opened by their guest path, e.g.
//! `/data/train.csv`).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The task's arguments, without `argv[0]`.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// An environment variable of the task, if it was given.
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// All of stdin.
pub fn stdin_bytes() -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin().lock().read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// All of a file in a granted directory.
pub fn read_file(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Reads the named file, or stdin when `path` is `None`: the bytes, for a parser that checks
/// them itself ([`crate::csv::parse_bytes`] does). The error names the source.
pub fn read_bytes(path: Option<&str>) -> Result<Vec<u8>, String> {
    match path {
        Some(path) => read_file(path).map_err(|e| format!("cannot read {path}: {e}")),
        None => stdin_bytes().map_err(|e| format!("cannot read stdin: {e}")),
    }
}

/// Reads the named file, or stdin when `path` is `None`, as UTF-8 text. The error names the
/// source.
pub fn read_text(path: Option<&str>) -> Result<String, String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.unwrap_or("stdin"),
            e.utf8_error().valid_up_to()
        )
    })
}

/// The task's writable output directory, when one was granted: `$CORRAL_OUTPUT_DIR`.
pub fn output_dir() -> Option<PathBuf> {
    env("CORRAL_OUTPUT_DIR").map(PathBuf::from)
}

/// Writes `bytes` to `name` inside the output directory. The error says when none was granted.
pub fn write_output(name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let dir = output_dir().ok_or_else(|| {
        "no output directory was granted (CORRAL_OUTPUT_DIR is unset)".to_string()
    })?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}
