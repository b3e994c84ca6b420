//! The engine and the linker, made once per [`Sandbox`](super::Sandbox): Cranelift at `Speed`,
//! fuel metering with async yields (or epochs, when measuring without fuel), a bounded wasm
//! stack, the pooling allocator sized by admission's limits, and a linker with exactly what
//! admission's import table lists.

use std::time::Duration;

use wasmtime::{Config, Engine, Linker};

use super::config::{SandboxConfig, POOL_MEMORY_BYTES, POOL_TABLE_ELEMENTS};
use super::execute::RunState;
use super::{disk, guest_api, sleep, sockets, SandboxError};

/// The engine's settings: Cranelift at `Speed`, fuel or epochs, a bounded stack, and the wasm
/// features of wasmtime's defaults as built here, which are admission's
/// [`FEATURES`](corral_admission::FEATURES) (a test holds the two equal).
pub(crate) fn engine_config(config: &SandboxConfig) -> Config {
    let mut wasm = Config::new();
    wasm.strategy(wasmtime::Strategy::Cranelift)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .consume_fuel(config.fuel_metering)
        // Epoch checks at every loop head and call cost 30-45% on the ML kernels (BENCHMARKS.md);
        // a metered guest yields on fuel instead, checks that fuel metering makes anyway.
        .epoch_interruption(config.uses_epochs())
        .max_wasm_stack(config.max_wasm_stack)
        // wasmtime is built without its `threads` feature, so the threads proposal (and
        // with it shared memory) is refused at validation; this makes it explicit.
        .shared_memory(false);
    if let Some(slots) = config.pool_slots {
        use corral_admission::{MAX_INSTANCE_BYTES, MAX_MEMORIES, MAX_TABLES};
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots * MAX_MEMORIES)
            .total_tables(slots * MAX_TABLES)
            .total_stacks(slots)
            .max_memories_per_module(MAX_MEMORIES)
            .max_tables_per_module(MAX_TABLES)
            .max_memory_size(POOL_MEMORY_BYTES as usize)
            .table_elements(POOL_TABLE_ELEMENTS as usize)
            // A limit, not a reservation: admission's bound on instance state.
            .max_core_instance_size(MAX_INSTANCE_BYTES as usize)
            .linear_memory_keep_resident(64 << 10);
        wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

/// The linker: WASI preview1 (with `poll_oneoff` shadowed, see `sleep.rs`) and the `corral`
/// module.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<RunState>, SandboxError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, sleep::wasi)
        .and_then(|()| sleep::add_to_linker(&mut linker))
        .and_then(|()| sockets::add_to_linker(&mut linker))
        .and_then(|()| disk::add_to_linker(&mut linker))
        .and_then(|()| guest_api::add_to_linker(&mut linker))
        .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// Advances the engine's epoch every `tick` until the engine is dropped. Only engines that
/// time runs out by epochs need it.
pub(crate) fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("corral-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// Epoch ticks to allow for `timeout`: rounded up, plus one for the partial current tick.
pub(crate) fn epoch_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks)
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use corral_admission::imports::{Provided, Val, PROVIDED};
    use corral_admission::{admit, Policy, RefusalKind};
    use wasmtime::{Module, Store, ValType};

    use super::*;

    #[test]
    fn epoch_ticks_round_up_and_add_one() {
        let tick = Duration::from_millis(5);
        assert_eq!(epoch_ticks(Duration::from_millis(10), tick), 3);
        assert_eq!(epoch_ticks(Duration::from_millis(11), tick), 4);
        assert_eq!(epoch_ticks(Duration::ZERO, tick), 1);
        assert!(epoch_ticks(Duration::MAX, tick) > 1 << 40);
    }

    /// wasmtime's `Config` prints every wasm feature flag it computed as `wasm_<flag>: bool`.
    #[test]
    fn the_engine_enables_exactly_the_features_admission_validates_with() {
        let printed = format!("{:?}", engine_config(&SandboxConfig::default()));
        let mut checked = 0;
        for (name, flag) in wasmparser::WasmFeatures::all().iter_names() {
            let field = format!(" wasm_{}: ", name.to_lowercase());
            let at = printed
                .find(&field)
                .unwrap_or_else(|| panic!("wasmtime's Config does not print {field:?}"));
            let engine = printed[at + field.len()..].starts_with("true");
            assert_eq!(
                engine,
                corral_admission::FEATURES.contains(flag),
                "feature {name}: the engine says {engine}"
            );
            checked += 1;
        }
        assert!(checked > 20, "only {checked} flags");
    }

    fn val(ty: &ValType) -> Val {
        match ty {
            ValType::I32 => Val::I32,
            ValType::I64 => Val::I64,
            ValType::F32 => Val::F32,
            ValType::F64 => Val::F64,
            other => panic!("a provided function uses {other}"),
        }
    }

    #[test]
    fn the_linker_defines_exactly_the_import_table() {
        let engine = Engine::new(&engine_config(&SandboxConfig::default())).unwrap();
        let linker = linker(&engine).unwrap();
        let mut store = Store::new(&engine, RunState::empty());
        let items: Vec<(String, String, wasmtime::Extern)> = linker
            .iter(&mut store)
            .map(|(m, n, e)| (m.to_string(), n.to_string(), e))
            .collect();
        let mut defined = Vec::new();
        for (module, name, item) in items {
            let wasmtime::Extern::Func(func) = item else {
                panic!("{module}::{name} is not a function");
            };
            let ty = func.ty(&store);
            defined.push((
                module,
                name,
                ty.params().map(|p| val(&p)).collect::<Vec<_>>(),
                ty.results().map(|r| val(&r)).collect::<Vec<_>>(),
            ));
        }
        defined.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut table: Vec<_> = PROVIDED
            .iter()
            .map(|p: &Provided| {
                (
                    p.module.to_string(),
                    p.name.to_string(),
                    p.params.to_vec(),
                    p.results.to_vec(),
                )
            })
            .collect();
        table.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(defined, table);
    }

    /// How the engine alone judges a module: compile it with the sandbox's engine (pool limits
    /// included), check `_start`, link it.
    fn engine_verdict(
        engine: &Engine,
        linker: &Linker<RunState>,
        bytes: &[u8],
    ) -> Option<RefusalKind> {
        let Ok(module) = Module::new(engine, bytes) else {
            return Some(RefusalKind::InvalidModule);
        };
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(ty))
                if ty.params().len() == 0 && ty.results().len() == 0 => {}
            _ => return Some(RefusalKind::InvalidModule),
        }
        linker
            .instantiate_pre(&module)
            .err()
            .map(|_| RefusalKind::LinkError)
    }

    /// Modules hostile or unusual, each judged by admission and by the engine alone: the two
    /// verdicts must be the same (admitted, `invalid_module` or `link_error`).
    #[test]
    fn admission_and_the_engine_judge_every_module_alike() {
        let engine = Engine::new(&engine_config(&SandboxConfig::default())).unwrap();
        let linker = linker(&engine).unwrap();
        let start = r#"(func (export "_start"))"#;
        let memories = |n: usize| "(memory 1) ".repeat(n);
        let tables = |n: usize| "(table 1 funcref) ".repeat(n);
        let corpus: Vec<(&str, String)> = vec![
            ("trivial", format!("(module {start})")),
            ("start with a parameter", r#"(module (func (export "_start") (param i32)))"#.into()),
            ("start with a result", r#"(module (func (export "_start") (result i32) (i32.const 0)))"#.into()),
            ("start as a global", r#"(module (global (export "_start") i32 (i32.const 1)))"#.into()),
            ("no start", r#"(module (func (export "main")))"#.into()),
            ("unknown import", format!(r#"(module (import "env" "evil" (func)) {start})"#)),
            ("wasi import of the wrong type", format!(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32))) {start})"#)),
            ("corral import of the wrong type", format!(r#"(module (import "corral" "progress" (func (param i32 i32))) {start})"#)),
            ("wasi import of the right type", format!(r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))) {start})"#)),
            ("every corral import", format!(r#"(module (import "corral" "progress" (func (param i64 i64))) (import "corral" "log" (func (param i32 i32 i32))) (import "corral" "metric" (func (param i32 i32 f64))) {start})"#)),
            ("imported memory", format!(r#"(module (import "env" "memory" (memory 1)) {start})"#)),
            ("imported global", format!(r#"(module (import "corral" "progress" (global i32)) {start})"#)),
            ("imported table", format!(r#"(module (import "env" "table" (table 1 funcref)) {start})"#)),
            ("shared memory", format!("(module (memory 1 1 shared) {start})")),
            ("atomics", r#"(module (memory 1 1) (func (export "_start") (drop (i32.atomic.load (i32.const 0)))))"#.into()),
            ("four memories", format!("(module {} {start})", memories(4))),
            ("five memories", format!("(module {} {start})", memories(5))),
            ("sixteen tables", format!("(module {} {start})", tables(16))),
            ("seventeen tables", format!("(module {} {start})", tables(17))),
            ("table at the pool's size", format!("(module (table {POOL_TABLE_ELEMENTS} funcref) {start})")),
            ("table past the pool's size", format!("(module (table {} funcref) {start})", POOL_TABLE_ELEMENTS + 1)),
            ("memory64 of 4 GiB", format!("(module (memory i64 65536) {start})")),
            ("memory64 past 4 GiB", format!("(module (memory i64 65537) {start})")),
            ("simd", r#"(module (func (export "_start") (drop (i32x4.splat (i32.const 1)))))"#.into()),
            ("relaxed simd", r#"(module (func (export "_start") (drop (i32x4.relaxed_trunc_f32x4_s (v128.const i32x4 0 0 0 0)))))"#.into()),
            ("tail call", r#"(module (func $f) (func (export "_start") (return_call $f)))"#.into()),
            ("exceptions", r#"(module (tag $t) (func (export "_start") (throw $t)))"#.into()),
            ("gc struct", r#"(module (type $s (struct (field i32))) (func (export "_start") (drop (struct.new $s (i32.const 1)))))"#.into()),
            ("typed function references", r#"(module (type $f (func)) (func $g) (elem declare func $g) (func (export "_start") (call_ref $f (ref.func $g))))"#.into()),
            ("reference types", r#"(module (table 1 externref) (func (export "_start") (drop (table.get 0 (i32.const 0)))))"#.into()),
            ("bulk memory", r#"(module (memory 1) (func (export "_start") (memory.fill (i32.const 0) (i32.const 0) (i32.const 1))))"#.into()),
            ("multi-value", r#"(module (func $two (result i32 i32) (i32.const 1) (i32.const 2)) (func (export "_start") (call $two) (drop) (drop)))"#.into()),
            ("extended const", r#"(module (global i32 (i32.add (i32.const 1) (i32.const 2))) (func (export "_start")))"#.into()),
            ("wide arithmetic", r#"(module (func (export "_start") (drop (drop (i64.add128 (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4))))))"#.into()),
            ("custom page sizes", format!("(module (memory 1 (pagesize 1)) {start})")),
            ("a component", "(component)".into()),
            ("junk after the header", "\0asm\u{1}\0\0\0\u{99}".into()),
        ];
        for (name, wat) in &corpus {
            let bytes = match wat::parse_str(wat) {
                Ok(bytes) => bytes,
                // Text `wat` cannot write is given as is (both must refuse it).
                Err(_) => wat.clone().into_bytes(),
            };
            let admission = admit(&bytes, &Policy::default()).err().map(|r| r.kind);
            let engine = engine_verdict(&engine, &linker, &bytes);
            assert_eq!(
                admission, engine,
                "{name}: admission {admission:?}, engine {engine:?}"
            );
        }
    }
}
