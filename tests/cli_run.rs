//! `corral run` as a user runs it: a real process, its stdout, stderr and exit status.

use std::path::{Path, PathBuf};

use corral_tests::{corral, corral_json, fixtures, run};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn text_output_separates_guest_output_from_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let module = fixtures::path("hello");
    let out = run(
        &corral(),
        &["run", module.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut lines = stderr.lines();
    assert_eq!(lines.next(), Some("oops"));
    let summary = lines.next().unwrap();
    assert!(
        summary.starts_with("corral: success fuel_used="),
        "{summary}"
    );
    assert!(summary.contains("peak_memory=64.0KiB"), "{summary}");

    let quiet = run(
        &corral(),
        &["run", "-q", module.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(quiet.stderr, b"oops\n");
}

#[test]
fn json_output_has_every_documented_field() {
    let dir = tempfile::tempdir().unwrap();
    let module = fixtures::path("hello");
    let (report, status) = corral_json(&[], &module, &[], dir.path());
    assert_eq!(status, 0);
    for field in [
        "outcome",
        "exit_code",
        "message",
        "fuel_used",
        "peak_memory_bytes",
        "wall_ms",
        "compile_ms",
        "guest_warnings",
        "cached",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
    ] {
        assert!(report.get(field).is_some(), "missing {field} in {report}");
    }
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["message"], serde_json::Value::Null);
    assert_eq!(report["stdout"], "hello\n");
    assert_eq!(report["stderr"], "oops\n");
    assert_eq!(report["peak_memory_bytes"], 65536);
    assert!(report["fuel_used"].as_u64().unwrap() > 0);
}

#[test]
fn each_outcome_has_its_documented_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let (exit7, forever) = (fixtures::exit(7), fixtures::wat("forever"));
    let cases: &[(&str, &str, &[&str], &str, i32)] = &[
        ("exit.wat", &exit7, &[], "exit", 7),
        (
            "spin.wat",
            &forever,
            &["--fuel", "10000"],
            "out_of_fuel",
            130,
        ),
        (
            "spin2.wat",
            &forever,
            &["--fuel", "1000000000000000", "--timeout", "200ms"],
            "timeout",
            132,
        ),
        (
            "grow.wat",
            r#"(module (memory 1) (func (export "_start") (loop (drop (memory.grow (i32.const 1))) br 0)))"#,
            &["--memory", "1MiB", "--fuel", "100000"],
            "memory_limit",
            131,
        ),
        (
            "deep.wat",
            r#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#,
            &[],
            "stack_overflow",
            129,
        ),
        (
            "trap.wat",
            r#"(module (func (export "_start") unreachable))"#,
            &[],
            "trap",
            128,
        ),
        (
            "link.wat",
            r#"(module (import "env" "nope" (func)) (func (export "_start")))"#,
            &[],
            "link_error",
            127,
        ),
        (
            "bad.wat",
            "(module (func (export \"_start\") i32.add))",
            &[],
            "invalid_module",
            126,
        ),
    ];
    for (name, text, flags, outcome, status) in cases {
        let module = write(dir.path(), name, text);
        let (report, code) = corral_json(flags, &module, &[], dir.path());
        assert_eq!(report["outcome"], *outcome, "{name}: {report}");
        assert_eq!(code, *status, "{name}");
        if matches!(*outcome, "trap" | "link_error" | "invalid_module") {
            assert!(
                report["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{report}"
            );
        }
    }
}

#[test]
fn a_second_process_reuses_the_compiled_module() {
    let dir = tempfile::tempdir().unwrap();
    let module = fixtures::path("hello");
    let cache = dir.path().join("cache");
    let (first, _) = corral_json(
        &["--cache-dir", cache.to_str().unwrap()],
        &module,
        &[],
        dir.path(),
    );
    let (second, _) = corral_json(
        &["--cache-dir", cache.to_str().unwrap()],
        &module,
        &[],
        dir.path(),
    );
    assert_eq!(first["cached"], false);
    assert_eq!(second["cached"], true);
    let (uncached, _) = corral_json(&["--no-cache"], &module, &[], dir.path());
    assert_eq!(uncached["cached"], false);
}

#[test]
fn compiling_obeys_its_budget_counts_in_the_run_and_ends_as_compile_limit() {
    let dir = tempfile::tempdir().unwrap();
    let slow = write(dir.path(), "slow.wat", &fixtures::nested_loops(4, 4000));
    let cases: &[(&[&str], &str, i32, &str)] = &[
        (
            &["--compile-timeout", "300ms"],
            "compile_limit",
            137,
            "compile time budget of 300ms",
        ),
        (
            &["--compile-memory", "64MiB"],
            "compile_limit",
            137,
            "compile memory budget of 64.0 MiB",
        ),
        // The task's own timeout comes before the compile budget: it is the task's timeout.
        (&["--timeout", "300ms"], "timeout", 132, ""),
    ];
    for (flags, outcome, status, message) in cases {
        let mut flags = flags.to_vec();
        flags.push("--no-cache");
        let (report, code) = corral_json(&flags, &slow, &[], dir.path());
        assert_eq!(report["outcome"], *outcome, "{flags:?}: {report}");
        assert_eq!(code, *status, "{flags:?}");
        let said = report["message"].as_str().unwrap_or_default();
        assert!(said.contains(message), "{flags:?}: {report}");
        // Compiling counts in the run's wall time.
        let wall = report["wall_ms"].as_f64().unwrap();
        assert!(wall >= 300.0, "{flags:?}: {report}");
        assert_eq!(report["compile_ms"].as_f64().unwrap(), wall, "{report}");
    }
    // Within the budget it compiles and runs, and its compile is part of its wall time.
    let (report, code) = corral_json(&["--no-cache"], &slow, &[], dir.path());
    assert_eq!(
        (report["outcome"].as_str(), code),
        (Some("success"), 0),
        "{report}"
    );
    let (wall, compile) = (
        report["wall_ms"].as_f64().unwrap(),
        report["compile_ms"].as_f64().unwrap(),
    );
    assert!(compile > 100.0 && wall >= compile, "{report}");
    // An absurd module is refused by admission before it costs anything, naming the limit.
    let bomb = write(dir.path(), "bomb.wat", &fixtures::nested_loops(1, 20_000));
    let (report, code) = corral_json(&[], &bomb, &[], dir.path());
    assert_eq!(
        (report["outcome"].as_str(), code),
        (Some("invalid_module"), 126)
    );
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("more than 4096 deep"),
        "{report}"
    );
    // Too small a budget for the compiler to start is a usage error.
    let out = run(
        &corral(),
        &["run", "--compile-memory", "1MiB", slow.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(134));
}

#[test]
fn a_scribbled_cache_entry_is_discarded_with_a_warning_and_compiled_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let module = fixtures::path("hello");
    let cache = dir.path().join("cache");
    let flags = ["--cache-dir", cache.to_str().unwrap()];
    let (first, _) = corral_json(&flags, &module, &[], dir.path());
    assert_eq!(first["cached"], false);
    let code = cache.join("code");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&code), 0o700, "the cache is private to its user");
    let entries: Vec<PathBuf> = std::fs::read_dir(&code)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(mode(&entries[0]), 0o600);
    // Sixteen bytes scribbled in the middle of the compiled code, eight times over, at
    // different places: every run succeeds, from code compiled again.
    let whole = std::fs::read(&entries[0]).unwrap();
    for round in 0..8usize {
        let mut bytes = whole.clone();
        let at = 64 + (bytes.len() - 80) * round / 8;
        for (i, b) in bytes[at..at + 16].iter_mut().enumerate() {
            *b ^= 0xa5 ^ (i as u8).wrapping_mul(37) ^ round as u8;
        }
        std::fs::write(&entries[0], &bytes).unwrap();
        let mut all = vec!["run", "-o", "json"];
        all.extend_from_slice(&flags);
        all.push(module.to_str().unwrap());
        let out = run(&corral(), &all, None, dir.path());
        assert_eq!(out.status.code(), Some(0), "round {round}: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["outcome"], "success");
        assert_eq!(
            report["cached"], false,
            "round {round}: the damaged entry was used"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("discarding a damaged compiled-code cache entry"),
            "round {round}: {stderr}"
        );
    }
    let (again, _) = corral_json(&flags, &module, &[], dir.path());
    assert_eq!(again["cached"], true, "the entry was written again");
}

