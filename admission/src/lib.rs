//! `corral-admission`: whether Corral will run a module, decided without compiling it.
//!
//! Admission is one function, [`admit`], used by the host when a module is uploaded and by the
//! sandbox before it compiles one, so that what the host accepts the agent can run, and a bad
//! module is refused at upload with the reason rather than failing later on an agent. It needs
//! no wasm engine: `wat` for text, `wasmparser` for validation, and a table of what the sandbox
//! provides ([`imports::PROVIDED`]).
//!
//! A module is admitted when, in this order:
//! 1. it is at most [`Policy::max_module_bytes`] long (binary or text, checked before parsing);
//! 2. it is a wasm binary, or WAT text that converts to one;
//! 3. it validates with exactly the sandbox engine's feature set, [`FEATURES`];
//! 4. it is within the structural limits that keep compiling it cheap: at most
//!    [`MAX_FUNCTIONS`] functions, each of at most [`MAX_FUNCTION_BODY_BYTES`] bytes, with at
//!    most [`MAX_FUNCTION_LOCALS`] locals and blocks nested at most [`MAX_NESTING`] deep;
//!    checked as the module is read, so an absurd module is refused before the rest of it is
//!    validated;
//! 5. it fits the sandbox's instance pool: at most [`MAX_MEMORIES`] memories and
//!    [`MAX_TABLES`] tables, tables of at most [`MAX_TABLE_ELEMENTS`] initial elements,
//!    memories of at most [`MAX_MEMORY_BYTES`] initially, and instance state within
//!    [`MAX_INSTANCE_BYTES`];
//! 6. it exports `_start` as a function of type `() -> ()` (a WASI command);
//! 7. every import is a function the sandbox provides, with the same type.
//!
//! Steps 1 to 6 refuse with [`RefusalKind::InvalidModule`], step 7 with
//! [`RefusalKind::LinkError`]; the message names what is wrong (the import's module, name and
//! type). `corral-agent` holds the feature set, the import table and the pool limits against
//! its real engine, linker and pooling allocator in its tests.
//!
//! ```
//! use corral_admission::{admit, Policy, RefusalKind};
//!
//! let policy = Policy::default();
//! let ok = admit(br#"(module (func (export "_start")))"#, &policy).unwrap();
//! assert!(ok.binary.starts_with(b"\0asm"));
//! assert!(!ok.imports_wasi);
//!
//! let evil = admit(br#"(module (import "env" "evil" (func)) (func (export "_start")))"#, &policy)
//!     .unwrap_err();
//! assert_eq!(evil.kind, RefusalKind::LinkError);
//! assert!(evil.message.contains("env::evil"), "{}", evil.message);
//! ```

pub mod imports;

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};
use wasmparser::types::{CoreTypeId, EntityType};
use wasmparser::{
    CompositeInnerType, FuncValidatorAllocations, Parser, Payload, TypeRef, ValidPayload,
    Validator, WasmFeatures,
};

/// The wasm features the sandbox's engine enables: wasmtime 48's defaults (the WebAssembly 3.0
/// set) without what Corral builds it without: threads and shared memory (no `threads` crate
/// feature), GC types and exceptions (no `gc` crate feature). The component model is on, as
/// wasmtime-wasi builds it, but a component is refused like the engine refuses one: Corral
/// runs core modules.
pub const FEATURES: WasmFeatures = WasmFeatures::WASM3
    .union(WasmFeatures::COMPONENT_MODEL)
    .difference(WasmFeatures::THREADS)
    .difference(WasmFeatures::GC_TYPES)
    .difference(WasmFeatures::EXCEPTIONS)
    .difference(WasmFeatures::CM_ASYNC);

/// Memories a module may define (Rust and C guests have one).
pub const MAX_MEMORIES: u32 = 4;
/// Tables a module may define.
pub const MAX_TABLES: u32 = 16;
/// Initial elements of any one table: what a pooled instance slot holds.
pub const MAX_TABLE_ELEMENTS: u64 = 100_000;
/// Initial bytes of any one memory: a pooled slot holds a 32-bit address space.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Bytes of per-instance state (wasmtime's `VMContext`: imports, globals, function
/// references, tables, memories, segments) a module may need, as bounded by
/// [`instance_bytes_bound`]. The sandbox's pool allows this much per instance.
pub const MAX_INSTANCE_BYTES: u64 = 16 << 20;

