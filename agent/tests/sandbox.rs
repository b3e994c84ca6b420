//! The sandbox against hostile and broken modules: each test asserts the exact outcome, then
//! that the same sandbox runs the next task correctly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use corral_agent::sandbox::{
    DirGrant, GuestEvent, LogLevel, Outcome, Progress, RunControl, RunReport, RunSpec, Sandbox,
    SandboxConfig, YIELD_FUEL,
};
use corral_tests::fixtures;

/// One sandbox shared by every test in this binary, as one agent process shares it.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("sandbox"))
}

fn spec() -> RunSpec {
    RunSpec {
        program: "task".into(),
        ..RunSpec::default()
    }
}

fn run(module: &str, spec: &RunSpec) -> RunReport {
    sandbox().run(module.as_bytes(), spec).expect("run")
}

/// A fixture's text, kept for the life of the test process.
fn fixture(name: &str) -> &'static str {
    Box::leak(fixtures::wat(name).into_boxed_str())
}

/// Prints `hello` and exits 0: the "next task" after each hostile one.
fn hello() -> &'static str {
    static HELLO: OnceLock<&'static str> = OnceLock::new();
    HELLO.get_or_init(|| fixture("hello"))
}

/// Spins forever without a call.
fn forever() -> &'static str {
    static FOREVER: OnceLock<&'static str> = OnceLock::new();
    FOREVER.get_or_init(|| fixture("forever"))
}

/// Reports progress, then sleeps an hour in a host call.
fn sleep_an_hour() -> &'static str {
    static SLEEP: OnceLock<&'static str> = OnceLock::new();
    SLEEP.get_or_init(|| Box::leak(fixtures::sleep(Duration::from_secs(3600)).into_boxed_str()))
}

fn assert_next_task_runs() {
    let report = run(hello(), &spec());
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.stdout, b"hello\n");
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let mut spec = spec();
    spec.limits.fuel = 1_000_000;
    let report = run(forever(), &spec);
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_eq!(report.fuel_used, 1_000_000);
    assert_next_task_runs();
}

#[test]
fn infinite_loop_with_huge_fuel_times_out() {
    let mut spec = spec();
    spec.limits.fuel = 1_000_000_000_000_000;
    spec.limits.timeout = Duration::from_millis(200);
    // A loop that calls a function, as real code does: fuel is flushed at each call, so the
    // report can count what was burned before the deadline.
    let module = r#"(module
      (func $step)
      (func (export "_start") (loop (call $step) br 0)))"#;
    let report = run(module, &spec);
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(
        report.wall_time >= Duration::from_millis(200),
        "{:?}",
        report.wall_time
    );
    assert!(report.fuel_used > 1000, "fuel_used {}", report.fuel_used);
    assert_next_task_runs();
}

#[test]
fn infinite_loop_in_the_start_function_is_stopped() {
    let module = r#"(module
      (func $spin (loop br 0))
      (start $spin)
      (func (export "_start")))"#;
    let mut spec = spec();
    spec.limits.fuel = 500_000;
    let report = run(module, &spec);
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_next_task_runs();
}

#[test]
fn guest_sleeping_in_a_host_call_times_out() {
    // poll_oneoff on a one-hour relative clock subscription: the guest is parked in the host,
    // where no fuel yield happens; the run's timeout still must reach it.
    let mut spec = spec();
    spec.limits.timeout = Duration::from_millis(300);
    let report = run(sleep_an_hour(), &spec);
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(
        report.wall_time < Duration::from_secs(30),
        "{:?}",
        report.wall_time
    );
    assert_next_task_runs();
}

#[test]
fn poll_oneoff_sleeps_and_polls_as_wasi_says() {
    // The sandbox serves a lone relative sleep itself (on tokio's timer, so that timeouts and
    // kills reach it) and every other poll through wasmtime-wasi: both answer per preview1.
    let report = run(POLLS, &spec());
    assert_eq!(report.outcome, Outcome::Success);
    assert!(
        report.wall_time >= Duration::from_millis(20),
        "the 20 ms sleep took {:?}",
        report.wall_time
    );
    // An event pointer outside memory traps, naming the call, as wasmtime-wasi's own does.
    let report = run(
        &POLLS.replace("(i32.const 320)", "(i32.const 65528)"),
        &spec(),
    );
    assert!(
        matches!(&report.outcome, Outcome::Trap { message } if message.contains("poll_oneoff")),
        "{:?}",
        report.outcome
    );
    assert_next_task_runs();
}

