//! Admission and compilation: [`Sandbox::prepare`] admits a module with
//! [`corral_admission::admit`], compiles it once per sha256 per process (served from
//! wasmtime's on-disk cache across processes) and links it into an [`InstancePre`] that every
//! later run of the module reuses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, PoisonError};

use corral_admission::{admit, Policy, RefusalKind};
use wasmtime::{Cache, InstancePre, Module};

use super::execute::RunState;
use super::outcome::Outcome;
use super::{Sandbox, SandboxError};

/// A module that passed admission: compiled and linked, ready to instantiate cheaply.
#[derive(Clone)]
pub struct PreparedModule {
    pub(crate) inner: Arc<Compiled>,
}

pub(crate) struct Compiled {
    pub(crate) sha256: String,
    pub(crate) pre: InstancePre<RunState>,
    /// It imports from `wasi_snapshot_preview1`; a run of one that does not needs no WASI
    /// context (and skips building it).
    pub(crate) uses_wasi: bool,
}

impl PreparedModule {
    /// Hex sha256 of the module's binary form.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
}

/// The result of [`Sandbox::prepare`]: a runnable module, and whether its compiled code was
/// reused.
#[derive(Clone)]
pub struct Prepared {
    /// The module.
    pub module: PreparedModule,
    /// True when the compiled code was reused (this process, or the on-disk cache).
    pub cached: bool,
}

/// A module refused at admission, with the outcome that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Hex sha256 of the bytes as given (of the binary form where the text parsed).
    pub sha256: String,
    /// `invalid_module` or `link_error`.
    pub outcome: Outcome,
}

/// Why [`Sandbox::prepare`] did not make a module runnable.
#[derive(Debug)]
pub enum PrepareError {
    /// Admission refused it: the module's doing (`invalid_module`, `link_error`).
    Refused(Rejection),
    /// An admitted module did not compile or link: Corral's failure.
    Sandbox(SandboxError),
}

/// A compiled module, or what the engine said when it failed (then the slot is dropped, so
/// the next admission of the module compiles it again).
type Slot = Arc<OnceLock<Result<Arc<Compiled>, String>>>;

/// Compiled modules by sha256; each slot is filled exactly once, so concurrent admissions of
/// the same module compile it once.
#[derive(Default)]
pub(crate) struct ModuleCache {
    slots: HashMap<[u8; 32], Slot>,
    order: VecDeque<[u8; 32]>,
}

impl ModuleCache {
    /// Drops `slot` for `digest`, if it is still the cache's.
    fn forget(&mut self, digest: &[u8; 32], slot: &Slot) {
        if self.slots.get(digest).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            self.slots.remove(digest);
            self.order.retain(|d| d != digest);
        }
    }

    /// The slot of `digest`, made (and the oldest slots dropped past `max`) if it is new.
    fn slot(&mut self, digest: [u8; 32], max: usize) -> Slot {
        if let Some(slot) = self.slots.get(&digest) {
            return slot.clone();
        }
        let slot = Slot::default();
        self.slots.insert(digest, slot.clone());
        self.order.push_back(digest);
        while self.order.len() > max.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.slots.remove(&old);
            }
        }
        slot
    }
}