/// Functions a module may have, imported and defined. Compiling costs time and memory per
/// function: a 36 MB module of a million functions took 86 s and 5.7 GB; programs of a few MB
/// built by LLVM have thousands to tens of thousands.
pub const MAX_FUNCTIONS: u64 = 100_000;
/// Bytes of one function's body (its locals and code).
pub const MAX_FUNCTION_BODY_BYTES: usize = 2 << 20;
/// Locals one function may declare, parameters not included (the JS API's limit, which every
/// toolchain that targets browsers keeps to).
pub const MAX_FUNCTION_LOCALS: u64 = 50_000;
/// How deeply one function may nest blocks, loops, ifs and `try_table`s. Compile time grows
/// with the square of the depth: 1,000 nested loops compile in 0.2 s, 6,000 in 2.7 s, 20,000
/// in 16 s.
pub const MAX_NESTING: u32 = 4_096;

/// The name a WASI command exports as its entry point.
pub const START: &str = "_start";

/// What admission is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Largest module accepted, in bytes, binary or text form.
    pub max_module_bytes: u64,
}

impl Policy {
    /// Default module size cap: 64 MiB.
    pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 << 20;
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_module_bytes: Self::DEFAULT_MAX_MODULE_BYTES,
        }
    }
}

/// A module that passed admission.
#[derive(Clone, Debug)]
pub struct Admitted<'a> {
    /// The binary form (WAT text converted; a binary borrowed as given).
    pub binary: Cow<'a, [u8]>,
    /// sha256 of the binary form: the module's identity everywhere in Corral.
    pub sha256: [u8; 32],
    /// It imports from `wasi_snapshot_preview1`, so a run needs a WASI context.
    pub imports_wasi: bool,
    /// The provided functions it imports (a tenant's policy may forbid some).
    pub imports: imports::ImportSet,
}

impl Admitted<'_> {
    /// The sha256 as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(&self.sha256)
    }
}

/// Why a module was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not wasm or WAT, invalid, too large for the caps, or not a WASI command.
    InvalidModule,
    /// It imports something the sandbox does not provide, or with another type.
    LinkError,
}

/// A refused module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// sha256 (hex) of the binary form, or of the bytes as given when they are not a module.
    pub sha256: String,
    /// Which outcome the refusal is.
    pub kind: RefusalKind,
    /// What is wrong, naming the thing.
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// Admits `bytes` (a wasm binary or WAT text) under `policy`: see the crate documentation for
/// the checks, in order.
pub fn admit<'a>(bytes: &'a [u8], policy: &Policy) -> Result<Admitted<'a>, Refused> {
    let refuse_raw = |message: String| Refused {
        sha256: sha256_hex(&Sha256::digest(bytes).into()),
        kind: RefusalKind::InvalidModule,
        message,
    };
    if bytes.len() as u64 > policy.max_module_bytes {
        return Err(refuse_raw(format!(
            "module is {} bytes, over the {}-byte cap",
            bytes.len(),
            policy.max_module_bytes
        )));
    }
    let binary = to_binary(bytes).map_err(refuse_raw)?;
    let sha256: [u8; 32] = Sha256::digest(&binary).into();
    let refuse = |kind: RefusalKind, message: String| Refused {
        sha256: sha256_hex(&sha256),
        kind,
        message,
    };
    let shape = inspect(&binary).map_err(|m| refuse(RefusalKind::InvalidModule, m))?;
    shape
        .fits_pool()
        .map_err(|m| refuse(RefusalKind::InvalidModule, m))?;
    match &shape.start {
        Some(ty) if ty.params().is_empty() && ty.results().is_empty() => {}
        Some(ty) => {
            return Err(refuse(
                RefusalKind::InvalidModule,
                format!(
                    "`_start` has type {ty}; a WASI command's `_start` takes and returns nothing"
                ),
            ))
        }
        None => {
            return Err(refuse(
                RefusalKind::InvalidModule,
                "module exports no `_start` function: a task must be a WASI command module \
                 (built for wasm32-wasip1)"
                    .into(),
            ))
        }
    }
    for import in &shape.imports {
        check_import(import).map_err(|m| refuse(RefusalKind::LinkError, m))?;
    }
    let imports_wasi = shape
        .imports
        .iter()
        .any(|i| i.module == imports::WASI_MODULE);
    let mut imported = imports::ImportSet::EMPTY;
    for import in &shape.imports {
        imported.insert(&import.module, &import.name);
    }
    Ok(Admitted {
        binary,
        sha256,
        imports_wasi,
        imports: imported,
    })
}