/// Calls poll_oneoff several ways and exits with the number of the first check that fails.
const POLLS: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  ;; A clock subscription at $at (48 bytes).
  (func $clock (param $at i32) (param $userdata i64) (param $id i32) (param $timeout i64) (param $flags i32)
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (i32.const 0))
    (i32.store offset=16 (local.get $at) (local.get $id))
    (i64.store offset=24 (local.get $at) (local.get $timeout))
    (i64.store offset=32 (local.get $at) (i64.const 0))
    (i32.store16 offset=40 (local.get $at) (local.get $flags)))
  (func $check (param $ok i32) (param $code i32)
    (if (i32.eqz (local.get $ok)) (then (call $exit (local.get $code)))))
  (func (export "_start")
    ;; A lone 20 ms monotonic sleep: success, one clock event carrying its userdata.
    (call $clock (i32.const 0) (i64.const 0x1122334455667788) (i32.const 1) (i64.const 20000000) (i32.const 0))
    (i64.store (i32.const 256) (i64.const -1))
    (i32.store (i32.const 264) (i32.const -1))
    (call $check (i32.eqz (call $poll (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512))) (i32.const 10))
    (call $check (i32.eq (i32.load (i32.const 512)) (i32.const 1)) (i32.const 11))
    (call $check (i64.eq (i64.load (i32.const 256)) (i64.const 0x1122334455667788)) (i32.const 12))
    (call $check (i32.eqz (i32.load16_u (i32.const 264))) (i32.const 13))
    (call $check (i32.eqz (i32.load8_u (i32.const 266))) (i32.const 14))
    ;; A lone relative sleep on the process CPU-time clock: inval (28).
    (call $clock (i32.const 0) (i64.const 2) (i32.const 2) (i64.const 1000000) (i32.const 0))
    (call $check (i32.eq (call $poll (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512)) (i32.const 28)) (i32.const 20))
    ;; Two clocks, 1 ms and 1 h: the 1 ms one fires.
    (call $clock (i32.const 0) (i64.const 3) (i32.const 1) (i64.const 1000000) (i32.const 0))
    (call $clock (i32.const 48) (i64.const 4) (i32.const 1) (i64.const 3600000000000) (i32.const 0))
    (call $check (i32.eqz (call $poll (i32.const 0) (i32.const 256) (i32.const 2) (i32.const 512))) (i32.const 30))
    (call $check (i32.eq (i32.load (i32.const 512)) (i32.const 1)) (i32.const 31))
    (call $check (i64.eq (i64.load (i32.const 256)) (i64.const 3)) (i32.const 32))
    ;; A lone absolute deadline already past: fires at once.
    (call $clock (i32.const 0) (i64.const 5) (i32.const 1) (i64.const 0) (i32.const 1))
    (call $check (i32.eqz (call $poll (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512))) (i32.const 40))
    (call $check (i64.eq (i64.load (i32.const 256)) (i64.const 5)) (i32.const 41))
    ;; No subscriptions: inval.
    (call $check (i32.eq (call $poll (i32.const 0) (i32.const 256) (i32.const 0) (i32.const 512)) (i32.const 28)) (i32.const 50))
    ;; Last, a lone sleep whose event the trap case moves outside memory.
    (call $clock (i32.const 0) (i64.const 6) (i32.const 1) (i64.const 1000) (i32.const 0))
    (call $check (i32.eqz (call $poll (i32.const 0) (i32.const 320) (i32.const 1) (i32.const 512))) (i32.const 60))))"#;

