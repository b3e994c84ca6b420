//! Per-run overhead of the sandbox: a fresh store, instantiation and `_start` of an
//! already-compiled module; with a WASI context for modules that import WASI, without one for
//! those that do not.
//!
//! Run: `cargo bench -p corral-agent --bench sandbox`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use corral_agent::sandbox::{Outcome, RunSpec, Sandbox, SandboxConfig};
use criterion::{criterion_group, criterion_main, Criterion};

/// The smallest command: `_start` returns at once. It imports nothing, so it runs without a
/// WASI context.
const TRIVIAL: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// The same, importing (not calling) a WASI function: it runs with a WASI context.
const TRIVIAL_WASI: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

/// A command that writes a line to stdout through WASI.
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

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
        for (name, text) in [
            ("trivial_no_wasi", TRIVIAL),
            ("trivial_wasi", TRIVIAL_WASI),
            ("hello_stdout", HELLO),
        ] {
            let binary = wat::parse_str(text).expect("valid wat");
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
