//! The ML examples on 1,000,000 generated rows: the native build (default x86-64 target)
//! against the wasm build in the sandbox with fuel metering (Corral's default), with epoch
//! interruption instead, and with neither. Every variant's output is checked to be identical
//! to the native build's before timing.
//!
//! Timing runs in rounds, each running every variant once back to back (in an order that
//! rotates from round to round), and each ratio is the median of the ratios within rounds.
//! On a shared machine whose speed drifts by ±20% over minutes, variants timed minutes apart
//! (as criterion times them, one after the other) can differ by more than the effect being
//! measured; two runs within one round see the same machine.
//!
//! Needs the native examples and the guests built first; `scripts/bench` does this:
//!     cargo build --release -p corral-example-linreg -p corral-example-logreg -p corral-example-kmeans
//!     scripts/build-guests
//! Run: `cargo bench -p corral-agent --bench ml` (`-- ROUNDS`, default 10; `-- kmeans-k8`,
//! `-- linreg` and the like run only the cases or examples named)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_agent::sandbox::{
    DirGrant, Limits, Outcome, PreparedModule, RunSpec, Sandbox, SandboxConfig,
};

const ROWS: usize = 1_000_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn built(path: PathBuf, how: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: {how} (scripts/bench does)",
        path.display()
    );
    path
}