/// Runs `module` on another thread, kills it once `ready` says so (given the run's control and
/// whether the guest has reported progress), and answers the report.
fn kill_when(module: &'static str, ready: impl Fn(&RunControl, bool) -> bool) -> RunReport {
    let control = RunControl::new();
    let progressed = Arc::new(AtomicBool::new(false));
    let mut spec = spec();
    spec.limits.fuel = 1_000_000_000_000_000;
    spec.limits.timeout = Duration::from_secs(600);
    spec.control = Some(control.clone());
    let seen = progressed.clone();
    spec.on_event = Some(Arc::new(move |event: &GuestEvent| {
        if matches!(event, GuestEvent::Progress(_)) {
            seen.store(true, Ordering::SeqCst);
        }
    }));
    let run = std::thread::spawn(move || sandbox().run(module.as_bytes(), &spec).expect("run"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ready(&control, progressed.load(Ordering::SeqCst)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got ready to kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    control.kill();
    run.join().expect("the run's thread")
}

#[test]
fn a_spinning_guest_is_killed() {
    // Killed once it has burned a fuel-yield interval: spinning in wasm, not before it starts.
    let report = kill_when(forever(), |control, _| control.fuel_used() >= YIELD_FUEL);
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(report.fuel_used >= YIELD_FUEL, "{}", report.fuel_used);
    assert!(
        report.wall_time < Duration::from_secs(60),
        "{:?}",
        report.wall_time
    );
    assert_next_task_runs();
}

#[test]
fn fuel_used_is_readable_while_a_guest_runs() {
    // Fuel is published at each fuel yield, in whole yield intervals: a loop that calls a
    // function shows its fuel climbing while it runs.
    const CALLING: &str = r#"(module (func $f) (func (export "_start") (loop (call $f) (br 0))))"#;
    let report = kill_when(CALLING, |control, _| control.fuel_used() > 10_000_000);
    assert_eq!(report.outcome, Outcome::Killed);
    assert!(report.fuel_used > 10_000_000, "{}", report.fuel_used);
}

#[test]
fn a_guest_sleeping_in_a_host_call_is_killed() {
    // Killed once it has said it is about to park in poll_oneoff, and a little after.
    let report = kill_when(sleep_an_hour(), |_, progressed| {
        if progressed {
            std::thread::sleep(Duration::from_millis(50));
        }
        progressed
    });
    assert_eq!(report.outcome, Outcome::Killed);
    assert_eq!(report.progress, Some(Progress { done: 1, total: 1 }));
    assert!(
        report.wall_time < Duration::from_secs(60),
        "{:?}",
        report.wall_time
    );
    assert_next_task_runs();
}

#[test]
fn a_run_killed_before_it_starts_ends_at_once_as_killed() {
    let control = RunControl::new();
    control.kill();
    let mut spec = spec();
    spec.control = Some(control);
    spec.limits.timeout = Duration::from_secs(600);
    let report = run(forever(), &spec);
    assert_eq!(report.outcome, Outcome::Killed);
    assert_next_task_runs();
}

#[test]
fn a_bad_host_call_from_the_start_function_is_the_guests_trap() {
    // The wasm start function runs during instantiation; what it does wrong is still the
    // guest's doing, not the agent's.
    let module = r#"(module
      (import "corral" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (func $boot (call $log (i32.const 2) (i32.const 65530) (i32.const 100)))
      (start $boot)
      (func (export "_start")))"#;
    let report = run(module, &spec());
    match &report.outcome {
        Outcome::Trap { message } => {
            assert!(message.contains("outside linear memory"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_next_task_runs();
}

#[test]
fn the_sandbox_refuses_what_admission_refuses_with_admissions_message() {
    // What the host would refuse at upload never compiles here either, and says why the same.
    for (module, kind) in [
        (
            r#"(module (func (export "_start") (param i32)))"#,
            "invalid_module",
        ),
        (
            r#"(module (import "env" "evil" (func)) (func (export "_start")))"#,
            "link_error",
        ),
        (
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
                 (func (export "_start")))"#,
            "link_error",
        ),
    ] {
        let report = run(module, &spec());
        let refused =
            corral_admission::admit(module.as_bytes(), &corral_admission::Policy::default())
                .unwrap_err();
        assert_eq!(report.outcome.kind(), kind, "{module}");
        assert_eq!(report.outcome.message(), Some(refused.message.as_str()));
        assert_eq!(report.module_sha256, refused.sha256);
        assert_eq!(report.fuel_used, 0);
    }
    assert_next_task_runs();
}

#[test]
fn memory_grow_loop_hits_the_memory_limit() {
    // Grows one page at a time and ignores failures: the outcome must still say memory_limit.
    let module = r#"(module
      (memory (export "memory") 1)
      (func (export "_start")
        (loop (drop (memory.grow (i32.const 1))) br 0)))"#;
    let mut spec = spec();
    spec.limits.memory_bytes = 4 << 20;
    spec.limits.fuel = 1_000_000;
    let report = run(module, &spec);
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    assert_eq!(report.peak_memory_bytes, 4 << 20);
    assert_next_task_runs();
}

#[test]
fn initial_memory_above_the_cap_hits_the_memory_limit() {
    let module = r#"(module (memory (export "memory") 100) (func (export "_start")))"#;
    let mut spec = spec();
    spec.limits.memory_bytes = 64 * 65536;
    let report = run(module, &spec);
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    assert_eq!(report.peak_memory_bytes, 0);
    assert_next_task_runs();
}

#[test]
fn table_beyond_its_cap_is_refused() {
    let module = r#"(module (table 5000 funcref) (func (export "_start")))"#;
    let mut spec = spec();
    spec.limits.table_elements = 1000;
    assert_eq!(run(module, &spec).outcome, Outcome::MemoryLimit);
    spec.limits.table_elements = 5000;
    assert_eq!(run(module, &spec).outcome, Outcome::Success);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let module = r#"(module
      (func $f (param i64) (result i64) (call $f (i64.add (local.get 0) (i64.const 1))))
      (func (export "_start") (drop (call $f (i64.const 0)))))"#;
    let report = run(module, &spec());
    assert_eq!(report.outcome, Outcome::StackOverflow);
    assert_next_task_runs();
}

#[test]
fn unreachable_traps_with_its_message() {
    let report = run(r#"(module (func (export "_start") unreachable))"#, &spec());
    match &report.outcome {
        Outcome::Trap { message } => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_next_task_runs();
}

#[test]
fn unknown_import_is_a_link_error_naming_it() {
    let module = r#"(module
      (import "env" "launch_missiles" (func))
      (func (export "_start")))"#;
    let report = run(module, &spec());
    match &report.outcome {
        Outcome::LinkError { message } => {
            assert!(message.contains("env::launch_missiles"), "{message}")
        }
        other => panic!("expected a link error, got {other:?}"),
    }
    assert_eq!(report.fuel_used, 0);
    assert_next_task_runs();
}

#[test]
fn random_bytes_are_an_invalid_module() {
    // A fixed xorshift stream, so the test is the same on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let report = sandbox().run(&bytes, &spec()).unwrap();
    assert_eq!(report.outcome.kind(), "invalid_module");
    // The same bytes behind a valid magic and version reach the validator, whose reason is kept.
    let mut framed = b"\0asm\x01\0\0\0".to_vec();
    framed.extend_from_slice(&bytes);
    let report = sandbox().run(&framed, &spec()).unwrap();
    match &report.outcome {
        Outcome::InvalidModule { message } => assert!(!message.is_empty()),
        other => panic!("expected invalid_module, got {other:?}"),
    }
    assert_next_task_runs();
}

#[test]
fn module_without_start_or_with_shared_memory_is_invalid() {
    let no_start = run("(module (func (export \"main\")))", &spec());
    match &no_start.outcome {
        Outcome::InvalidModule { message } => assert!(message.contains("_start"), "{message}"),
        other => panic!("expected invalid_module, got {other:?}"),
    }
    let shared = run(
        r#"(module (memory 1 1 shared) (func (export "_start")))"#,
        &spec(),
    );
    assert_eq!(shared.outcome.kind(), "invalid_module");
}

#[test]
fn oversized_module_is_refused_before_parsing() {
    let small = Sandbox::new(SandboxConfig {
        max_module_bytes: 64,
        ..SandboxConfig::default()
    })
    .unwrap();
    let report = small.run(hello().as_bytes(), &spec()).unwrap();
    match &report.outcome {
        Outcome::InvalidModule { message } => assert!(message.contains("64-byte cap"), "{message}"),
        other => panic!("expected invalid_module, got {other:?}"),
    }
}

#[test]
fn exit_codes_are_reported() {
    let exit = |code: i32| {
        format!(
            r#"(module
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (func (export "_start") (call $exit (i32.const {code}))))"#
        )
    };
    assert_eq!(run(&exit(0), &spec()).outcome, Outcome::Success);
    let report = run(&exit(42), &spec());
    assert_eq!(report.outcome, Outcome::Exit { code: 42 });
    assert_eq!(report.outcome.exit_code(), Some(42));
}

#[test]
fn stdout_flood_is_truncated_at_the_cap_and_memory_stays_bounded() {
    // Writes 64 KiB 4096 times (256 MiB), checking every write was accepted whole.
    let module = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 2)
      (func (export "_start") (local $i i32)
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (i32.const 65536))
        (loop
          (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable))
          (if (i32.ne (i32.load (i32.const 8)) (i32.const 65536)) (then unreachable))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if 0 (i32.lt_u (local.get $i) (i32.const 4096))))))"#;
    let mut spec = spec();
    spec.limits.max_stdout_bytes = 1 << 20;
    let rss_before = rss_bytes();
    let report = run(module, &spec);
    let rss_after = rss_bytes();
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.stdout.len(), 1 << 20);
    assert!(report.stdout_truncated);
    assert!(!report.stderr_truncated);
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew from {rss_before} to {rss_after} for a 1 MiB cap on 256 MiB of output"
    );
    assert_next_task_runs();
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A guest that `path_open`s `path` in preopen fd 3 with the given oflags and rights, writes
/// `pwned` into it when the open succeeds, and exits with the open's errno (0 on success).
fn open_probe(path: &str, oflags: u32, rights: u64) -> String {
    let len = path.len();
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 256) "{path}")
          (data (i32.const 1024) "pwned")
          (func (export "_start") (local $errno i32)
            (local.set $errno (call $open (i32.const 3) (i32.const 1) (i32.const 256) (i32.const {len})
              (i32.const {oflags}) (i64.const {rights}) (i64.const 0) (i32.const 0) (i32.const 16)))
            (if (i32.eqz (local.get $errno)) (then
              (i32.store (i32.const 32) (i32.const 1024))
              (i32.store (i32.const 36) (i32.const 5))
              (drop (call $write (i32.load (i32.const 16)) (i32.const 32) (i32.const 1) (i32.const 40)))))
            (call $exit (local.get $errno))))"#
    )
}

