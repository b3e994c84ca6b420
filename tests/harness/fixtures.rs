//! The WAT modules tests share, kept as files in `tests/fixtures/` (each file's first lines say
//! what it does). Three are templates, filled here: [`spinner`], [`exit`] and [`sleep`].

use std::path::PathBuf;

/// `tests/fixtures/NAME.wat`.
pub fn path(name: &str) -> PathBuf {
    crate::repo_root()
        .join("tests/fixtures")
        .join(format!("{name}.wat"))
}

/// The text of `tests/fixtures/NAME.wat`.
pub fn wat(name: &str) -> String {
    let path = path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A WASI command that spins `spins` times, then writes `text` to stdout.
pub fn spinner(spins: u32, text: &str) -> String {
    wat("spinner")
        .replace("{spins}", &spins.to_string())
        .replace("{len}", &text.len().to_string())
        .replace("{text}", &text.replace('\n', "\\n"))
}

/// A guest that reports progress 1/1, then sleeps for `time` parked in a WASI host call.
pub fn sleep(time: std::time::Duration) -> String {
    wat("sleep").replace("{nanos}", &time.as_nanos().to_string())
}

/// A module whose `functions` functions each nest `depth` loops: valid, within admission's
/// limits for a depth up to 4,096, and slow and memory-hungry to compile (Cranelift's cost grows
/// with the square of the depth): 4 functions of 4,000 take about 3 s and 150 MiB in a debug
/// build.
pub fn nested_loops(functions: usize, depth: usize) -> String {
    let function = format!("(func {}{})", "(loop ".repeat(depth), ")".repeat(depth));
    format!(
        r#"(module {} (func (export "_start")))"#,
        function.repeat(functions)
    )
}

/// A WASI command that exits with `code`.
pub fn exit(code: i32) -> String {
    wat("exit").replace("{code}", &code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_every_fixture_parses() {
        let filled = spinner(10, "hi\n");
        assert!(filled.contains("(i32.const 10)") && filled.contains("\"hi\\n\""));
        assert!(filled.contains("(i32.const 3)"), "the length of hi\\n");
        assert!(exit(7).contains("(i32.const 7)"));
        assert!(sleep(std::time::Duration::from_secs(2)).contains("(i64.const 2000000000)"));
        for entry in std::fs::read_dir(crate::repo_root().join("tests/fixtures")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            let text = match name.as_str() {
                "spinner" => spinner(1, "x"),
                "exit" => exit(1),
                "sleep" => sleep(std::time::Duration::from_secs(1)),
                _ => wat(&name),
            };
            wat::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
