//! `corral-guest`: what a Corral task links into its WebAssembly module.
//!
//! A Corral task is an ordinary WASI command: a `main` that reads its arguments, environment,
//! stdin and granted files, and writes stdout, stderr and files in its output directory. Any
//! `wasm32-wasip1` program runs unchanged; this crate adds what tasks commonly need:
//!
//! - [`input`]: arguments, environment, stdin, granted files, the output directory;
//! - [`host`]: progress, logs and metrics reported to Corral while the task runs (the `corral`
//!   import module; no-ops in a native build);
//! - [`args`]: a small flag parser with errors that name the argument;
//! - [`csv`]: numeric CSV with line-numbered errors, the input of the ML examples;
//! - [`rng`], [`math`]: seeded generators (SplitMix64, and numpy's legacy Mersenne Twister,
//!   whose permutations make [`csv::Dataset::split`] scikit-learn's `train_test_split`) and
//!   `exp`/`ln` that give the same bits in wasm and natively, so results can be compared
//!   exactly;
//! - [`json`]: a JSON object writer for machine-readable reports.
//!
//! The crate uses only `std` and builds with Rust 1.63 for `wasm32-wasi` (Debian's toolchain),
//! with current stable for `wasm32-wasip1`, and natively.
//!
//! # Example
//! A task that averages the target column of a CSV given as a file or on stdin:
//! ```no_run
//! use corral_guest::{args::Args, csv, host, input, json::Object};
//!
//! fn main() {
//!     if let Err(message) = run() {
//!         eprintln!("mean: {message}");
//!         std::process::exit(2);
//!     }
//! }
//!
//! fn run() -> Result<(), String> {
//!     let mut args = Args::from_env();
//!     let as_json = args.flag("--json");
//!     let path = args.positional();
//!     args.finish()?;
//!     let data = csv::parse_bytes(&input::read_bytes(path.as_deref())?)?;
//!     let mut sum = 0.0;
//!     for (i, y) in data.y.iter().enumerate() {
//!         sum += y;
//!         host::progress(i as u64 + 1, data.rows() as u64);
//!     }
//!     let mean = sum / data.rows() as f64;
//!     host::metric("mean", mean);
//!     if as_json {
//!         println!("{}", Object::new().number("mean", mean).finish());
//!     } else {
//!         println!("mean of {}: {mean}", data.names[data.features]);
//!     }
//!     Ok(())
//! }
//! ```
//! Built with `scripts/build-guests` and run with
//! `corral run --dir-ro examples/data::/data target/wasm/mean.wasm /data/iris.csv`.

pub mod args;
pub mod csv;
pub mod host;
pub mod input;
pub mod json;
pub mod math;
pub mod rng;