const O_CREAT_TRUNC: u32 = 1 | 8;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;

#[test]
fn escapes_from_a_preopened_dir_fail_and_the_canary_is_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let canary = root.path().join("canary.txt");
    std::fs::write(&canary, "untouched").unwrap();
    std::os::unix::fs::symlink(&canary, granted.join("link")).unwrap();
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_write(&granted, "/data")];

    let absolute = canary.to_str().unwrap().to_string();
    for path in [
        "../canary.txt",
        "sub/../../canary.txt",
        absolute.as_str(),
        "link",
    ] {
        let report = run(&open_probe(path, O_CREAT_TRUNC, RIGHT_FD_WRITE), &spec);
        assert!(
            matches!(report.outcome, Outcome::Exit { code } if code != 0),
            "opening {path:?} gave {:?}",
            report.outcome
        );
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
    }
    // The same probe inside the grant works, so the failures above are the sandbox's doing.
    let report = run(
        &open_probe("inside.txt", O_CREAT_TRUNC, RIGHT_FD_WRITE),
        &spec,
    );
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(
        std::fs::read_to_string(granted.join("inside.txt")).unwrap(),
        "pwned"
    );
}

#[test]
fn writing_into_a_read_only_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "1,2\n").unwrap();
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_only(dir.path(), "/data")];

    let create = run(&open_probe("new.txt", O_CREAT_TRUNC, RIGHT_FD_WRITE), &spec);
    assert!(
        matches!(create.outcome, Outcome::Exit { code } if code != 0),
        "{:?}",
        create.outcome
    );
    assert!(!dir.path().join("new.txt").exists());
    let overwrite = run(
        &open_probe("data.csv", O_CREAT_TRUNC, RIGHT_FD_WRITE),
        &spec,
    );
    assert!(matches!(overwrite.outcome, Outcome::Exit { code } if code != 0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data.csv")).unwrap(),
        "1,2\n"
    );
    // Reading is allowed.
    let read = run(&open_probe("data.csv", 0, RIGHT_FD_READ), &spec);
    assert!(
        matches!(read.outcome, Outcome::Success | Outcome::Exit { code: 0 }),
        "{:?}",
        read.outcome
    );
}