#[test]
fn a_large_stdin_is_streamed_to_the_guest_not_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 1 GiB (sparse, so it costs no disk) under a data limit of 600 MiB: holding it whole
    // would fail; streaming needs the pool's tables (about 200 MiB) and 64 KiB at a time.
    let big = dir.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let module = fixtures::path("count_stdin");
    for stdin in [
        &format!("--stdin {}", big.display()),
        &format!("--stdin - < {}", big.display()),
    ] {
        let script = format!(
            "ulimit -S -d {}; exec {} run -q --cache-dir {} {stdin} {}",
            600 << 10,
            corral().display(),
            dir.path().join("cache").display(),
            module.display(),
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n", 1u64 << 30)
        );
    }
}

#[test]
fn env_args_and_stdin_reach_the_guest_and_nothing_else_does() {
    // Exits with env count + 10 * arg count.
    let counter = r#"(module
      (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $env (i32.const 0) (i32.const 4)))
        (drop (call $args (i32.const 8) (i32.const 12)))
        (call $exit (i32.add (i32.load (i32.const 0)) (i32.mul (i32.load (i32.const 8)) (i32.const 10))))))"#;
    let dir = tempfile::tempdir().unwrap();
    let module = write(dir.path(), "count.wat", counter);
    let (report, code) = corral_json(&[], &module, &[], dir.path());
    assert_eq!((report["outcome"].as_str(), code), (Some("exit"), 10));
    let (_, code) = corral_json(
        &["--env", "A=1", "--env", "PATH"],
        &module,
        &["x", "--y"],
        dir.path(),
    );
    assert_eq!(code, 32);
}

