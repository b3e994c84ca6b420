//! Per-run overhead of the sandbox: a fresh store, instantiation and `_start` of an
//! already-compiled module; with a WASI context for modules that import WASI, without one for
//! those that do not.
//!
//! Run: `cargo bench -p corral-agent --bench sandbox`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use corral_agent::sandbox::{Outcome, RunSpec, Sandbox, SandboxConfig};
use corral_tests::fixtures;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let spec = RunSpec {
        program: "bench".into(),
        ..RunSpec::default()
    };
    let mut group = c.benchmark_group("run");
    for (allocator, pool_slots) in [("pooled", Some(16)), ("on_demand", None)] {
        let sandbox = Sandbox::new(SandboxConfig {
            pool_slots,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        // The smallest command, without a WASI context (it imports nothing) and with one (it
        // imports, never calls, a WASI function); and one writing a line through WASI.
        for (name, fixture) in [
            ("trivial_no_wasi", "trivial"),
            ("trivial_wasi", "trivial_wasi"),
            ("hello_stdout", "line"),
        ] {
            let binary = wat::parse_str(fixtures::wat(fixture)).expect("valid wat");
            let prepared = sandbox.prepare(&binary).expect("admitted").module;
            assert_eq!(
                sandbox.run_module(&prepared, &spec).unwrap().outcome,
                Outcome::Success
            );
            group.bench_function(format!("{name}/{allocator}/prepared"), |b| {
                b.iter(|| sandbox.run_module(&prepared, &spec).unwrap())
            });
            if allocator == "pooled" {
                // From bytes: sha256 and the in-process module cache lookup, then the run.
                group.bench_function(format!("{name}/{allocator}/from_bytes"), |b| {
                    b.iter(|| sandbox.run(&binary, &spec).unwrap())
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
