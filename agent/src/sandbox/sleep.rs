//! WASI file I/O on the run's own thread, with sleeps that a timeout or a kill still ends.
//!
//! Guests run on blocking threads, never on tokio's workers, so the WASI context lets file
//! operations block the thread they are called on (wasmtime-wasi's
//! `allow_blocking_current_thread`): `fd_read` reads straight into guest memory. Without it,
//! every read is handed to tokio's blocking pool, read into a zeroed buffer as large as the
//! guest asked for, and copied in: on the 1,000,000-row linreg, whose `std::fs::read` asks for
//! 42 MB at once, that was a fifth of the run.
//!
//! The same switch makes wasmtime-wasi serve a `poll_oneoff` that waits on one relative clock
//! and nothing else with `std::thread::sleep`, which neither the run's timeout nor a kill could
//! interrupt. This module shadows `poll_oneoff`: that one case sleeps on tokio's timer, as
//! every other poll does, so the run can still be stopped while the guest sleeps. Any other
//! call is wasmtime-wasi's own, unchanged.

use std::time::Duration;

use wasmtime::{AsContextMut, Caller, Extern, Linker, Memory};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::execute::RunState;

/// `poll_oneoff`'s import module.
use corral_admission::imports::WASI_MODULE as MODULE;

/// Layout of preview1's `subscription` (48 bytes, 8-aligned): `userdata: u64` at 0, the
/// union's tag (`u8`, 0 for a clock) at 8, and a `subscription_clock` at 16: `id: u32` at 16,
/// `timeout: u64` at 24, `precision: u64` at 32, `flags: u16` at 40.
const SUBSCRIPTION_BYTES: usize = 48;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;

/// Layout of preview1's `event` (32 bytes, 8-aligned): `userdata: u64` at 0, `error: u16` at 8,
/// `type: u8` at 10 (0 for a clock), then `fd_readwrite` (`nbytes: u64` at 16, `flags: u16`
/// at 24), zero for a clock event.
const EVENT_BYTES: usize = 32;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_INVAL: i32 = 28;

/// The WASI context of a run that imports WASI.
pub(crate) fn wasi(state: &mut RunState) -> &mut WasiP1Ctx {
    state
        .wasi
        .as_mut()
        .expect("a module that imports WASI runs with a WASI context")
}

/// Defines `wasi_snapshot_preview1::poll_oneoff` over the one that
/// `wasmtime_wasi::p1::add_to_linker_async` put in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap_async(
            MODULE,
            "poll_oneoff",
            |mut caller: Caller<'_, RunState>,
             (subs, events, count, nevents): (i32, i32, i32, i32)| {
                Box::new(async move {
                    match lone_relative_clock(&mut caller, subs, count) {
                        Some(clock) => sleep(&mut caller, clock, events, nevents).await,
                        None => poll_oneoff(&mut caller, subs, events, count, nevents).await,
                    }
                })
            },
        )
        .map(|_| ());
    linker.allow_shadowing(false);
    defined
}

/// The one subscription of a `poll_oneoff` that waits on a relative clock and nothing else.
struct LoneClock {
    userdata: u64,
    id: u32,
    timeout: u64,
}

fn exported_memory(caller: &mut Caller<'_, RunState>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Some(memory),
        _ => None,
    }
}

/// The subscription when the call waits on one relative clock, the case wasmtime-wasi would
/// serve with a thread sleep. `None` for anything else, including subscriptions that
/// wasmtime-wasi rejects before sleeping (out of bounds, misaligned, unknown tag or flags).
fn lone_relative_clock(
    caller: &mut Caller<'_, RunState>,
    subs: i32,
    count: i32,
) -> Option<LoneClock> {
    if count != 1 {
        return None;
    }
    let memory = exported_memory(caller)?;
    let start = subs as u32 as usize;
    if !start.is_multiple_of(8) {
        return None;
    }
    let bytes = memory
        .data(&caller)
        .get(start..start.checked_add(SUBSCRIPTION_BYTES)?)?;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let flags = u16::from_le_bytes([bytes[40], bytes[41]]);
    // Absolute deadlines, and flags wasmtime-wasi rejects, take its general path.
    if bytes[8] != TAG_CLOCK || flags != 0 {
        return None;
    }
    Some(LoneClock {
        userdata: u64_at(0),
        id: u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
        timeout: u64_at(24),
    })
}

/// Waits out a lone relative clock on tokio's timer and reports its event, as wasmtime-wasi's
/// general path does: the realtime and monotonic clocks may be waited on, others are `inval`.
async fn sleep(
    caller: &mut Caller<'_, RunState>,
    clock: LoneClock,
    events: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    if clock.id != CLOCK_REALTIME && clock.id != CLOCK_MONOTONIC {
        return Ok(ERRNO_INVAL);
    }
    tokio::time::sleep(Duration::from_nanos(clock.timeout)).await;
    let mut event = [0u8; EVENT_BYTES];
    event[..8].copy_from_slice(&clock.userdata.to_le_bytes());
    let memory = exported_memory(caller)
        .ok_or_else(|| wasmtime::format_err!("poll_oneoff: the module exports no `memory`"))?;
    let data = memory.data_mut(&mut *caller);
    let mut write = |at: i32, align: usize, bytes: &[u8]| -> wasmtime::Result<()> {
        let start = at as u32 as usize;
        let out = data
            .get_mut(start..start + bytes.len())
            .filter(|_| start.is_multiple_of(align))
            .ok_or_else(|| {
                wasmtime::format_err!(
                    "poll_oneoff: pointer {start:#x} is out of bounds or misaligned"
                )
            })?;
        out.copy_from_slice(bytes);
        Ok(())
    };
    write(events, 8, &event)?;
    write(nevents, 4, &1u32.to_le_bytes())?;
    Ok(ERRNO_SUCCESS)
}

/// wasmtime-wasi's `poll_oneoff`, called as its own linker entry calls it.
async fn poll_oneoff(
    caller: &mut Caller<'_, RunState>,
    subs: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let memory = exported_memory(caller)
        .ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let ctx = wasi(state);
    ctx.set_hostcall_fuel(fuel);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    p1::poll_oneoff(ctx, &mut memory, subs, events, count, nevents).await
}
