//! What the sandbox provides to a guest: every function a module may import, by module, name and
//! core type. A module importing anything else, or one of these with another type, is refused
//! at admission with `link_error`, before it is stored or compiled.
//!
//! The sandbox's linker defines exactly these (WASI preview1 through wasmtime-wasi, and the
//! `corral` module of `corral-agent`); a test in `corral-agent` holds the two equal, entry by
//! entry and type by type.

use std::fmt;

/// A core value type of a provided function's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val {
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl Val {
    /// Whether this is the wasm value type `ty`.
    pub fn is(self, ty: wasmparser::ValType) -> bool {
        matches!(
            (self, ty),
            (Val::I32, wasmparser::ValType::I32)
                | (Val::I64, wasmparser::ValType::I64)
                | (Val::F32, wasmparser::ValType::F32)
                | (Val::F64, wasmparser::ValType::F64)
        )
    }

    /// The WAT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Val::I32 => "i32",
            Val::I64 => "i64",
            Val::F32 => "f32",
            Val::F64 => "f64",
        }
    }
}

/// One function the sandbox provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provided {
    /// Its import module (`wasi_snapshot_preview1` or `corral`).
    pub module: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [Val],
    /// Result types.
    pub results: &'static [Val],
}

impl Provided {
    /// Whether `ty` is exactly this function's type.
    pub fn matches(&self, ty: &wasmparser::FuncType) -> bool {
        let same = |ours: &[Val], theirs: &[wasmparser::ValType]| {
            ours.len() == theirs.len() && ours.iter().zip(theirs).all(|(a, b)| a.is(*b))
        };
        same(self.params, ty.params()) && same(self.results, ty.results())
    }
}

impl fmt::Display for Provided {
    /// The type in WAT form, as wasmparser writes a `FuncType`: `(func (param i32) (result i32))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(func")?;
        for (word, list) in [("param", self.params), ("result", self.results)] {
            if !list.is_empty() {
                write!(f, " ({word}")?;
                for v in list {
                    write!(f, " {}", v.as_str())?;
                }
                f.write_str(")")?;
            }
        }
        f.write_str(")")
    }
}

/// WASI preview1's import module.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";
/// Corral's own import module (progress, logs, metrics; see `corral-guest`).
pub const CORRAL_MODULE: &str = "corral";

use Val::{F64, I32, I64};

const fn wasi(name: &'static str, params: &'static [Val], results: &'static [Val]) -> Provided {
    Provided {
        module: WASI_MODULE,
        name,
        params,
        results,
    }
}

const ERRNO: &[Val] = &[I32];

/// Every function the sandbox provides, WASI preview1's in the order of its witx, then Corral's.
pub const PROVIDED: &[Provided] = &[
    wasi("args_get", &[I32, I32], ERRNO),
    wasi("args_sizes_get", &[I32, I32], ERRNO),
    wasi("environ_get", &[I32, I32], ERRNO),
    wasi("environ_sizes_get", &[I32, I32], ERRNO),
    wasi("clock_res_get", &[I32, I32], ERRNO),
    wasi("clock_time_get", &[I32, I64, I32], ERRNO),
    wasi("fd_advise", &[I32, I64, I64, I32], ERRNO),
    wasi("fd_allocate", &[I32, I64, I64], ERRNO),
    wasi("fd_close", &[I32], ERRNO),
    wasi("fd_datasync", &[I32], ERRNO),
    wasi("fd_fdstat_get", &[I32, I32], ERRNO),
    wasi("fd_fdstat_set_flags", &[I32, I32], ERRNO),
    wasi("fd_fdstat_set_rights", &[I32, I64, I64], ERRNO),
    wasi("fd_filestat_get", &[I32, I32], ERRNO),
    wasi("fd_filestat_set_size", &[I32, I64], ERRNO),
    wasi("fd_filestat_set_times", &[I32, I64, I64, I32], ERRNO),
    wasi("fd_pread", &[I32, I32, I32, I64, I32], ERRNO),
    wasi("fd_prestat_get", &[I32, I32], ERRNO),
    wasi("fd_prestat_dir_name", &[I32, I32, I32], ERRNO),
    wasi("fd_pwrite", &[I32, I32, I32, I64, I32], ERRNO),
    wasi("fd_read", &[I32, I32, I32, I32], ERRNO),
    wasi("fd_readdir", &[I32, I32, I32, I64, I32], ERRNO),
    wasi("fd_renumber", &[I32, I32], ERRNO),
    wasi("fd_seek", &[I32, I64, I32, I32], ERRNO),
    wasi("fd_sync", &[I32], ERRNO),
    wasi("fd_tell", &[I32, I32], ERRNO),
    wasi("fd_write", &[I32, I32, I32, I32], ERRNO),
    wasi("path_create_directory", &[I32, I32, I32], ERRNO),
    wasi("path_filestat_get", &[I32, I32, I32, I32, I32], ERRNO),
    wasi(
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        ERRNO,
    ),
    wasi("path_link", &[I32, I32, I32, I32, I32, I32, I32], ERRNO),
    wasi(
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        ERRNO,
    ),
    wasi("path_readlink", &[I32, I32, I32, I32, I32, I32], ERRNO),
    wasi("path_remove_directory", &[I32, I32, I32], ERRNO),
    wasi("path_rename", &[I32, I32, I32, I32, I32, I32], ERRNO),
    wasi("path_symlink", &[I32, I32, I32, I32, I32], ERRNO),
    wasi("path_unlink_file", &[I32, I32, I32], ERRNO),
    wasi("poll_oneoff", &[I32, I32, I32, I32], ERRNO),
    wasi("proc_exit", &[I32], &[]),
    wasi("proc_raise", &[I32], ERRNO),
    wasi("sched_yield", &[], ERRNO),
    wasi("random_get", &[I32, I32], ERRNO),
    wasi("sock_accept", &[I32, I32, I32], ERRNO),
    wasi("sock_recv", &[I32, I32, I32, I32, I32, I32], ERRNO),
    wasi("sock_send", &[I32, I32, I32, I32, I32], ERRNO),
    wasi("sock_shutdown", &[I32, I32], ERRNO),
    Provided {
        module: CORRAL_MODULE,
        name: "progress",
        params: &[I64, I64],
        results: &[],
    },
    Provided {
        module: CORRAL_MODULE,
        name: "log",
        params: &[I32, I32, I32],
        results: &[],
    },
    Provided {
        module: CORRAL_MODULE,
        name: "metric",
        params: &[I32, I32, F64],
        results: &[],
    },
];