#[test]
fn a_missing_granted_dir_is_a_host_error_naming_it() {
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_only("/nonexistent/corral-test", "/data")];
    let error = sandbox().run(hello().as_bytes(), &spec).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/corral-test"),
        "{error}"
    );
}

#[test]
fn a_module_that_imports_no_wasi_runs_without_a_context_yet_a_bad_grant_is_still_named() {
    let no_wasi = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
    let report = sandbox().run(no_wasi.as_bytes(), &spec()).unwrap();
    assert_eq!(report.outcome, Outcome::Success);
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_only("/nonexistent/corral-test", "/data")];
    let error = sandbox().run(no_wasi.as_bytes(), &spec).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/corral-test"),
        "{error}"
    );
}

/// Exits with the number of environment variables plus 10 times the number of arguments.
const COUNT_ENV_AND_ARGS: &str = r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $env (i32.const 0) (i32.const 4)))
    (drop (call $args (i32.const 8) (i32.const 12)))
    (call $exit (i32.add (i32.load (i32.const 0)) (i32.mul (i32.load (i32.const 8)) (i32.const 10))))))"#;

#[test]
fn guest_sees_exactly_the_granted_env_and_args() {
    assert!(
        std::env::vars().count() > 0,
        "the test process has an environment to leak"
    );
    let report = run(COUNT_ENV_AND_ARGS, &spec());
    // argv[0] only, and no environment at all.
    assert_eq!(report.outcome, Outcome::Exit { code: 10 });
    let mut spec = spec();
    spec.env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
    spec.args = vec!["x".into(), "y".into()];
    assert_eq!(
        run(COUNT_ENV_AND_ARGS, &spec).outcome,
        Outcome::Exit { code: 32 }
    );
}

#[test]
fn stdin_is_exactly_the_given_bytes() {
    // Copies stdin to stdout in 3-byte reads until end of file.
    let module = r#"(module
      (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (loop
          (i32.store (i32.const 0) (i32.const 64))
          (i32.store (i32.const 4) (i32.const 3))
          (if (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable))
          (if (i32.load (i32.const 8)) (then
            (i32.store (i32.const 4) (i32.load (i32.const 8)))
            (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))
            (br 1))))))"#;
    let mut spec = spec();
    spec.stdin = bytes::Bytes::from_static(b"rows,of,data\n1,2,3\n");
    let report = run(module, &spec);
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.stdout, b"rows,of,data\n1,2,3\n");
}