impl Sandbox {
    /// Admits a module given as wasm binary or WAT text ([`corral_admission::admit`]: size cap,
    /// validation, pool limits, `_start`, imports), then compiles it (once per sha256) and
    /// links it.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, PrepareError> {
        self.prepare_within(bytes, self.inner.config.max_module_bytes)
    }

    /// [`Sandbox::prepare`] under a size cap of `max_module_bytes` instead of the config's (an
    /// agent admits under its host's cap).
    pub fn prepare_within(
        &self,
        bytes: &[u8],
        max_module_bytes: u64,
    ) -> Result<Prepared, PrepareError> {
        let inner = &*self.inner;
        let policy = Policy { max_module_bytes };
        // A module this process admitted and compiled already is not admitted again: its bytes
        // are the same (same sha256 of the binary form) and only the size cap may differ.
        if bytes.len() as u64 <= max_module_bytes {
            if let Ok(binary) = corral_admission::to_binary(bytes) {
                let digest = corral_admission::digest(&binary);
                if let Some(module) = self.compiled(&digest) {
                    return Ok(Prepared {
                        module,
                        cached: true,
                    });
                }
            }
        }
        let admitted = admit(bytes, &policy).map_err(|refused| {
            PrepareError::Refused(Rejection {
                sha256: refused.sha256,
                outcome: match refused.kind {
                    RefusalKind::InvalidModule => Outcome::InvalidModule {
                        message: refused.message,
                    },
                    RefusalKind::LinkError => Outcome::LinkError {
                        message: refused.message,
                    },
                },
            })
        })?;
        let sha256 = admitted.sha256_hex();
        let slot = inner
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slot(admitted.sha256, inner.config.max_cached_modules);
        let mut compiled_here = None;
        let result = slot.get_or_init(|| {
            let (result, from_disk) =
                self.compile(&admitted.binary, sha256.clone(), admitted.imports_wasi);
            compiled_here = Some(from_disk);
            result
        });
        match result {
            Ok(compiled) => Ok(Prepared {
                module: PreparedModule {
                    inner: compiled.clone(),
                },
                cached: compiled_here.unwrap_or(true),
            }),
            Err(message) => {
                let message = message.clone();
                inner
                    .modules
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(&admitted.sha256, &slot);
                Err(PrepareError::Sandbox(SandboxError::Compile {
                    sha256,
                    message,
                }))
            }
        }
    }

    /// The module compiled from a binary of this digest, if this process has it.
    fn compiled(&self, digest: &[u8; 32]) -> Option<PreparedModule> {
        let modules = self
            .inner
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match modules.slots.get(digest)?.get()? {
            Ok(compiled) => Some(PreparedModule {
                inner: compiled.clone(),
            }),
            Err(_) => None,
        }
    }

    /// Compiles and links an admitted module; the flag says whether the code came from the disk
    /// cache. Admission has checked everything compiling and linking check, so a failure here
    /// is the engine's (what it says is the error).
    fn compile(
        &self,
        binary: &[u8],
        sha256: String,
        uses_wasi: bool,
    ) -> (Result<Arc<Compiled>, String>, bool) {
        let inner = &*self.inner;
        let (module, from_disk) = {
            // Serialised so that the disk cache's hit counter can be attributed to one compile.
            let _serial = inner
                .compile_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let hits_before = inner.disk_cache.as_ref().map(Cache::cache_hits);
            let module = Module::from_binary(&inner.engine, binary);
            let hits_after = inner.disk_cache.as_ref().map(Cache::cache_hits);
            (module, hits_after > hits_before)
        };
        let module = match module {
            Ok(module) => module,
            Err(e) => return (Err(format!("{e:#}")), false),
        };
        let result = match inner.linker.instantiate_pre(&module) {
            Ok(pre) => Ok(Arc::new(Compiled {
                sha256,
                pre,
                uses_wasi,
            })),
            Err(e) => Err(format!("linking failed: {e:#}")),
        };
        (result, from_disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_compile_is_forgotten_so_the_next_admission_compiles_again() {
        let mut cache = ModuleCache::default();
        let digest = [7u8; 32];
        let failed = cache.slot(digest, 8);
        let _ = failed.set(Err("the engine ran out of memory".into()));
        cache.forget(&digest, &failed);
        let again = cache.slot(digest, 8);
        assert!(!Arc::ptr_eq(&failed, &again), "the failure was kept");
        assert!(again.get().is_none());
        // A slot that is no longer the cache's is not forgotten in its place.
        cache.forget(&digest, &failed);
        assert!(Arc::ptr_eq(&again, &cache.slot(digest, 8)));
    }
}
