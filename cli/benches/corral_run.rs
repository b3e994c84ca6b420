//! `corral run` as whole processes: the first run of a module compiles it, a second process
//! finds the compiled code in the on-disk cache.
//!
//! Needs the guests built first (`scripts/build-guests`; `scripts/bench` does it).
//! Run: `cargo bench -p corral --bench corral_run`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::path::Path;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};

fn corral_run(cache: &[&str], module: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .current_dir(corral_tests::repo_root())
        .arg("run")
        .args(["-o", "json", "--dir-ro", "examples/data::/data"])
        .args(cache)
        .arg(module)
        .arg("/data/iris.csv")
        .output()
        .expect("corral runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn bench(c: &mut Criterion) {
    let module = corral_tests::wasm("linreg");
    let cache = tempfile::tempdir().unwrap();
    let cache_flag = ["--cache-dir", cache.path().to_str().unwrap()];
    // Fill the cache, then check that the next process reports a hit.
    corral_run(&cache_flag, &module);
    assert!(corral_run(&cache_flag, &module).contains("\"cached\":true"));

    let mut group = c.benchmark_group("corral_run/linreg_iris");
    group.sample_size(20);
    group.bench_function("compile (no cache)", |b| {
        b.iter(|| corral_run(&["--no-cache"], &module))
    });
    group.bench_function("cached (second process)", |b| {
        b.iter(|| corral_run(&cache_flag, &module))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