/// The provided functions a wasm binary imports, read from its import section alone (what
/// [`Admitted::imports`] says of an admitted module, for one stored before it was kept).
/// Imports the sandbox does not provide are left out: such a module does not link anyway.
pub fn imports_of(binary: &[u8]) -> Result<imports::ImportSet, String> {
    let mut imported = imports::ImportSet::EMPTY;
    for payload in Parser::new(0).parse_all(binary) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    if matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        imported.insert(import.module, import.name);
                    }
                }
            }
            // The import section comes before every section after these.
            Payload::Version { .. } | Payload::TypeSection(_) | Payload::CustomSection(_) => {}
            _ => break,
        }
    }
    Ok(imported)
}

/// Accepts a wasm binary as is and converts WAT text to binary.
pub fn to_binary(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if bytes.starts_with(b"\0asm") {
        return Ok(Cow::Borrowed(bytes));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => wat::parse_str(text)
            .map(Cow::Owned)
            .map_err(|e| format!("not a wasm binary, and not valid WAT text: {e}")),
        Err(_) => Err("not a wasm binary (no `\\0asm` magic) and not WAT text".into()),
    }
}

/// The sha256 of a module's binary form (WAT text is converted first), as lowercase hex.
pub fn module_sha256(bytes: &[u8]) -> Result<String, String> {
    to_binary(bytes).map(|binary| sha256_hex(&Sha256::digest(&binary).into()))
}

/// The sha256 of `bytes` as they are.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The sha256 of `bytes` as they are, as lowercase hex.
pub fn sha256_of(bytes: &[u8]) -> String {
    sha256_hex(&Sha256::digest(bytes).into())
}

/// The sha256 (lowercase hex) and size of a file's bytes, read a megabyte at a time: for
/// inputs, which may be gigabytes.
pub fn sha256_of_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((sha256_hex(&hasher.finalize().into()), size));
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
}

/// Lowercase hex of a sha256 digest.
pub fn sha256_hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether `text` is a sha256 in lowercase hex, as Corral names modules.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An upper bound on the bytes of instance state (wasmtime's `Instance` and `VMContext`) a
/// module with these counts needs: every entry of the context is at most 64 bytes on a 64-bit
/// host (a function import is 3 pointers, a function reference 4, a global 16 bytes), plus
/// 64 KiB for the fixed part. Each function is counted as if referenced (`ref.func`, tables,
/// exports), which wasmtime gives a 32-byte reference in the context.
pub fn instance_bytes_bound(counts: &Counts) -> u64 {
    const FIXED: u64 = 64 << 10;
    const ENTRY: u64 = 64;
    let entries = [
        counts.imports,
        counts.functions,
        counts.globals,
        counts.tables,
        counts.memories.saturating_mul(2),
        counts.tags,
        counts.data_segments,
        counts.element_segments,
    ]
    .iter()
    .fold(0u64, |sum, n| sum.saturating_add(*n));
    FIXED.saturating_add(entries.saturating_mul(ENTRY))
}

/// What a module holds, as the instance-state bound counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Imports of any kind.
    pub imports: u64,
    /// Functions, imported and defined.
    pub functions: u64,
    /// Globals, imported and defined.
    pub globals: u64,
    /// Tables defined.
    pub tables: u64,
    /// Memories defined.
    pub memories: u64,
    /// Tags, imported and defined.
    pub tags: u64,
    /// Data segments.
    pub data_segments: u64,
    /// Element segments.
    pub element_segments: u64,
}

/// An import as admission checks it.
struct Import {
    module: String,
    name: String,
    kind: ImportKind,
}