/// The provided function `module::name`, if there is one.
pub fn lookup(module: &str, name: &str) -> Option<&'static Provided> {
    PROVIDED
        .iter()
        .find(|p| p.module == module && p.name == name)
}

/// A set of provided functions: a bit per entry of [`PROVIDED`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImportSet(u64);

const _: () = assert!(
    PROVIDED.len() <= 64,
    "an ImportSet holds a bit per provided function"
);

impl ImportSet {
    /// No function.
    pub const EMPTY: ImportSet = ImportSet(0);

    /// Every provided function.
    pub fn all() -> ImportSet {
        ImportSet(u64::MAX >> (64 - PROVIDED.len()))
    }

    /// Adds `module::name`; false when the sandbox provides no such function.
    pub fn insert(&mut self, module: &str, name: &str) -> bool {
        match PROVIDED
            .iter()
            .position(|p| p.module == module && p.name == name)
        {
            Some(i) => {
                self.0 |= 1 << i;
                true
            }
            None => false,
        }
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: &Provided) -> bool {
        PROVIDED
            .iter()
            .position(|q| q == p)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Functions in either set.
    pub fn union(self, other: ImportSet) -> ImportSet {
        ImportSet(self.0 | other.0)
    }

    /// Functions of this set not in `other`.
    pub fn difference(self, other: ImportSet) -> ImportSet {
        ImportSet(self.0 & !other.0)
    }

    /// Whether the set has no function.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The functions, in the order of [`PROVIDED`].
    pub fn iter(self) -> impl Iterator<Item = &'static Provided> {
        PROVIDED
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, p)| p)
    }
}

/// Longest import pattern accepted.
pub const MAX_PATTERN_BYTES: usize = 128;

/// Names provided functions in a policy: `MODULE::NAME` for one, `MODULE::PREFIX*` for every
/// function of `MODULE` whose name starts with `PREFIX` (`wasi_snapshot_preview1::path_*`, the
/// filesystem's path calls; `corral::*`, all of Corral's own). A pattern must name at least
/// one function the sandbox provides, so a misspelt one is refused rather than matching
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPattern {
    text: String,
    matched: ImportSet,
}

impl ImportPattern {
    /// A pattern as stored by an earlier Corral: what it names of the functions provided now,
    /// perhaps nothing (a function since removed), never refused. Text past
    /// [`MAX_PATTERN_BYTES`] names nothing.
    pub fn lenient(text: &str) -> ImportPattern {
        let matched = match text.parse::<ImportPattern>() {
            Ok(p) => p.matched,
            Err(_) => ImportSet::EMPTY,
        };
        ImportPattern {
            text: text.chars().take(MAX_PATTERN_BYTES).collect(),
            matched,
        }
    }

