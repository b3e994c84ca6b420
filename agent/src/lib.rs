//! `corral-agent`: the node side of Corral: the agent daemon ([`daemon`]) and the sandbox it runs
//! every task in ([`sandbox`]).
//!
//! The daemon registers with a host, keeps one gRPC session stream open, runs the tasks it is
//! launched (up to its slots, concurrently, on blocking threads), kills on request, reports
//! progress and outcomes (re-sending final reports until the host acknowledges them) and
//! reconnects with backoff when the host is away. `corral agent` and `corral dev` run it.
//!
//! A Corral task is a WASI preview1 command module (any `wasm32-wasip1` program) run under hard
//! limits. The [`sandbox`] module is the executor: it admits a module with
//! [`corral_admission::admit`] (the check the host makes at upload), compiles it once per
//! sha256 (compiled code cached on disk), runs it in a fresh store with a fuel budget, a
//! linear-memory cap, a wall-clock timeout and exactly the WASI capabilities the task was
//! granted, and reports an [`Outcome`](sandbox::Outcome) with what the run cost.
//!
//! When the agent itself fails to run an attempt (it cannot fetch the module, write its data
//! dir, or the sandbox fails), the attempt ends with the outcome `agent_error`: Corral's
//! failure, never blamed on the task, which the host retries like a lost attempt.
//!
//! The sandbox is the only place in Corral that names wasmtime.
//!
//! # Main types
//! - [`daemon::run`] and [`daemon::AgentConfig`]: the agent process.
//! - [`Sandbox`](sandbox::Sandbox): one per process; cheap to clone, safe to share across threads.
//! - [`RunSpec`](sandbox::RunSpec) and [`Limits`](sandbox::Limits): what one run is given.
//! - [`RunReport`](sandbox::RunReport) and [`Outcome`](sandbox::Outcome): what happened.
//! - [`RunControl`](sandbox::RunControl): kill a run, read its fuel while it runs.
//!
//! # Example
//! ```
//! use corral_agent::sandbox::{DirGrant, Outcome, RunSpec, Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! // A WASI command that writes "hi\n" to stdout.
//! let module = br#"(module
//!   (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
//!   (memory (export "memory") 1)
//!   (data (i32.const 16) "hi\n")
//!   (func (export "_start")
//!     (i32.store (i32.const 0) (i32.const 16))
//!     (i32.store (i32.const 4) (i32.const 3))
//!     (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
//! let spec = RunSpec { program: "hello".into(), ..RunSpec::default() };
//! let report = sandbox.run(module, &spec)?;
//! assert_eq!(report.outcome, Outcome::Success);
//! assert_eq!(report.stdout, b"hi\n");
//! assert!(report.fuel_used > 0);
//! # Ok::<(), corral_agent::sandbox::SandboxError>(())
//! ```

pub mod daemon;
mod lru;
pub mod sandbox;