const REPORTER: &str = r#"(module
  (import "corral" "progress" (func $progress (param i64 i64)))
  (import "corral" "log" (func $log (param i32 i32 i32)))
  (import "corral" "metric" (func $metric (param i32 i32 f64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "epoch done")
  (data (i32.const 32) "loss")
  (func (export "_start")
    (call $progress (i64.const 1) (i64.const 4))
    (call $log (i32.const 2) (i32.const 0) (i32.const 10))
    (call $metric (i32.const 32) (i32.const 4) (f64.const 0.25))
    (call $progress (i64.const 4) (i64.const 4))))"#;

#[test]
fn guest_progress_logs_and_metrics_are_recorded_and_streamed() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let mut spec = spec();
    spec.on_event = Some(Arc::new(move |event: &GuestEvent| {
        sink_events.lock().unwrap().push(event.clone())
    }));
    let report = run(REPORTER, &spec);
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(report.progress, Some(Progress { done: 4, total: 4 }));
    assert_eq!(report.logs.len(), 1);
    assert_eq!(report.logs[0].level, LogLevel::Info);
    assert_eq!(report.logs[0].message, "epoch done");
    assert_eq!(report.metrics, vec![("loss".to_string(), 0.25)]);
    assert_eq!(events.lock().unwrap().len(), 4);
}

#[test]
fn a_log_call_outside_memory_traps_naming_the_call() {
    let module = r#"(module
      (import "corral" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $log (i32.const 2) (i32.const 65530) (i32.const 100))))"#;
    match run(module, &spec()).outcome {
        Outcome::Trap { message } => assert!(message.contains("corral.log"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_next_task_runs();
}

#[test]
fn many_runs_at_once_are_safe() {
    let mut spec = spec();
    spec.limits.fuel = 200_000;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let spec = spec.clone();
                scope.spawn(move || {
                    if i % 2 == 0 {
                        run(hello(), &spec).outcome
                    } else {
                        run(forever(), &spec).outcome
                    }
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let expected = if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::OutOfFuel
            };
            assert_eq!(handle.join().unwrap(), expected);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_runs_go_to_blocking_threads() {
    let module: Arc<[u8]> = Arc::from(hello().as_bytes());
    let runs: Vec<_> = (0..8)
        .map(|_| tokio::spawn(sandbox().run_async(module.clone(), spec())))
        .collect();
    for run in runs {
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.outcome, Outcome::Success);
        assert_eq!(report.stdout, b"hello\n");
    }
}

#[test]
fn compiled_code_is_reused_in_process_and_from_the_disk_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    // A module no other test uses, so that its first admission compiles.
    let module = r#"(module (func (export "_start") (drop (i32.const 7331))))"#;
    let first = Sandbox::new(config.clone()).unwrap();
    assert!(!first.run(module.as_bytes(), &spec()).unwrap().cached);
    assert!(first.run(module.as_bytes(), &spec()).unwrap().cached);
    // A second sandbox (as a second process would) finds the code on disk.
    let second = Sandbox::new(config).unwrap();
    let report = second.run(module.as_bytes(), &spec()).unwrap();
    assert_eq!(report.outcome, Outcome::Success);
    assert!(report.cached);
}

#[test]
fn runs_beyond_the_pool_wait_for_a_slot_and_all_finish() {
    let small = Sandbox::new(SandboxConfig {
        pool_slots: Some(2),
        ..SandboxConfig::default()
    })
    .unwrap();
    // Each run holds its slot for about 50 ms (a host sleep), so eight runs must queue.
    let sleeper = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 200) "done\n")
      (func (export "_start")
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 50000000))
        (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
        (i32.store (i32.const 300) (i32.const 200))
        (i32.store (i32.const 304) (i32.const 5))
        (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308)))))"#;
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| small.run(sleeper.as_bytes(), &spec()).unwrap()))
            .collect();
        for run in runs {
            let report = run.join().unwrap();
            assert_eq!(report.outcome, Outcome::Success);
            assert_eq!(report.stdout, b"done\n");
        }
    });
    // Two at a time, four rounds of at least 50 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[should_panic(expected = "runtime")]
async fn running_a_guest_on_a_tokio_worker_thread_is_refused() {
    // Guests must not block async workers; the blocking entry point refuses to run there
    // rather than stall the runtime.
    let _ = sandbox().run(hello().as_bytes(), &spec());
}

#[test]
fn tables_beyond_the_pool_slot_are_refused_by_name_or_as_the_memory_limit() {
    use corral_agent::sandbox::POOL_TABLE_ELEMENTS;
    let mut spec = spec();
    spec.limits.table_elements = 1_000_000;
    // An initial table larger than a slot holds: refused at admission, naming the limit.
    let too_big = format!(
        r#"(module (table {} funcref) (func (export "_start")))"#,
        POOL_TABLE_ELEMENTS + 1
    );
    match run(&too_big, &spec).outcome {
        Outcome::InvalidModule { message } => {
            assert!(
                message.contains(&POOL_TABLE_ELEMENTS.to_string()),
                "{message}"
            )
        }
        other => panic!("expected invalid_module, got {other:?}"),
    }
    // Growing past the slot at run time, under a larger per-run cap: the run's memory limit.
    let grow = format!(
        r#"(module (table 10 funcref)
          (func (export "_start")
            (drop (table.grow (ref.null func) (i32.const {})))))"#,
        POOL_TABLE_ELEMENTS
    );
    assert_eq!(run(&grow, &spec).outcome, Outcome::MemoryLimit);
    assert_next_task_runs();
}