enum ImportKind {
    Func(wasmparser::FuncType),
    Other(&'static str),
}

/// What admission needs to know of a valid module.
struct Shape {
    counts: Counts,
    /// Initial elements of each defined table.
    table_minimums: Vec<u64>,
    /// Initial bytes of each defined memory (`None`: not representable in a u64).
    memory_minimums: Vec<Option<u64>>,
    /// The type of the function exported as `_start`, if one is.
    start: Option<wasmparser::FuncType>,
    imports: Vec<Import>,
}

impl Shape {
    fn fits_pool(&self) -> Result<(), String> {
        let c = &self.counts;
        if c.memories > u64::from(MAX_MEMORIES) {
            return Err(format!(
                "module defines {} memories; the sandbox allows at most {MAX_MEMORIES}",
                c.memories
            ));
        }
        if c.tables > u64::from(MAX_TABLES) {
            return Err(format!(
                "module defines {} tables; the sandbox allows at most {MAX_TABLES}",
                c.tables
            ));
        }
        for (i, min) in self.table_minimums.iter().enumerate() {
            if *min > MAX_TABLE_ELEMENTS {
                return Err(format!(
                    "table {i} starts with {min} elements; the sandbox allows at most \
                     {MAX_TABLE_ELEMENTS}"
                ));
            }
        }
        for (i, min) in self.memory_minimums.iter().enumerate() {
            if min.is_none_or(|bytes| bytes > MAX_MEMORY_BYTES) {
                let shown = min.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
                return Err(format!(
                    "memory {i} starts at {shown} bytes; the sandbox allows at most \
                     {MAX_MEMORY_BYTES}"
                ));
            }
        }
        let bound = instance_bytes_bound(c);
        if bound > MAX_INSTANCE_BYTES {
            return Err(format!(
                "module needs up to {bound} bytes of instance state ({} imports, {} functions, \
                 {} globals, {} data and {} element segments); the sandbox allows \
                 {MAX_INSTANCE_BYTES}",
                c.imports, c.functions, c.globals, c.data_segments, c.element_segments
            ));
        }
        Ok(())
    }
}

/// Validates one function's body, refusing it past the structural limits as soon as it is
/// seen to be (its size before reading it, its locals as they are declared, its nesting as it
/// deepens).
fn validate_body(
    func: &mut wasmparser::FuncValidator<wasmparser::ValidatorResources>,
    body: &wasmparser::FunctionBody<'_>,
    index: u32,
) -> Result<(), String> {
    let size = body.range().len();
    if size > MAX_FUNCTION_BODY_BYTES {
        return Err(format!(
            "function {index} is {size} bytes; the sandbox allows at most \
             {MAX_FUNCTION_BODY_BYTES} bytes per function"
        ));
    }
    let mut reader = body.get_binary_reader();
    reader.set_features(FEATURES);
    let mut locals = 0u64;
    let declarations = reader.read_var_u32().map_err(|e| e.to_string())?;
    for _ in 0..declarations {
        let offset = reader.original_position();
        let count: u32 = reader.read().map_err(|e| e.to_string())?;
        locals += u64::from(count);
        if locals > MAX_FUNCTION_LOCALS {
            return Err(format!(
                "function {index} declares more than {MAX_FUNCTION_LOCALS} locals, the most the \
                 sandbox allows"
            ));
        }
        let ty = reader.read().map_err(|e| e.to_string())?;
        func.define_locals(offset, count, ty)
            .map_err(|e| e.to_string())?;
    }
    while !reader.eof() {
        reader
            .visit_operator(&mut func.visitor(reader.original_position()))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // The function's own frame is the first on the stack.
        if func.control_stack_height().saturating_sub(1) > MAX_NESTING {
            return Err(format!(
                "function {index} nests blocks more than {MAX_NESTING} deep, the most the \
                 sandbox allows"
            ));
        }
    }
    reader
        .finish_expression(&func.visitor(reader.original_position()))
        .map_err(|e| e.to_string())
}

/// Validates `binary` with [`FEATURES`] and reads what admission checks from it.
fn inspect(binary: &[u8]) -> Result<Shape, String> {
    let mut validator = Validator::new_with_features(FEATURES);
    let mut allocations = FuncValidatorAllocations::default();
    let mut counts = Counts::default();
    let mut table_minimums = Vec::new();
    let mut memory_minimums = Vec::new();
    let mut raw_imports = Vec::new();
    let mut types = None;
    for payload in Parser::new(0).parse_all(binary) {
        let payload = payload.map_err(|e| e.to_string())?;
        if let Payload::Version {
            encoding: wasmparser::Encoding::Component,
            ..
        } = payload
        {
            return Err(
                "a component, not a core module: a task must be a WASI preview1 \
                        command module (built for wasm32-wasip1)"
                    .into(),
            );
        }
        match validator.payload(&payload).map_err(|e| e.to_string())? {
            ValidPayload::Ok => {}
            ValidPayload::Func(func, body) => {
                let index = func.index;
                let mut func = func.into_validator(allocations);
                validate_body(&mut func, &body, index)?;
                allocations = func.into_allocations();
            }
            ValidPayload::End(t) => types = Some(t),
            // A component or nested module: refused by the feature set before this.
            ValidPayload::Parser(_) => return Err("components are not supported".into()),
        }
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    counts.imports += 1;
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => counts.functions += 1,
                        TypeRef::Global(_) => counts.globals += 1,
                        TypeRef::Tag(_) => counts.tags += 1,
                        TypeRef::Table(_) | TypeRef::Memory(_) => {}
                    }
                    raw_imports.push((
                        import.module.to_string(),
                        import.name.to_string(),
                        import.ty,
                    ));
                }
            }
            Payload::FunctionSection(reader) => {
                counts.functions += u64::from(reader.count());
                if counts.functions > MAX_FUNCTIONS {
                    return Err(format!(
                        "module has {} functions; the sandbox allows at most {MAX_FUNCTIONS}",
                        counts.functions
                    ));
                }
            }
            Payload::GlobalSection(reader) => counts.globals += u64::from(reader.count()),
            Payload::TagSection(reader) => counts.tags += u64::from(reader.count()),
            Payload::DataSection(reader) => counts.data_segments += u64::from(reader.count()),
            Payload::ElementSection(reader) => counts.element_segments += u64::from(reader.count()),
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table.map_err(|e| e.to_string())?;
                    counts.tables += 1;
                    table_minimums.push(table.ty.initial);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(|e| e.to_string())?;
                    counts.memories += 1;
                    let page = 1u64.checked_shl(memory.page_size_log2.unwrap_or(16));
                    memory_minimums.push(page.and_then(|p| memory.initial.checked_mul(p)));
                }
            }
            _ => {}
        }
    }
    let types = types.ok_or("the module ends early")?;
    let types = types.as_ref();
    let func_type = |id: CoreTypeId| match &types[id].composite_type.inner {
        CompositeInnerType::Func(f) => Some(f.clone()),
        _ => None,
    };
    let imports = raw_imports
        .into_iter()
        .map(|(module, name, ty)| {
            let kind = match ty {
                TypeRef::Func(index) | TypeRef::FuncExact(index) => {
                    func_type(types.core_type_at_in_module(index)).map_or(
                        ImportKind::Other("function of a non-function type"),
                        ImportKind::Func,
                    )
                }
                TypeRef::Table(_) => ImportKind::Other("table"),
                TypeRef::Memory(_) => ImportKind::Other("memory"),
                TypeRef::Global(_) => ImportKind::Other("global"),
                TypeRef::Tag(_) => ImportKind::Other("tag"),
            };
            Import { module, name, kind }
        })
        .collect();
    let start = types.core_exports().and_then(|mut exports| {
        exports.find_map(|(name, ty)| match ty {
            EntityType::Func(id) | EntityType::FuncExact(id) if name == START => func_type(id),
            _ => None,
        })
    });
    Ok(Shape {
        counts,
        table_minimums,
        memory_minimums,
        start,
        imports,
    })
}

