//! WASI's socket calls, answered quietly. The sandbox grants no sockets, so preview1's
//! `sock_accept`, `sock_recv`, `sock_send` and `sock_shutdown` can only fail: with `badf` for a
//! descriptor the guest does not have, and `notsock` for one it has, as wasmtime-wasi answers.
//! wasmtime-wasi also logs a warning on every such call, which let one guest calling
//! `sock_accept` in a loop write 91 MiB of log in 10 s. These definitions shadow its own: the
//! first such call of a run is logged once, and every one is counted in the run's report
//! ([`RunReport::guest_warnings`](super::RunReport::guest_warnings)).

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;

use super::execute::RunState;
use super::sleep::wasi;

use corral_admission::imports::WASI_MODULE as MODULE;
const ERRNO_BADF: i32 = 8;
const ERRNO_NOTSOCK: i32 = 57;

/// Defines the four socket calls over the ones `wasmtime_wasi::p1::add_to_linker_async` put in
/// `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = (|| {
        linker.func_wrap_async(
            MODULE,
            "sock_accept",
            |mut caller: Caller<'_, RunState>, (fd, _flags, _ro_fd): (i32, i32, i32)| {
                Box::new(async move { Ok(refuse(&mut caller, "sock_accept", fd).await) })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "sock_recv",
            |mut caller: Caller<'_, RunState>, (fd, ..): (i32, i32, i32, i32, i32, i32)| {
                Box::new(async move { Ok(refuse(&mut caller, "sock_recv", fd).await) })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "sock_send",
            |mut caller: Caller<'_, RunState>, (fd, ..): (i32, i32, i32, i32, i32)| {
                Box::new(async move { Ok(refuse(&mut caller, "sock_send", fd).await) })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "sock_shutdown",
            |mut caller: Caller<'_, RunState>, (fd, _how): (i32, i32)| {
                Box::new(async move { Ok(refuse(&mut caller, "sock_shutdown", fd).await) })
            },
        )?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    defined
}

/// Counts (and, the first time in a run, logs) a socket call, and answers its errno.
async fn refuse(caller: &mut Caller<'_, RunState>, call: &'static str, fd: i32) -> i32 {
    let record = &mut caller.data_mut().guest;
    record.guest_warnings += 1;
    if record.guest_warnings == 1 {
        tracing::warn!(
            call,
            "the guest called a WASI socket function, which the sandbox does not provide; \
             further such calls of this run are counted in its report, not logged"
        );
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return ERRNO_BADF;
    };
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    let fd = wasmtime_wasi::p1::types::Fd::from(fd as u32);
    match wasi(state).fd_fdstat_get(&mut memory, fd).await {
        Ok(_) => ERRNO_NOTSOCK,
        Err(_) => ERRNO_BADF,
    }
}