    /// The provided functions it names.
    pub fn matched(&self) -> ImportSet {
        self.matched
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ImportPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for ImportPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // The longest provided name is 30 bytes: a longer pattern names nothing, and is not
        // echoed back.
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "an import pattern of {} bytes names nothing (at most {MAX_PATTERN_BYTES})",
                text.len()
            ));
        }
        let (module, name) = text.split_once("::").ok_or_else(|| {
            format!(
                "import pattern {text:?} is not MODULE::NAME or MODULE::PREFIX* (like \
                 {WASI_MODULE}::path_open or {WASI_MODULE}::sock_*)"
            )
        })?;
        if !PROVIDED.iter().any(|p| p.module == module) {
            return Err(format!(
                "import pattern {text:?}: the sandbox provides no module {module:?} (only \
                 {WASI_MODULE} and {CORRAL_MODULE})"
            ));
        }
        let (prefix, whole) = match name.strip_suffix('*') {
            Some(prefix) => (prefix, false),
            None => (name, true),
        };
        let mut matched = ImportSet::EMPTY;
        for p in PROVIDED.iter().filter(|p| p.module == module) {
            if (whole && p.name == prefix) || (!whole && p.name.starts_with(prefix)) {
                matched.insert(p.module, p.name);
            }
        }
        if matched.is_empty() {
            return Err(format!(
                "import pattern {text:?} names no function the sandbox provides"
            ));
        }
        Ok(ImportPattern {
            text: text.to_string(),
            matched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_provided_functions_and_nothing_else() {
        let open: ImportPattern = "wasi_snapshot_preview1::path_open".parse().unwrap();
        let names: Vec<_> = open.matched().iter().map(|p| p.name).collect();
        assert_eq!(names, ["path_open"]);
        let paths: ImportPattern = "wasi_snapshot_preview1::path_*".parse().unwrap();
        assert_eq!(paths.matched().iter().count(), 10);
        assert!(paths.matched().iter().all(|p| p.name.starts_with("path_")));
        let corral: ImportPattern = "corral::*".parse().unwrap();
        assert_eq!(corral.matched().iter().count(), 3);
        let every: ImportPattern = "wasi_snapshot_preview1::*".parse().unwrap();
        assert_eq!(
            every.matched().union(corral.matched()),
            ImportSet::all(),
            "the two modules' patterns cover every provided function"
        );
        assert_eq!(paths.to_string(), "wasi_snapshot_preview1::path_*");
        for bad in [
            "path_open",
            "env::path_open",
            "wasi_snapshot_preview1::path_opne",
            "wasi_snapshot_preview1::nothing_*",
            "wasi_snapshot_preview1::",
        ] {
            assert!(bad.parse::<ImportPattern>().is_err(), "{bad} parsed");
        }
        // A long pattern is refused by its length, without being echoed back.
        let long = format!("wasi_snapshot_preview1::path_{}*", "a".repeat(200));
        let e = long.parse::<ImportPattern>().unwrap_err();
        assert!(e.contains("of 230 bytes") && !e.contains("aaaa"), "{e}");
        // A stored pattern naming a function no longer provided names nothing, and is kept.
        let gone = ImportPattern::lenient("wasi_snapshot_preview1::path_gone");
        assert!(gone.matched().is_empty());
        assert_eq!(gone.as_str(), "wasi_snapshot_preview1::path_gone");
        assert_eq!(
            ImportPattern::lenient("corral::*").matched(),
            corral.matched()
        );
    }

    #[test]
    fn sets_hold_what_is_inserted() {
        let mut set = ImportSet::EMPTY;
        assert!(set.insert(WASI_MODULE, "fd_write"));
        assert!(set.insert(CORRAL_MODULE, "log"));
        assert!(!set.insert("env", "fd_write"), "not provided");
        assert!(set.contains(lookup(WASI_MODULE, "fd_write").unwrap()));
        assert!(!set.contains(lookup(WASI_MODULE, "fd_read").unwrap()));
        let names: Vec<_> = set.iter().map(|p| (p.module, p.name)).collect();
        assert_eq!(names, [(WASI_MODULE, "fd_write"), (CORRAL_MODULE, "log")]);
        assert_eq!(ImportSet::all().iter().count(), PROVIDED.len());
        assert_eq!(
            ImportSet::all().difference(set).iter().count(),
            PROVIDED.len() - 2
        );
    }

    #[test]
    fn every_provided_function_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PROVIDED {
            assert!(
                seen.insert((p.module, p.name)),
                "{}::{} twice",
                p.module,
                p.name
            );
        }
        assert_eq!(
            PROVIDED.iter().filter(|p| p.module == WASI_MODULE).count(),
            46,
            "WASI preview1 has 46 functions"
        );
    }

    #[test]
    fn types_print_as_wat() {
        let write = lookup(WASI_MODULE, "fd_write").unwrap();
        assert_eq!(
            write.to_string(),
            "(func (param i32 i32 i32 i32) (result i32))"
        );
        assert_eq!(
            lookup(WASI_MODULE, "sched_yield").unwrap().to_string(),
            "(func (result i32))"
        );
        assert!(lookup("env", "fd_write").is_none());
    }
}
