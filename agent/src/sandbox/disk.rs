//! The disk quota of a run: the bytes by which the guest may grow files through WASI
//! ([`Limits::max_disk_bytes`](super::Limits::max_disk_bytes)). A task with a writable
//! directory once wrote 4 GiB into an agent's disk in 5 s; the output cap limited only what was
//! kept.
//!
//! `fd_write`, `fd_pwrite` and `fd_filestat_set_size` are shadowed. On a descriptor that is a
//! regular file (whatever its number), a call that could take the run past its quota (what it
//! has grown files by so far, plus the most this call could grow the file by: the bytes asked,
//! and any gap between the end of the file and where they go) ends the run with `disk_limit`,
//! nothing of it written; after the call, what the file really grew by is added. So writes
//! never take a run past its quota, and a run is stopped at most one write short of it. Overwriting in place
//! grows nothing; deleting or truncating files gives nothing back (the quota is on growth, so
//! a guest cannot churn the disk). Stdout and stderr are not files: the output caps hold them.
//!
//! Creating an entry (a file through `path_open` with `O_CREAT`, a directory, a symlink or a
//! hard link) costs [`ENTRY_BYTES`] of the quota, about what one takes on disk (an inode and
//! a directory block): so a guest creating empty files by the million runs out of quota, not
//! the agent out of inodes. `path_open`, `path_create_directory`, `path_symlink` and
//! `path_link` are shadowed for that. A creation is counted once it succeeded (one that
//! fails, for an existing name or a read-only directory, answers its errno and costs
//! nothing), and the run ends `disk_limit` when that takes it past its quota: so entries
//! exceed it by at most one.

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};

use super::execute::RunState;
use super::sleep::wasi;

use corral_admission::imports::WASI_MODULE as MODULE;
/// The most iovecs one call may pass (POSIX's `IOV_MAX` on Linux).
const IOV_MAX: u32 = 1024;
/// What creating one entry costs of the quota.
pub(crate) const ENTRY_BYTES: u64 = 4096;
/// `path_open`'s `O_CREAT`.
const OFLAGS_CREAT: i32 = 1;

/// What a run has grown files by, against its quota.
#[derive(Debug, Default)]
pub(crate) struct DiskQuota {
    pub(crate) max_bytes: u64,
    pub(crate) used_bytes: u64,
    /// A write was refused for the quota: the run ends `disk_limit`.
    pub(crate) hit: bool,
}

/// The error a refused write ends the run with.
#[derive(Debug)]
pub(crate) struct DiskLimitHit;

impl std::fmt::Display for DiskLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the run's disk quota is spent")
    }
}

impl std::error::Error for DiskLimitHit {}

/// What a call asks to write, as far as its arguments say.
enum Asked {
    /// `n` bytes at the descriptor's position (`fd_write`; at the end when appending).
    Write(u64),
    /// `n` bytes at `offset` (`fd_pwrite`).
    At { offset: u64, n: u64 },
    /// The file's size set to this (`fd_filestat_set_size`).
    SetSize(u64),
    /// Arguments POSIX refuses: the errno to answer (on a file; elsewhere wasmtime-wasi
    /// answers).
    Refused(i32),
}

