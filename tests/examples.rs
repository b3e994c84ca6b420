//! The ML examples run exactly as their headers say, and each prints the same results built to
//! wasm under `corral run` as built natively.

use std::path::Path;

use corral_tests::build::native;
use corral_tests::{corral, repo_root, run, wasm};

const EXAMPLES: [&str; 4] = ["linreg", "logreg", "kmeans", "svm"];

/// One compiled-code cache for every test here: each guest is compiled once (several seconds in
/// a debug build) and then served from the cache to every later `corral run` process.
fn cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// One `$ ...` line of an example's header.
#[derive(Debug)]
struct HeaderCommand {
    line: String,
    /// The binary to run (the built `corral` or the native example).
    program: std::path::PathBuf,
    args: Vec<String>,
    /// A file fed to stdin with `< FILE`.
    stdin: Option<String>,
    in_corral: bool,
}

fn header_commands(example: &str) -> Vec<HeaderCommand> {
    let source =
        std::fs::read_to_string(repo_root().join(format!("examples/{example}/src/main.rs")))
            .unwrap();
    let mut commands = Vec::new();
    for line in source.lines().filter_map(|l| l.strip_prefix("//!     $ ")) {
        if line == "scripts/build-guests" {
            // Run by scripts/test before the tests; wasm() below checks its products exist.
            continue;
        }
        let (line_args, stdin) = match line.split_once(" < ") {
            Some((args, file)) => (args, Some(file.to_string())),
            None => (line, None),
        };
        let words: Vec<&str> = line_args.split_whitespace().collect();
        let (package, rest) = match words.as_slice() {
            ["cargo", "run", "--release", "-p", package, "--", rest @ ..] => (*package, rest),
            _ => panic!(
                "{example}: header command {line:?} is not `cargo run --release -p PKG -- ...`"
            ),
        };
        let (program, in_corral) = match package {
            "corral" => (corral(), true),
            other => {
                assert_eq!(other, format!("corral-example-{example}"), "{line}");
                (native(example), false)
            }
        };
        commands.push(HeaderCommand {
            line: line.to_string(),
            program,
            args: rest.iter().map(|s| s.to_string()).collect(),
            stdin,
            in_corral,
        });
    }
    commands
}

fn run_header_command(command: &HeaderCommand, cache: &Path) -> String {
    let stdin = command
        .stdin
        .as_ref()
        .map(|file| std::fs::read(repo_root().join(file)).unwrap());
    let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
    let out = run(&command.program, &args, stdin.as_deref(), cache);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`{}` failed: {}",
        command.line,
        String::from_utf8_lossy(&out.stderr)
    );
    if command.in_corral {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("corral: success"),
            "`{}`: {stderr}",
            command.line
        );
    }
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn examples_run_as_their_headers_say_and_match_their_native_builds() {
    for example in EXAMPLES {
        wasm(example);
        let commands = header_commands(example);
        let (in_corral, native): (Vec<_>, Vec<_>) = commands.iter().partition(|c| c.in_corral);
        assert_eq!(
            in_corral.len(),
            2,
            "{example}: two commands under corral run"
        );
        assert_eq!(native.len(), 2, "{example}: two native commands");
        for (wasm_command, native_command) in in_corral.iter().zip(&native) {
            let from_wasm = run_header_command(wasm_command, cache());
            let from_native = run_header_command(native_command, cache());
            assert!(!from_wasm.is_empty());
            assert_eq!(
                from_wasm, from_native,
                "`{}` and `{}` differ",
                wasm_command.line, native_command.line
            );
        }
    }
}