#[test]
fn a_run_out_of_time_while_compiling_leaves_the_compile_to_finish_for_the_next_run() {
    // Its own sandbox: the compile must not be one another test started.
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let slow = fixtures::nested_loops(4, 4000);
    let mut short = spec();
    short.limits.timeout = Duration::from_millis(100);
    let report = sandbox.run(slow.as_bytes(), &short).unwrap();
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(report.wall_time >= Duration::from_millis(100));
    assert_eq!(report.compile_time, report.wall_time);
    assert!(!report.module_sha256.is_empty());
    // The next run waits for the compile the first started rather than compiling again: it
    // did not compile the module itself, so it reports it as reused.
    let report = sandbox.run(slow.as_bytes(), &spec()).unwrap();
    assert_eq!(report.outcome, Outcome::Success);
    assert!(report.cached, "the compile was started again");
    assert!(report.wall_time >= report.compile_time);
}

#[test]
fn a_grant_that_reaches_the_code_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.clone()),
        ..SandboxConfig::default()
    })
    .unwrap();
    for grant in [
        DirGrant::read_write(dir.path(), "/all"),
        DirGrant::read_only(&cache, "/cache"),
        DirGrant::read_write(cache.join("code"), "/code"),
    ] {
        let mut spec = spec();
        spec.dirs = vec![grant];
        let error = sandbox.run(hello().as_bytes(), &spec).unwrap_err();
        assert!(error.to_string().contains("compiled-code cache"), "{error}");
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_write(elsewhere.path(), "/data")];
    assert_eq!(
        sandbox.run(hello().as_bytes(), &spec).unwrap().outcome,
        Outcome::Success
    );
}

#[test]
fn socket_calls_are_refused_as_wasi_says_and_counted_not_logged_each() {
    // 10,000 calls on stdin (a descriptor the guest has: notsock) and on fd 9 (one it has
    // not: badf); exits 1 if an answer is wrong.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "sock_shutdown" (func $shutdown (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop
          (if (i32.ne (call $accept (i32.const 0) (i32.const 0) (i32.const 8)) (i32.const 57))
            (then (call $exit (i32.const 1))))
          (if (i32.ne (call $shutdown (i32.const 9) (i32.const 0)) (i32.const 8))
            (then (call $exit (i32.const 1))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if 0 (i32.lt_u (local.get $i) (i32.const 5000))))))"#;
    let report = run(wat, &spec());
    assert_eq!(report.outcome, Outcome::Success, "{report:?}");
    assert_eq!(report.guest_warnings, 10_000);
    // A run that makes no such call reports none.
    assert_eq!(run(hello(), &spec()).guest_warnings, 0);
}

/// Creates `out.bin` in the first granted directory and writes 64 KiB to it 1,000 times:
/// appending (`fd_write`) or over the same bytes (`fd_pwrite` at 0).
fn disk_writer(call: &str) -> String {
    let write = match call {
        "fd_pwrite" => "(call $pwrite (local.get $fd) (i32.const 0) (i32.const 1) (i64.const 0) (i32.const 16))",
        _ => "(call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))",
    };
    // Moved onto stdout's number first: a file is a file whatever its number.
    let renumber = match call {
        "renumbered" => {
            "(drop (call $renumber (local.get $fd) (i32.const 1))) (local.set $fd (i32.const 1))"
        }
        _ => "",
    };
    format!(
        r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pwrite" (func $pwrite (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
      (memory (export "memory") 2)
      (data (i32.const 100) "out.bin")
      (func (export "_start") (local $fd i32) (local $i i32)
        (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 9)
                        (i64.const 536870911) (i64.const 536870911) (i32.const 0) (i32.const 20))
          (then (call $exit (i32.const 2))))
        (local.set $fd (i32.load (i32.const 20)))
        {renumber}
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 65536))
        (loop
          (if {write} (then (call $exit (i32.const 3))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if 0 (i32.lt_u (local.get $i) (i32.const 1000))))))"#
    )
}

