//! How the CLI shows things to people: sizes, durations, ages, tables, and lines written to
//! stdout that report a closed pipe as an error (which `main` turns into a quiet exit, as Unix
//! tools do under `| head`) instead of panicking as `println!` does.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Ignores a write to a closed stdout or stderr: a command whose exit status says something
/// (how a task ended) says it whether or not its reader is still there.
pub fn ignore_closed_pipe(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` and a newline to stdout.
pub fn line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")
}

/// Writes `value` as one line of JSON to stdout.
pub fn json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    line(&text)
}

/// Writes `value`'s fields to stdout, one `key value` line each in the JSON's (alphabetical)
/// order: `-` for an empty string or null, other values as JSON.
pub fn fields(value: &impl serde::Serialize) -> std::io::Result<()> {
    let value = serde_json::to_value(value).map_err(std::io::Error::other)?;
    for (key, v) in value.as_object().into_iter().flatten() {
        let cell = match v {
            serde_json::Value::String(s) => dash(s),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        line(&format!("{key:<20} {cell}"))?;
    }
    Ok(())
}

/// Writes raw bytes (a guest's output) to stdout and flushes.
pub fn raw(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// A size, compact: `1.5MiB`.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes)
        .display()
        .iec()
        .to_string()
        .replace(' ', "")
}

/// A run's wall time: microseconds below a millisecond (`850µs`), then milliseconds
/// (`2.95ms`), then seconds (`1.20s`).
pub fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// How long ago a time (ms since the epoch) was: `42s`, `3m`, `5h`, `2d`.
pub fn age(ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let secs = u64::try_from(now.saturating_sub(ms).max(0) / 1000).unwrap_or(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `-` for an empty cell.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Writes rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let format = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_string()
    };
    line(&format(header))?;
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&format(&cells))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_under_a_millisecond_print_microseconds() {
        assert_eq!(duration(Duration::ZERO), "0µs");
        assert_eq!(duration(Duration::from_micros(850)), "850µs");
        assert_eq!(duration(Duration::from_micros(2_950)), "2.95ms");
        assert_eq!(duration(Duration::from_millis(1_200)), "1.20s");
    }

    #[test]
    fn sizes_are_compact() {
        assert_eq!(size(1536 * 1024), "1.5MiB");
        assert_eq!(size(0), "0B");
    }
}