/// Whether the sandbox provides `import`, with its type.
fn check_import(import: &Import) -> Result<(), String> {
    let (module, name) = (&import.module, &import.name);
    let provided = imports::lookup(module, name);
    match (&import.kind, provided) {
        (ImportKind::Func(ty), Some(p)) if p.matches(ty) => Ok(()),
        (ImportKind::Func(ty), Some(p)) => Err(format!(
            "import {module}::{name} has type {ty}, but the sandbox provides it as {p}"
        )),
        (ImportKind::Func(ty), None) => Err(format!(
            "import {module}::{name} {ty} is not provided by the sandbox: a task may import \
             only WASI preview1 ({}) and Corral's own functions ({})",
            imports::WASI_MODULE,
            imports::CORRAL_MODULE
        )),
        (ImportKind::Other(kind), _) => Err(format!(
            "import {module}::{name} is a {kind}; the sandbox provides only functions (WASI \
             preview1 and Corral's own)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_digest_read_a_megabyte_at_a_time_is_that_of_its_bytes() {
        let path = std::env::temp_dir().join(format!("corral-digest-{}", std::process::id()));
        // Over two reads, the last one short.
        let bytes: Vec<u8> = (0..(1u32 << 20) + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let read = sha256_of_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.unwrap(), (sha256_of(&bytes), bytes.len() as u64));
    }

    #[test]
    fn an_admitted_module_says_what_it_imports_and_its_import_section_agrees() {
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "path_open"
                (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
            (import "corral" "progress" (func (param i64 i64)))
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (func (export "_start")))"#;
        let ok = admit(wat.as_bytes(), &Policy::default()).unwrap();
        let names: Vec<_> = ok.imports.iter().map(|p| (p.module, p.name)).collect();
        assert_eq!(
            names,
            [
                ("wasi_snapshot_preview1", "path_open"),
                ("wasi_snapshot_preview1", "proc_exit"),
                ("corral", "progress"),
            ]
        );
        assert_eq!(imports_of(&ok.binary).unwrap(), ok.imports);
        let none = admit(br#"(module (func (export "_start")))"#, &Policy::default()).unwrap();
        assert!(none.imports.is_empty());
        assert!(imports_of(&none.binary).unwrap().is_empty());
        assert!(
            imports_of(b"\0asm\x01\0\0\0\x02\xff").is_err(),
            "a cut import section"
        );
    }

    fn refused(wat: &str) -> Refused {
        admit(wat.as_bytes(), &Policy::default()).unwrap_err()
    }

    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// A binary module whose one function, exported as `_start: () -> ()`, has `body` (its
    /// locals and code, `end` included) as is.
    fn with_body(body: &[u8]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let section = |m: &mut Vec<u8>, id: u8, content: &[u8]| {
            m.push(id);
            leb(content.len(), m);
            m.extend_from_slice(content);
        };
        section(&mut m, 1, &[1, 0x60, 0, 0]);
        section(&mut m, 3, &[1, 0]);
        section(&mut m, 7, &[1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0]);
        let mut code = vec![1];
        leb(body.len(), &mut code);
        code.extend_from_slice(body);
        section(&mut m, 10, &code);
        m
    }

    fn admitted(binary: &[u8]) -> Result<(), String> {
        admit(binary, &Policy::default())
            .map(|_| ())
            .map_err(|r| r.message)
    }

    #[test]
    fn too_many_functions_are_refused_naming_the_limit() {
        let module = |n: u64| {
            let funcs = "(func)".repeat(n as usize - 1);
            wat::parse_str(format!(r#"(module {funcs} (func (export "_start")))"#)).unwrap()
        };
        admitted(&module(MAX_FUNCTIONS)).unwrap();
        let message = admitted(&module(MAX_FUNCTIONS + 1)).unwrap_err();
        assert!(message.contains("100001 functions"), "{message}");
        assert!(message.contains("at most 100000"), "{message}");
    }

    #[test]
    fn a_function_too_large_is_refused_naming_the_limit() {
        let body = |nops: usize| {
            let mut body = vec![0];
            body.resize(1 + nops, 0x01);
            body.push(0x0b);
            body
        };
        admitted(&with_body(&body(MAX_FUNCTION_BODY_BYTES - 2))).unwrap();
        let message = admitted(&with_body(&body(MAX_FUNCTION_BODY_BYTES - 1))).unwrap_err();
        assert!(message.contains("function 0 is 2097153 bytes"), "{message}");
        assert!(message.contains("at most 2097152 bytes"), "{message}");
    }

    #[test]
    fn too_many_locals_are_refused_naming_the_limit() {
        let body = |runs: &[u32]| {
            let mut body = Vec::new();
            leb(runs.len(), &mut body);
            for run in runs {
                leb(*run as usize, &mut body);
                body.push(0x7f);
            }
            body.push(0x0b);
            body
        };
        admitted(&with_body(&body(&[40_000, 10_000]))).unwrap();
        let message = admitted(&with_body(&body(&[40_000, 10_001]))).unwrap_err();
        assert!(message.contains("more than 50000 locals"), "{message}");
        // A count that overflows u32 when summed is still refused by the limit.
        let message = admitted(&with_body(&body(&[u32::MAX, u32::MAX]))).unwrap_err();
        assert!(message.contains("more than 50000 locals"), "{message}");
    }

    #[test]
    fn blocks_nested_too_deep_are_refused_naming_the_limit() {
        let nested = |depth: u32| {
            let mut body = vec![0];
            for _ in 0..depth {
                body.extend_from_slice(&[0x03, 0x40]);
            }
            body.resize(body.len() + depth as usize + 1, 0x0b);
            with_body(&body)
        };
        admitted(&nested(MAX_NESTING)).unwrap();
        let message = admitted(&nested(MAX_NESTING + 1)).unwrap_err();
        assert!(message.contains("more than 4096 deep"), "{message}");
        // The compile bomb of 20,000 nested loops is refused before it costs anything.
        let message = admitted(&nested(20_000)).unwrap_err();
        assert!(message.contains("nests blocks"), "{message}");
    }

    #[test]
    fn a_start_that_takes_or_returns_something_is_refused_with_its_type() {
        let r = refused(r#"(module (func (export "_start") (param i32)))"#);
        assert_eq!(r.kind, RefusalKind::InvalidModule);
        assert!(r.message.contains("(func (param i32))"), "{}", r.message);
        let r = refused(r#"(module (func (export "_start") (result i32) i32.const 0))"#);
        assert!(r.message.contains("(result i32)"), "{}", r.message);
        let r = refused(r#"(module (global (export "_start") i32 (i32.const 0)))"#);
        assert!(
            r.message.contains("exports no `_start` function"),
            "{}",
            r.message
        );
    }

    #[test]
    fn imports_are_checked_by_module_name_and_type() {
        let r = refused(
            r#"(module (import "env" "evil" (func (param i32))) (func (export "_start")))"#,
        );
        assert_eq!(r.kind, RefusalKind::LinkError);
        assert!(
            r.message.contains("env::evil (func (param i32))"),
            "{}",
            r.message
        );
        let r = refused(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))
                 (func (export "_start")))"#,
        );
        assert_eq!(r.kind, RefusalKind::LinkError);
        assert!(
            r.message.contains(
                "wasi_snapshot_preview1::fd_write has type (func (param i32) (result i32))"
            ) && r
                .message
                .contains("(func (param i32 i32 i32 i32) (result i32))"),
            "{}",
            r.message
        );
        let r = refused(r#"(module (import "env" "memory" (memory 1)) (func (export "_start")))"#);
        assert!(
            r.message.contains("env::memory is a memory"),
            "{}",
            r.message
        );
        let ok = admit(
            br#"(module (import "corral" "progress" (func (param i64 i64)))
                  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                  (func (export "_start")))"#,
            &Policy::default(),
        )
        .unwrap();
        assert!(ok.imports_wasi);
    }

    #[test]
    fn the_pool_limits_are_named() {
        let r = refused(r#"(module (table 100001 funcref) (func (export "_start")))"#);
        assert!(
            r.message.contains("table 0 starts with 100001 elements"),
            "{}",
            r.message
        );
        let five = "(memory 1) ".repeat(5);
        let r = refused(&format!(r#"(module {five} (func (export "_start")))"#));
        assert!(r.message.contains("defines 5 memories"), "{}", r.message);
        let r = refused(r#"(module (memory i64 65537) (func (export "_start")))"#);
        assert!(
            r.message.contains("memory 0 starts at 4295032832 bytes"),
            "{}",
            r.message
        );
        let globals = "(global i32 (i32.const 0)) ".repeat(300_000);
        let r = refused(&format!(r#"(module {globals} (func (export "_start")))"#));
        assert!(
            r.message.contains("bytes of instance state"),
            "{}",
            r.message
        );
    }

    #[test]
    fn size_text_and_features_are_checked_before_anything_else() {
        let small = Policy {
            max_module_bytes: 10,
        };
        let r = admit(b"(module (func (export \"_start\")))", &small).unwrap_err();
        assert!(r.message.contains("over the 10-byte cap"), "{}", r.message);
        assert!(refused("\u{1}\u{2}garbage")
            .message
            .contains("not valid WAT"));
        let r = admit(&[0xff, 0xfe], &Policy::default()).unwrap_err();
        assert!(r.message.contains("not WAT text"), "{}", r.message);
        let r = refused(r#"(module (memory 1 1 shared) (func (export "_start")))"#);
        assert!(r.message.contains("threads"), "{}", r.message);
        // The text and binary forms are one module.
        let text = r#"(module (func (export "_start")))"#;
        let binary = wat::parse_str(text).unwrap();
        let a = admit(text.as_bytes(), &Policy::default()).unwrap();
        let b = admit(&binary, &Policy::default()).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(module_sha256(text.as_bytes()).unwrap(), a.sha256_hex());
        assert!(is_sha256_hex(&a.sha256_hex()));
        assert!(!is_sha256_hex(&a.sha256_hex().to_uppercase()));
    }
}