const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Defines the three writing calls and the four creating ones over those
/// `wasmtime_wasi::p1::add_to_linker_async` put in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = (|| {
        linker.func_wrap_async(
            MODULE,
            "fd_write",
            |mut caller: Caller<'_, RunState>, (fd, iovs, len, nwritten): (i32, i32, i32, i32)| {
                Box::new(async move {
                    let asked = match iovec_bytes(&mut caller, iovs, len) {
                        Ok(n) => Asked::Write(n),
                        Err(errno) => Asked::Refused(errno),
                    };
                    guarded(&mut caller, fd, asked, |ctx, memory| {
                        Box::pin(p1::fd_write(ctx, memory, fd, iovs, len, nwritten))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "fd_pwrite",
            |mut caller: Caller<'_, RunState>,
             (fd, iovs, len, offset, nwritten): (i32, i32, i32, i64, i32)| {
                Box::new(async move {
                    let asked = match (iovec_bytes(&mut caller, iovs, len), u64::try_from(offset)) {
                        (Ok(n), Ok(offset)) => Asked::At { offset, n },
                        (Err(errno), _) => Asked::Refused(errno),
                        (_, Err(_)) => Asked::Refused(ERRNO_INVAL),
                    };
                    guarded(&mut caller, fd, asked, |ctx, memory| {
                        Box::pin(p1::fd_pwrite(ctx, memory, fd, iovs, len, offset, nwritten))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "fd_filestat_set_size",
            |mut caller: Caller<'_, RunState>, (fd, size): (i32, i64)| {
                Box::new(async move {
                    let asked =
                        u64::try_from(size).map_or(Asked::Refused(ERRNO_INVAL), Asked::SetSize);
                    guarded(&mut caller, fd, asked, |ctx, memory| {
                        Box::pin(p1::fd_filestat_set_size(ctx, memory, fd, size))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "path_open",
            |mut caller: Caller<'_, RunState>,
             (fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, fd_out): (
                i32,
                i32,
                i32,
                i32,
                i32,
                i64,
                i64,
                i32,
                i32,
            )| {
                Box::new(async move {
                    if oflags & OFLAGS_CREAT == 0
                        || exists(&mut caller, fd, dirflags, path, path_len).await
                    {
                        return invoke(&mut caller, |ctx, memory| {
                            Box::pin(p1::path_open(
                                ctx, memory, fd, dirflags, path, path_len, oflags, base,
                                inheriting, fdflags, fd_out,
                            ))
                        })
                        .await;
                    }
                    creating(&mut caller, |ctx, memory| {
                        Box::pin(p1::path_open(
                            ctx, memory, fd, dirflags, path, path_len, oflags, base, inheriting,
                            fdflags, fd_out,
                        ))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "path_create_directory",
            |mut caller: Caller<'_, RunState>, (fd, path, path_len): (i32, i32, i32)| {
                Box::new(async move {
                    creating(&mut caller, |ctx, memory| {
                        Box::pin(p1::path_create_directory(ctx, memory, fd, path, path_len))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "path_symlink",
            |mut caller: Caller<'_, RunState>,
             (old, old_len, fd, new, new_len): (i32, i32, i32, i32, i32)| {
                Box::new(async move {
                    creating(&mut caller, |ctx, memory| {
                        Box::pin(p1::path_symlink(
                            ctx, memory, old, old_len, fd, new, new_len,
                        ))
                    })
                    .await
                })
            },
        )?;
        linker.func_wrap_async(
            MODULE,
            "path_link",
            |mut caller: Caller<'_, RunState>,
             (old_fd, old_flags, old, old_len, fd, new, new_len): (
                i32,
                i32,
                i32,
                i32,
                i32,
                i32,
                i32,
            )| {
                Box::new(async move {
                    creating(&mut caller, |ctx, memory| {
                        Box::pin(p1::path_link(
                            ctx, memory, old_fd, old_flags, old, old_len, fd, new, new_len,
                        ))
                    })
                    .await
                })
            },
        )?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    defined
}

/// Runs `call`, which creates an entry; when it did, counts its cost, and ends the run if
/// that took it past its quota.
async fn creating(
    caller: &mut Caller<'_, RunState>,
    call: impl for<'a> FnOnce(
        &'a mut wasmtime_wasi::p1::WasiP1Ctx,
        &'a mut wiggle::GuestMemory<'a>,
    ) -> Call<'a>,
) -> wasmtime::Result<i32> {
    let errno = invoke(caller, call).await?;
    if errno == 0 {
        let quota = &mut caller.data_mut().disk;
        quota.used_bytes = quota.used_bytes.saturating_add(ENTRY_BYTES);
        if quota.used_bytes > quota.max_bytes {
            quota.hit = true;
            return Err(wasmtime::Error::new(DiskLimitHit));
        }
    }
    Ok(errno)
}

/// Whether `path` names an entry under directory `fd` (following symlinks as `dirflags`
/// say), as `path_open` would look it up.
async fn exists(
    caller: &mut Caller<'_, RunState>,
    fd: i32,
    dirflags: i32,
    path: i32,
    path_len: i32,
) -> bool {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return false;
    };
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    let fd = wasmtime_wasi::p1::types::Fd::from(fd as u32);
    let flags = wasmtime_wasi::p1::types::Lookupflags::from_bits_truncate(dirflags as u32);
    let path = wiggle::GuestPtr::<str>::new((path as u32, path_len as u32));
    let ctx = wasi(state);
    ctx.set_hostcall_fuel(fuel);
    ctx.path_filestat_get(&mut memory, fd, flags, path)
        .await
        .is_ok()
}

type Call<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = wasmtime::Result<i32>> + Send + 'a>>;

/// Runs `call` (wasmtime-wasi's own) on `fd`, unless `fd` is a file and the most it could grow
/// the file by would take the run past its quota; then counts what the file grew by. Whatever
/// descriptor number a file has (`fd_renumber` can put one on 1), it is a file that is checked.
async fn guarded(
    caller: &mut Caller<'_, RunState>,
    fd: i32,
    asked: Asked,
    call: impl for<'a> FnOnce(
        &'a mut wasmtime_wasi::p1::WasiP1Ctx,
        &'a mut wiggle::GuestMemory<'a>,
    ) -> Call<'a>,
) -> wasmtime::Result<i32> {
    let before = file_size(caller, fd).await;
    if let Some(size) = before {
        // The most the file can grow by: a write past the end fills the gap too.
        let most = match asked {
            Asked::Refused(errno) => return Ok(errno),
            Asked::Write(n) => {
                let position = position(caller, fd).unwrap_or(size);
                n.saturating_add(position.saturating_sub(size))
            }
            Asked::At { offset, n } => n.saturating_add(offset.saturating_sub(size)),
            Asked::SetSize(to) => to.saturating_sub(size),
        };
        let quota = &mut caller.data_mut().disk;
        if quota.used_bytes.saturating_add(most) > quota.max_bytes {
            quota.hit = true;
            return Err(wasmtime::Error::new(DiskLimitHit));
        }
    }
    let errno = invoke(caller, call).await?;
    if let Some(before) = before {
        let after = file_size(caller, fd).await.unwrap_or(before);
        let quota = &mut caller.data_mut().disk;
        quota.used_bytes = quota
            .used_bytes
            .saturating_add(after.saturating_sub(before));
    }
    Ok(errno)
}

/// Runs `call`, one of wasmtime-wasi's own, on the guest's memory.
async fn invoke(
    caller: &mut Caller<'_, RunState>,
    call: impl for<'a> FnOnce(
        &'a mut wasmtime_wasi::p1::WasiP1Ctx,
        &'a mut wiggle::GuestMemory<'a>,
    ) -> Call<'a>,
) -> wasmtime::Result<i32> {
    // As wasmtime-wasi's own linker entry does: the call's budget for copying arrays.
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::format_err!("missing required memory export"));
    };
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let ctx = wasi(state);
    ctx.set_hostcall_fuel(fuel);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    call(ctx, &mut memory).await
}

/// The position of descriptor `fd`.
fn position(caller: &mut Caller<'_, RunState>, fd: i32) -> Option<u64> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    let fd = wasmtime_wasi::p1::types::Fd::from(fd as u32);
    wasi(state).fd_tell(&mut memory, fd).ok()
}

/// The size of the file `fd` names; `None` for a descriptor that is not an open file.
async fn file_size(caller: &mut Caller<'_, RunState>, fd: i32) -> Option<u64> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let mut memory = wiggle::GuestMemory::Unshared(data);
    let fd = wasmtime_wasi::p1::types::Fd::from(fd as u32);
    let stat = wasi(state).fd_filestat_get(&mut memory, fd).await.ok()?;
    (stat.filetype == wasmtime_wasi::p1::types::Filetype::RegularFile).then_some(stat.size)
}

/// The bytes an iovec array asks to write: `inval` past `IOV_MAX` entries and `fault` for an
/// array outside the guest's memory, as POSIX's `writev` answers.
fn iovec_bytes(caller: &mut Caller<'_, RunState>, iovs: i32, len: i32) -> Result<u64, i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(ERRNO_FAULT);
    };
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l <= IOV_MAX)
        .ok_or(ERRNO_INVAL)?;
    let start = iovs as u32 as usize;
    let data = memory.data(&*caller);
    let array = start
        .checked_add(len as usize * 8)
        .and_then(|end| data.get(start..end))
        .ok_or(ERRNO_FAULT)?;
    Ok(array
        .chunks_exact(8)
        .map(|iov| u64::from(u32::from_le_bytes(iov[4..8].try_into().unwrap())))
        .sum())
}