#[test]
fn bad_input_gets_a_clear_error_and_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let module = fixtures::path("hello");
    let corral = corral();

    let out = run(
        &corral,
        &["run", "--memory", "lots", module.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(134));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"lots\" is not a size"));

    let out = run(
        &corral,
        &["run", "--frobnicate", module.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(134));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));

    let out = run(&corral, &["run", "missing.wasm"], None, dir.path());
    assert_eq!(out.status.code(), Some(133));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read module missing.wasm"));

    let out = run(
        &corral,
        &[
            "run",
            "--dir",
            "/nonexistent/corral::/data",
            module.to_str().unwrap(),
        ],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(133));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/corral"));

    let out = run(
        &corral,
        &["run", "--env", "NO_SUCH_VAR_X1", module.to_str().unwrap()],
        None,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(133));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_VAR_X1"));

    let (report, code) = corral_json(&["--max-module-size", "100B"], &module, &[], dir.path());
    assert_eq!(
        (report["outcome"].as_str(), code),
        (Some("invalid_module"), 126)
    );
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("over the 100-byte cap"),
        "{report}"
    );

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(
        &garbage,
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff],
    )
    .unwrap();
    let (report, code) = corral_json(&[], &garbage, &[], dir.path());
    assert_eq!(
        (report["outcome"].as_str(), code),
        (Some("invalid_module"), 126)
    );
}

#[test]
fn version_and_help_succeed_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let version = run(&corral(), &["--version"], None, dir.path());
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("corral {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run(&corral(), &["run", "--help"], None, dir.path());
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--env",
        "--dir",
        "--dir-ro",
        "--fuel",
        "--memory",
        "--timeout",
        "--stdin",
        "--max-output",
        "--output",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn a_reader_that_stops_early_does_not_change_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let trap = write(
        dir.path(),
        "trap.wat",
        r#"(module (func (export "_start") unreachable))"#,
    );
    for format in ["text", "json"] {
        let mut child = std::process::Command::new(corral())
            .args(["run", "-o", format, trap.to_str().unwrap()])
            .env("CORRAL_CACHE_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Like `| head -0`: the reader is gone before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(128),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}