#[test]
fn json_reports_have_their_documented_fields() {
    let fields: [(&str, &[&str]); 4] = [
        (
            "linreg",
            &[
                "intercept",
                "coefficients",
                "train_rows",
                "test_rows",
                "test_mse",
            ],
        ),
        (
            "logreg",
            &[
                "classes",
                "epochs",
                "loss",
                "train_accuracy",
                "test_accuracy",
            ],
        ),
        (
            "kmeans",
            &[
                "k",
                "iterations",
                "converged",
                "inertia",
                "sizes",
                "centers",
                "purity",
            ],
        ),
        (
            "svm",
            &[
                "classes",
                "c",
                "epochs",
                "train_accuracy",
                "test_accuracy",
                "train_rows",
                "test_rows",
            ],
        ),
    ];
    for (example, names) in fields {
        let out = run(
            &native(example),
            &["--json", "examples/data/iris.csv"],
            None,
            cache(),
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for name in names {
            assert!(json.get(name).is_some(), "{example} lacks {name}: {json}");
        }
    }
    // On all of iris, the classic regression from the measurements to the species index.
    let out = run(
        &native("linreg"),
        &["--json", "--test-fraction", "0", "examples/data/iris.csv"],
        None,
        cache(),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let close = |value: &serde_json::Value, expected: f64| {
        (value.as_f64().unwrap() - expected).abs() < 1e-4
    };
    assert!(close(&json["intercept"], 0.18650), "{json}");
    for (i, expected) in [-0.11191, -0.04008, 0.22865, 0.60925]
        .into_iter()
        .enumerate()
    {
        assert!(close(&json["coefficients"][i], expected), "{json}");
    }
    assert_eq!(json["test_mse"], serde_json::Value::Null);
    // Split as scikit-learn splits: `train_test_split(X, y, test_size=0.2, random_state=42)`
    // with `LinearRegression` gives these figures (scikit-learn 1.x, iris as shipped here).
    let out = run(
        &native("linreg"),
        &[
            "--json",
            "--test-fraction",
            "0.2",
            "--seed",
            "42",
            "examples/data/iris.csv",
        ],
        None,
        cache(),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let near = |value: &serde_json::Value, expected: f64| {
        (value.as_f64().unwrap() - expected).abs() < 1e-6
    };
    assert!(near(&json["test_mse"], 0.037114), "{json}");
    assert!(near(&json["intercept"], 0.252528), "{json}");
    for (i, expected) in [-0.116335, -0.059778, 0.254914, 0.547596]
        .into_iter()
        .enumerate()
    {
        assert!(near(&json["coefficients"][i], expected), "{json}");
    }
    assert_eq!(
        (json["train_rows"].as_u64(), json["test_rows"].as_u64()),
        (Some(120), Some(30))
    );
}

/// A deterministic regression and classification set larger than iris.
fn generated_csv(rows: usize) -> String {
    let mut state: u64 = 12345;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let mut csv = String::from("a,b,c,label\n");
    for _ in 0..rows {
        let class = (next() * 3.0) as usize;
        let centre = [0.0, 4.0, 8.0][class];
        let (a, b, c) = (centre + next(), centre - next(), next() * 2.0);
        csv.push_str(&format!("{a:.6},{b:.6},{c:.6},{class}\n"));
    }
    csv
}

#[test]
fn wasm_and_native_agree_on_a_generated_data_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gen.csv"), generated_csv(5000)).unwrap();
    let grant = format!("{}::/data", dir.path().display());
    let data = dir.path().join("gen.csv");
    for (example, extra) in [
        ("linreg", vec!["--seed", "3"]),
        ("logreg", vec!["--epochs", "50"]),
        ("kmeans", vec!["--k", "5"]),
        ("svm", vec!["--epochs", "5"]),
    ] {
        let module = wasm(example);
        let mut corral_args = vec![
            "run",
            "--dir-ro",
            &grant,
            module.to_str().unwrap(),
            "/data/gen.csv",
        ];
        corral_args.extend(&extra);
        let in_corral = run(&corral(), &corral_args, None, cache());
        let mut native_args = vec![data.to_str().unwrap()];
        native_args.extend(&extra);
        let native = run(&native(example), &native_args, None, dir.path());
        assert_eq!(
            in_corral.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&in_corral.stderr)
        );
        assert_eq!(
            String::from_utf8(in_corral.stdout).unwrap(),
            String::from_utf8(native.stdout).unwrap(),
            "{example}"
        );
    }
}

#[test]
fn malformed_csv_is_rejected_naming_the_line_in_wasm_and_natively() {
    let cases: [(&[u8], &str); 2] = [
        (
            b"x,y\n1,2\n3,4\n5,oops\n",
            "line 4: field 2 \"oops\" is not a finite number",
        ),
        (
            b"x,y\n1,2\n3,\xff4\n",
            "line 3: not UTF-8 text (invalid byte at column 3)",
        ),
    ];
    for example in EXAMPLES {
        let module = wasm(example);
        for (csv, message) in cases {
            let in_corral = run(
                &corral(),
                &["run", "-q", "--stdin", "-", module.to_str().unwrap()],
                Some(csv),
                cache(),
            );
            let native = run(&native(example), &[], Some(csv), cache());
            let expected = format!("{example}: {message}\n");
            assert_eq!(String::from_utf8_lossy(&in_corral.stderr), expected);
            assert_eq!(String::from_utf8_lossy(&native.stderr), expected);
            assert_eq!(in_corral.status.code(), Some(2));
            assert_eq!(native.status.code(), Some(2));
        }
    }
}

#[test]
fn an_example_cannot_read_a_file_it_was_not_granted() {
    let module = wasm("linreg");
    let iris = repo_root().join("examples/data/iris.csv");
    let out = run(
        &corral(),
        &[
            "run",
            "-q",
            module.to_str().unwrap(),
            iris.to_str().unwrap(),
        ],
        None,
        cache(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("linreg: cannot read {}", iris.display())),
        "{stderr}"
    );
}

/// Gaps in the data: refused by default naming where, dropped, or filled with the training
/// mean, the same in every example.
#[test]
fn gaps_are_refused_dropped_or_filled_as_asked() {
    let iris = std::fs::read_to_string(repo_root().join("examples/data/iris.csv")).unwrap();
    let mut lines: Vec<String> = iris.lines().map(String::from).collect();
    // Line 3 of the file (its second data row) loses its petal length.
    let fields: Vec<&str> = lines[2].split(',').collect();
    lines[2] = format!("{},{},,{},{}", fields[0], fields[1], fields[3], fields[4]);
    let dir = tempfile::tempdir().unwrap();
    let gappy = dir.path().join("gappy.csv");
    std::fs::write(&gappy, lines.join("\n") + "\n").unwrap();
    let gappy = gappy.to_str().unwrap();
    for example in EXAMPLES {
        let out = run(&native(example), &[gappy], None, cache());
        assert_eq!(out.status.code(), Some(2), "{example}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("line 3, field 3"), "{example}: {stderr}");
        for policy in ["drop", "mean"] {
            let out = run(
                &native(example),
                &["--json", "--missing", policy, gappy],
                None,
                cache(),
            );
            assert!(out.status.success(), "{example} {policy}: {out:?}");
        }
    }
    let linreg = |policy: &str| {
        let out = run(
            &native("linreg"),
            &["--json", "--missing", policy, gappy],
            None,
            cache(),
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = (json["train_rows"].as_u64(), json["test_rows"].as_u64());
        let figures = (
            json["test_mse"].as_f64().unwrap(),
            json["intercept"].as_f64().unwrap(),
        );
        (rows, figures)
    };
    // scikit-learn's figures for the same data (1.9.1): dropna, then train_test_split
    // (test_size=0.2, random_state=42) and LinearRegression; and the split, then a
    // SimpleImputer(strategy="mean") fitted on the training rows, then LinearRegression.
    let near = |(mse, intercept): (f64, f64), expected: (f64, f64)| {
        (mse - expected.0).abs() < 1e-9 && (intercept - expected.1).abs() < 1e-9
    };
    // 149 complete rows: 30 held out (ceil(0.2 * 149)); filled, all 150 are kept.
    let (rows, figures) = linreg("drop");
    assert_eq!(rows, (Some(119), Some(30)));
    assert!(
        near(figures, (0.058739361066777, 0.230166010345352)),
        "{figures:?}"
    );
    let (rows, figures) = linreg("mean");
    assert_eq!(rows, (Some(120), Some(30)));
    assert!(
        near(figures, (0.035352073019067, 0.206938481180731)),
        "{figures:?}"
    );
}

/// The linear SVM against scikit-learn's `LinearSVC(C=1, loss="hinge")` after a
/// `StandardScaler` fitted on the training rows, on the same split (scikit-learn 1.9.1): test
/// accuracy within 2 points, on iris (one against the rest) and on breast cancer (binary).
#[test]
fn the_svm_is_within_two_points_of_scikit_learns() {
    for (data, sklearn) in [("iris", 0.9667), ("breast_cancer", 0.9561)] {
        let path = format!("examples/data/{data}.csv");
        let out = run(&native("svm"), &["--json", &path], None, cache());
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let accuracy = json["test_accuracy"].as_f64().unwrap();
        assert!((accuracy - sklearn).abs() <= 0.02, "{data}: {json}");
    }
}