#[test]
fn files_grown_past_the_disk_quota_end_the_run_within_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec.dirs = vec![DirGrant::read_write(dir.path(), "/out")];
    spec.limits.max_disk_bytes = 1 << 20;
    let report = run(&disk_writer("fd_write"), &spec);
    assert_eq!(report.outcome, Outcome::DiskLimit, "{report:?}");
    let written = std::fs::metadata(dir.path().join("out.bin")).unwrap().len();
    assert!(written <= 1 << 20, "{written} bytes written past the quota");
    // Creating the file cost 4 KiB of the quota.
    assert!(
        written + 4096 > (1 << 20) - 65536,
        "stopped early: {written}"
    );
    // Writing over the same bytes grows nothing: 1,000 overwrites of 64 KiB fit a 1 MiB quota.
    let report = run(&disk_writer("fd_pwrite"), &spec);
    assert_eq!(report.outcome, Outcome::Success, "{report:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join("out.bin")).unwrap().len(),
        65536
    );
    // A file moved onto stdout's descriptor number is still a file.
    let report = run(&disk_writer("renumbered"), &spec);
    assert_eq!(report.outcome, Outcome::DiskLimit, "{report:?}");
    assert!(std::fs::metadata(dir.path().join("out.bin")).unwrap().len() <= 1 << 20);
    // Stdout is the output cap's, not the quota's.
    spec.limits.max_disk_bytes = 1;
    assert_eq!(run(hello(), &spec).outcome, Outcome::Success);
}

/// 10,000 times, in the first granted directory: makes a directory (`mkdir`) or creates and
/// closes a file (`create`) of a new four-letter name, makes directory `same`
/// (`mkdir-same`), or opens `same` with `O_CREAT` (`reopen`). Exits 2 when a call fails.
fn entry_maker(call: &str) -> String {
    let make = match call {
        "mkdir" => "(call $mkdir (i32.const 3) (i32.const 200) (i32.const 4))",
        "mkdir-same" => "(call $mkdir (i32.const 3) (i32.const 100) (i32.const 4))",
        "create" => {
            "(call $open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 4) (i32.const 1) \
             (i64.const 536870911) (i64.const 536870911) (i32.const 0) (i32.const 300))"
        }
        _ => {
            "(call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 4) (i32.const 1) \
             (i64.const 536870911) (i64.const 536870911) (i32.const 0) (i32.const 300))"
        }
    };
    let close = match call {
        "mkdir" => "",
        _ => "(drop (call $close (i32.load (i32.const 300))))",
    };
    let letter = |shift: u32| {
        format!(
            "(i32.add (i32.const 97) (i32.and (i32.shr_u (local.get $i) (i32.const {shift})) (i32.const 15)))"
        )
    };
    format!(
        r#"(module
      (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "same")
      (func (export "_start") (local $i i32)
        (loop
          (i32.store8 (i32.const 200) {l0})
          (i32.store8 (i32.const 201) {l1})
          (i32.store8 (i32.const 202) {l2})
          (i32.store8 (i32.const 203) {l3})
          (if {make} (then (call $exit (i32.const 2))))
          {close}
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if 0 (i32.lt_u (local.get $i) (i32.const 10000))))))"#,
        l0 = letter(0),
        l1 = letter(4),
        l2 = letter(8),
        l3 = letter(12),
    )
}

#[test]
fn every_entry_created_costs_quota_so_empty_files_cannot_exhaust_inodes() {
    let writable = |dir: &tempfile::TempDir, quota: u64| {
        let mut spec = spec();
        spec.dirs = vec![DirGrant::read_write(dir.path(), "/out")];
        spec.limits.max_disk_bytes = quota;
        spec
    };
    let entries = |dir: &tempfile::TempDir| std::fs::read_dir(dir.path()).unwrap().count();
    for call in ["mkdir", "create"] {
        let dir = tempfile::tempdir().unwrap();
        let report = run(&entry_maker(call), &writable(&dir, 1 << 20));
        assert_eq!(report.outcome, Outcome::DiskLimit, "{call}: {report:?}");
        // 4 KiB each: 256 fit in 1 MiB, and the one that passes it ends the run.
        assert_eq!(entries(&dir), 257, "{call}");
    }
    // A creation that fails costs nothing and answers its errno, however little quota is
    // left: making the same directory twice fails the second time (the guest exits 2).
    let dir = tempfile::tempdir().unwrap();
    let report = run(&entry_maker("mkdir-same"), &writable(&dir, 4096));
    assert_eq!(report.outcome, Outcome::Exit { code: 2 }, "{report:?}");
    // Opening an existing file with O_CREAT creates nothing: only the first open costs.
    let dir = tempfile::tempdir().unwrap();
    let report = run(&entry_maker("reopen"), &writable(&dir, 4096));
    assert_eq!(report.outcome, Outcome::Success, "{report:?}");
    assert_eq!(entries(&dir), 1);
    // Nor does the first: the file was there before the run, and a quota of one byte is
    // enough to open it 10,000 times with O_CREAT.
    let report = run(&entry_maker("reopen"), &writable(&dir, 1));
    assert_eq!(report.outcome, Outcome::Success, "{report:?}");
}