/// A deterministic stream of uniform numbers in [0, 1) (PCG-style LCG, top 53 bits).
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal number (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.next(), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Writes `name` into the bench data directory unless it is already there.
fn data_file(name: &str, generate: impl FnOnce() -> String) -> PathBuf {
    let dir = repo_root().join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if !path.exists() {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, generate()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// y = 3 + 2 a - b + 0.5 c + 0.25 d + noise, with four standard normal features.
fn regression_csv() -> String {
    let mut rng = Uniform(1);
    let mut csv = String::with_capacity(ROWS * 48);
    csv.push_str("a,b,c,d,y\n");
    for _ in 0..ROWS {
        let x: [f64; 4] = [rng.normal(), rng.normal(), rng.normal(), rng.normal()];
        let y = 3.0 + 2.0 * x[0] - x[1] + 0.5 * x[2] + 0.25 * x[3] + 0.1 * rng.normal();
        let _ = writeln!(
            csv,
            "{:.5},{:.5},{:.5},{:.5},{:.5}",
            x[0], x[1], x[2], x[3], y
        );
    }
    csv
}

/// Three Gaussian blobs in four dimensions, labelled 0, 1, 2.
fn classes_csv() -> String {
    let mut rng = Uniform(2);
    let centres = [
        [0.0, 0.0, 0.0, 0.0],
        [3.0, 3.0, 0.0, 1.0],
        [0.0, 3.0, 3.0, -1.0],
    ];
    let mut csv = String::with_capacity(ROWS * 40);
    csv.push_str("a,b,c,d,label\n");
    for _ in 0..ROWS {
        let class = (rng.next() * 3.0) as usize;
        let c = centres[class];
        let _ = writeln!(
            csv,
            "{:.4},{:.4},{:.4},{:.4},{class}",
            c[0] + rng.normal(),
            c[1] + rng.normal(),
            c[2] + rng.normal(),
            c[3] + rng.normal()
        );
    }
    csv
}

struct Case {
    /// What the figures are printed under.
    name: &'static str,
    example: &'static str,
    data: PathBuf,
    args: Vec<&'static str>,
}

fn run_native(case: &Case) -> Vec<u8> {
    let exe = built(
        repo_root().join("target/release").join(case.example),
        "cargo build --release -p corral-example-...",
    );
    let out = Command::new(exe)
        .arg(&case.data)
        .args(&case.args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_wasm(sandbox: &Sandbox, module: &PreparedModule, case: &Case) -> Vec<u8> {
    let file = case.data.file_name().unwrap().to_str().unwrap();
    let mut args = vec![format!("/data/{file}")];
    args.extend(case.args.iter().map(|s| s.to_string()));
    let spec = RunSpec {
        program: case.example.into(),
        args,
        dirs: vec![DirGrant::read_only(case.data.parent().unwrap(), "/data")],
        limits: Limits {
            fuel: 10_000_000_000_000,
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(600),
            ..Limits::default()
        },
        ..RunSpec::default()
    };
    let report = sandbox.run_module(module, &spec).unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Success,
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    report.stdout
}

/// A variant of a case: how to run it once.
enum Variant<'a> {
    Native,
    Wasm(&'a Sandbox, PreparedModule),
}

impl Variant<'_> {
    fn run(&self, case: &Case) -> Vec<u8> {
        match self {
            Variant::Native => run_native(case),
            Variant::Wasm(sandbox, module) => run_wasm(sandbox, module, case),
        }
    }
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median over rounds of `a`'s time over `b`'s in the same round.
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    median(&mut ratios)
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the round count, and any other word
    // names a case or an example to run (every case when none is named).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .iter()
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10)
        .max(1);
    let only: Vec<&str> = args
        .iter()
        .filter(|arg| !arg.starts_with('-') && arg.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let regression = data_file("regression-1m.csv", regression_csv);
    let classes = data_file("classes-1m.csv", classes_csv);
    let cases = [
        Case {
            name: "linreg",
            example: "linreg",
            data: regression,
            args: vec![],
        },
        Case {
            name: "logreg",
            example: "logreg",
            data: classes.clone(),
            args: vec!["--epochs", "10"],
        },
        Case {
            name: "kmeans",
            example: "kmeans",
            data: classes.clone(),
            args: vec!["--k", "3"],
        },
        // More centres than one group of four (the nearest-centre search takes them four
        // at a time): the general path, and ten times the iterations to converge.
        Case {
            name: "kmeans-k8",
            example: "kmeans",
            data: classes,
            args: vec!["--k", "8"],
        },
    ];
    // Corral's default (fuel), epochs instead, and neither: what each check costs.
    let sandboxes = [
        ("wasm_fuel", true, true),
        ("wasm_epoch_only", false, true),
        ("wasm_neither", false, false),
    ]
    .map(|(name, fuel_metering, epoch_interruption)| {
        let sandbox = Sandbox::new(SandboxConfig {
            fuel_metering,
            epoch_interruption,
            ..SandboxConfig::default()
        })
        .unwrap();
        (name, sandbox)
    });

    let chosen =
        |case: &Case| only.is_empty() || only.contains(&case.name) || only.contains(&case.example);
    if let Some(unknown) = only.iter().find(|name| {
        !cases
            .iter()
            .any(|case| case.name == **name || case.example == **name)
    }) {
        let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
        panic!("no case {unknown:?}: the cases are {}", names.join(", "));
    }
    println!("ml: {ROWS} rows; {rounds} rounds, each running every variant once");
    for case in cases.iter().filter(|case| chosen(case)) {
        let bytes = std::fs::read(built(
            repo_root()
                .join("target/wasm")
                .join(format!("{}.wasm", case.example)),
            "run scripts/build-guests",
        ))
        .unwrap();
        let mut variants = vec![("native", Variant::Native)];
        for (name, sandbox) in &sandboxes {
            let module = sandbox.prepare(&bytes).unwrap().module;
            variants.push((name, Variant::Wasm(sandbox, module)));
        }
        // Also the warm-up: every variant once, each output the native build's.
        let native = run_native(case);
        for (name, variant) in &variants {
            assert_eq!(variant.run(case), native, "{}: {name}", case.name);
        }

        let mut seconds = vec![Vec::with_capacity(rounds); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                let started = Instant::now();
                variants[v].1.run(case);
                seconds[v].push(started.elapsed().as_secs_f64());
            }
        }
        let (native, fuel, epochs, neither) = (&seconds[0], &seconds[1], &seconds[2], &seconds[3]);
        for ((name, _), times) in variants.iter().zip(&seconds) {
            let mut sorted = times.clone();
            let mid = median(&mut sorted);
            let mut line = format!(
                "ml/{}/{name}: median {:.1} ms [min {:.1}, max {:.1}]",
                case.name,
                mid * 1e3,
                sorted[0] * 1e3,
                sorted[sorted.len() - 1] * 1e3
            );
            if *name != "native" {
                let _ = write!(line, "; {:.2}x native", paired_ratio(times, native));
            }
            if *name == "wasm_fuel" {
                // Over neither check, and over the same run without fuel (epochs still on,
                // as in a sandbox configured with fuel metering off).
                let _ = write!(
                    line,
                    "; fuel costs {:+.0}% over neither, {:+.0}% over epochs only",
                    (paired_ratio(fuel, neither) - 1.0) * 100.0,
                    (paired_ratio(fuel, epochs) - 1.0) * 100.0
                );
            }
            println!("{line}");
        }
    }
}
