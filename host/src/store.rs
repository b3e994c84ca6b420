//! The durable state store: redb in the host's data dir, holding tasks, outputs, modules, agents,
//! partitions and idempotency keys.
//!
//! redb syncs to disk on every commit, so writes are **group-committed**: one writer thread takes
//! every write waiting in its queue, applies them in one transaction, commits once and then
//! answers each caller. Writes are applied in the order they were sent. Callers await their
//! [`Commit`] before anything depends on it (the control plane's batches, module uploads).
//!
//! Records are stored in their `corral.v1` protobuf form (see [`crate::convert`]). The store
//! records its schema version in a `meta` table; a store of an older schema is migrated when
//! it is opened, in one transaction (see [`SCHEMA`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use corral_proto::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::auth::{AuditEntry, TokenRecord};
use crate::convert;
use crate::job::{Job, JobId};
use crate::partition::Partition;
use crate::registry::AgentInfo;
use crate::task::{Task, TaskId, TaskOutput};
use crate::tenant::TenantSettings;
use corral_admission::imports::ImportSet;

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// Jobs by id (`Job`, without counts: they are counted again from the tasks when loaded).
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Jobs' idempotency keys: `<tenant>\0<key>` -> job id.
const JOB_KEYS: TableDefinition<&str, u64> = TableDefinition::new("job_keys");
const OUTPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const PARTITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("partitions");
const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Tokens by accessor (`StoredToken`: never a token's text, only its digest).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// What the host keeps of each stored module to check tenants' policies (`ModuleFacts`), by
/// sha256: written with the module, and listing the stored modules when the store is opened
/// (without reading their binaries).
const MODULE_FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("module_facts");
/// Which tenants uploaded each module: `<sha256>\0<tenant>`.
const MODULE_OWNERS: TableDefinition<&str, ()> = TableDefinition::new("module_owners");
/// Stored inputs by sha256 -> size; their bytes are the file `<data_dir>/inputs/<sha256>`.
const INPUTS: TableDefinition<&str, u64> = TableDefinition::new("inputs");
/// Which tenants uploaded each input: `<sha256>\0<tenant>`.
const INPUT_OWNERS: TableDefinition<&str, ()> = TableDefinition::new("input_owners");
/// Tenants' settings set by `corral tenant set`, by tenant (`TenantSettings`).
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// Fuel charged to each tenant per minute: (tenant, the minute's start in ms) -> fuel.
const FUEL_MINUTES: TableDefinition<(&str, i64), u64> = TableDefinition::new("fuel_minutes");
/// Fuel charged to each tenant since the cluster began.
const FUEL_TOTALS: TableDefinition<&str, u64> = TableDefinition::new("fuel_totals");
/// The audit log by seq (`AuditEvent`).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Records that could not be decoded, set aside when the store was opened: `tasks/<id>`,
/// `agents/<id>`, `partitions/<id>`, `tokens/<accessor>`, `tenants/<name>`, with their bytes as
/// they were.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// The schema this code writes:
/// - 1: outcomes' kinds as strings (`Outcome` field 1), wall times in milliseconds (`Task`
///   field 10);
/// - 2: kinds as the `OutcomeKind` enum (field 4), wall times in microseconds (field 19).
///   Opening a schema 1 store rewrites its tasks so;
/// - 3: each module's facts (size, imports) in `module_facts`. Opening an older store reads
///   them from its modules;
/// - 4: jobs in `jobs`, and tasks that name their job. An older store has none, and needs no
///   change; the stamp keeps an older Corral, which would not know a task's job, from
///   opening it.
pub const SCHEMA: u64 = 4;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 4096;

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open state store {}: {message}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A read or write failed.
    #[error("state store: {0}")]
    Io(String),
    /// A stored record could not be decoded.
    #[error("state store holds a corrupt record: {0}")]
    Corrupt(String),
    /// The writer thread is gone.
    #[error("state store writer stopped")]
    Stopped,
    /// The store was written by a newer Corral.
    #[error("state store {} has schema {found}; this Corral reads up to {SCHEMA}", path.display())]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its schema.
        found: u64,
    },
}

impl StoreError {
    /// What went wrong, without the "state store" its display starts with: for messages
    /// that say so themselves.
    pub fn detail(&self) -> String {
        match self {
            StoreError::Io(message) | StoreError::Corrupt(message) => message.clone(),
            other => other.to_string(),
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// One change to the stored state.
// Tasks dominate the writes; boxing them would add an allocation to the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or replace a task.
    Task(Task),
    /// A task's output.
    Output(TaskId, TaskOutput),
    /// A module's binary, by sha256, and its facts.
    Module(String, Bytes, ModuleFacts),
    /// An agent's registration, and when it was last seen.
    Agent(AgentInfo, i64),
    /// An agent's partitions, replacing those it had.
    Partitions(String, Vec<Partition>),
    /// An idempotency key (`tenant`, `key`) naming a task.
    Idempotency(String, String, TaskId),
    /// Remove a task and its output; its id is never given again.
    ForgetTask(TaskId),
    /// Insert or replace a job.
    Job(Job),
    /// Remove a job (its tasks are removed on their own); its id is never given again.
    ForgetJob(JobId),
    /// A job's idempotency key (`tenant`, `key`).
    JobKey(String, String, JobId),
    /// Remove a job's idempotency key (`tenant`, `key`).
    ForgetJobKey(String, String),
    /// Remove an idempotency key (`tenant`, `key`).
    ForgetIdempotency(String, String),
    /// Remove a module's binary, and who uploaded it.
    ForgetModule(String),
    /// Insert or replace a token.
    Token(TokenRecord),
    /// Tenant `.1` uploaded module `.0`.
    ModuleOwner(String, String),
    /// An input's bytes, by sha256, and their size: the file at `.2` (received, verified
    /// and synced) is renamed into the inputs directory before the commit.
    Input(String, u64, PathBuf),
    /// Tenant `.1` uploaded input `.0`.
    InputOwner(String, String),
    /// Remove an input and who uploaded it; its file is removed once that is committed.
    ForgetInput(String),
    /// Append to the audit log.
    Audit(AuditEntry),
    /// Remove these entries of the audit log.
    ForgetAudit(Vec<u64>),
    /// A tenant's settings as set, or none (the config file's apply again).
    Tenant(String, Option<TenantSettings>),
    /// A tenant's fuel charged in one minute, and since the cluster began.
    Fuel {
        /// The tenant.
        tenant: String,
        /// The minute's start (ms since the epoch).
        minute: i64,
        /// Fuel charged in that minute.
        fuel: u64,
        /// Fuel charged in all.
        total: u64,
    },
    /// Remove these minutes of a tenant's fuel ledger.
    ForgetFuel(String, Vec<i64>),
}

/// What the host knows of a stored module without reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleFacts {
    /// Bytes of its binary form.
    pub size: u64,
    /// The provided functions it imports.
    pub imports: ImportSet,
}

impl ModuleFacts {
    /// Read from a module's binary (its import section only).
    pub fn of(binary: &[u8]) -> Result<Self, String> {
        Ok(ModuleFacts {
            size: binary.len() as u64,
            imports: corral_admission::imports_of(binary)?,
        })
    }

    fn to_pb(self) -> pb::ModuleFacts {
        pb::ModuleFacts {
            size: self.size,
            imports: self
                .imports
                .iter()
                .map(|p| format!("{}::{}", p.module, p.name))
                .collect(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let stored = pb::ModuleFacts::decode(bytes).map_err(|e| e.to_string())?;
        // A module is at least its 8-byte header: less is a damaged record (an empty one
        // decodes as all zeroes).
        if stored.size < 8 {
            return Err(format!("a module of {} bytes", stored.size));
        }
        let mut imports = ImportSet::EMPTY;
        for name in &stored.imports {
            // A function this sandbox no longer provides: the module does not link anyway.
            if let Some((module, name)) = name.split_once("::") {
                imports.insert(module, name);
            }
        }
        Ok(ModuleFacts {
            size: stored.size,
            imports,
        })
    }
}

/// The `meta` row holding the highest id of a removed task: ids are never given again.
const HIGHEST_FORGOTTEN: &str = "highest_forgotten_task";
/// The same, of jobs.
const HIGHEST_FORGOTTEN_JOB: &str = "highest_forgotten_job";
/// The `meta` row holding the highest seq of a removed audit entry: seqs are never reused.
const HIGHEST_FORGOTTEN_AUDIT: &str = "highest_forgotten_audit";

/// What the store held when opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every task, by id.
    pub tasks: Vec<Task>,
    /// Every job, by id.
    pub jobs: Vec<Job>,
    /// The highest job id ever stored, quarantined and removed jobs included.
    pub highest_job_id: u64,
    /// Jobs' idempotency keys: ((tenant, key), job).
    pub job_keys: Vec<((String, String), JobId)>,
    /// Every agent ever registered, with when it was last seen.
    pub agents: Vec<(AgentInfo, i64)>,
    /// Every partition (allocations zero; recompute them from the tasks).
    pub partitions: Vec<Partition>,
    /// Idempotency keys: ((tenant, key), task).
    pub idempotency: Vec<((String, String), TaskId)>,
    /// Every stored module: sha256 and facts.
    pub modules: Vec<(String, ModuleFacts)>,
    /// (sha256, tenant) of every module a tenant uploaded.
    pub module_owners: Vec<(String, String)>,
    /// Every stored input: sha256 and size (its file checked present, with that size).
    pub inputs: Vec<(String, u64)>,
    /// (sha256, tenant) of every input a tenant uploaded.
    pub input_owners: Vec<(String, String)>,
    /// Every token.
    pub tokens: Vec<TokenRecord>,
    /// Tenants' settings as set.
    pub tenants: Vec<(String, TenantSettings)>,
    /// The fuel ledger's minutes: (tenant, minute, fuel).
    pub fuel_minutes: Vec<(String, i64, u64)>,
    /// Fuel charged to each tenant in all.
    pub fuel_totals: Vec<(String, u64)>,
    /// The audit log's entries kept: (seq, when, whether a refusal), oldest first.
    pub audit: Vec<(u64, i64, bool)>,
    /// The highest audit seq ever written, removed entries included.
    pub highest_audit_seq: u64,
    /// The highest task id ever stored, quarantined and removed tasks included: ids are never
    /// reused.
    pub highest_task_id: u64,
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// A batch of writes sent to the writer, resolved when it is durable.
pub struct Commit(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl Commit {
    /// Waits until the writes are on disk.
    pub async fn durable(self) -> Result<(), StoreError> {
        self.await
    }
}

/// Awaiting a `&mut Commit` is cancel-safe: it can be polled again after a `select!` picked
/// another branch.
impl std::future::Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| match answer {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(StoreError::Io(message)),
                Err(_) => Err(StoreError::Stopped),
            })
    }
}

/// The store. Cheap to clone. When the last clone is dropped, the queued writes are committed
/// and the database is closed before the drop returns.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Writer>,
    db: Arc<Database>,
    /// `<data_dir>/inputs`: each stored input's bytes as a file named by its sha256, and
    /// uploads being received in its `staging` directory.
    inputs_dir: Arc<PathBuf>,
    /// Failures and delays injected on purpose (tests of a failing or slow disk).
    faults: Arc<Faults>,
}

/// What the next commits suffer, for tests.
#[derive(Debug, Default)]
struct Faults {
    /// Commits left to fail.
    fail: AtomicU32,
    /// Milliseconds the next commit takes longer.
    delay_ms: AtomicU64,
}

struct Writer {
    queue: Option<mpsc::Sender<(Vec<Write>, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens `<data_dir>/state.redb`, loads everything and starts the writer. A missing file is
    /// a new cluster and is created; a file that is empty or not a redb database is refused,
    /// never silently replaced by an empty cluster.
    pub fn open(data_dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let path = data_dir.join("state.redb");
        let open_error = |message: String| StoreError::Open {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_error(e.to_string()))?;
        let db = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Database::create(&path),
            Err(e) => return Err(open_error(e.to_string())),
            Ok(meta) if meta.len() == 0 => {
                return Err(open_error(
                    "the file is empty, not a Corral database (a lost write or a full disk?); \
                     restore it from a backup, or move it away to start a new cluster"
                        .into(),
                ))
            }
            Ok(_) => Database::open(&path),
        }
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => open_error(
                "it is open already (by another host on this data dir, or, while the host \
                 reopens it, by this one)"
                    .into(),
            ),
            e => open_error(format!("not a Corral database, or damaged: {e}")),
        })?;
        // Create the tables, so that reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        for table in [TASKS, OUTPUTS, JOBS] {
            txn.open_table(table)
                .map_err(|e| open_error(e.to_string()))?;
        }
        for table in [INPUT_OWNERS, MODULE_OWNERS] {
            txn.open_table(table)
                .map_err(|e| open_error(e.to_string()))?;
        }
        txn.open_table(INPUTS)
            .map_err(|e| open_error(e.to_string()))?;
        for table in [MODULES, AGENTS, PARTITIONS, TOKENS, TENANTS, MODULE_FACTS] {
            txn.open_table(table)
                .map_err(|e| open_error(e.to_string()))?;
        }
        txn.open_table(IDEMPOTENCY)
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(JOB_KEYS)
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(AUDIT)
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(FUEL_MINUTES)
            .map_err(|e| open_error(e.to_string()))?;
        txn.open_table(FUEL_TOTALS)
            .map_err(|e| open_error(e.to_string()))?;
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        // Records that do not decode are set aside first, so that one cannot stop a migration.
        quarantine(&db)?;
        migrate(&db, &path)?;
        let inputs_dir = data_dir.join("inputs");
        check_input_files(&db, &inputs_dir).map_err(|e| open_error(e.detail()))?;
        let db = Arc::new(db);
        let loaded = load(&db)?;
        let (sender, queue) = mpsc::channel();
        let writer_db = db.clone();
        let faults = Arc::new(Faults::default());
        let writer_faults = faults.clone();
        let writer_inputs = inputs_dir.clone();
        let thread = std::thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || write_loop(&writer_db, &queue, &writer_faults, &writer_inputs))
            .map_err(|e| open_error(e.to_string()))?;
        let writer = Arc::new(Writer {
            queue: Some(sender),
            thread: Some(thread),
        });
        let inputs_dir = Arc::new(inputs_dir);
        Ok((
            Store {
                writer,
                db,
                inputs_dir,
                faults,
            },
            loaded,
        ))
    }

    /// Makes the next `n` commits fail as a failing disk would, their writes not applied: for
    /// tests of what callers do then.
    #[doc(hidden)]
    pub fn fail_next_commits(&self, n: u32) {
        self.faults.fail.store(n, Ordering::SeqCst);
    }

    /// Makes the next commit take `delay` longer, as a slow disk would: for tests.
    #[doc(hidden)]
    pub fn delay_next_commit(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.faults.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Queues `writes`; they are applied in order with other queued writes. Await the answer
    /// for durability, or drop it.
    pub fn write(&self, writes: Vec<Write>) -> Commit {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A stopped writer shows up when the commit is awaited.
        if let Some(queue) = &self.writer.queue {
            let _ = queue.send((writes, reply));
        }
        Commit(answer)
    }

    /// The file holding input `sha256`'s bytes (stored only once its `Write::Input` is
    /// durable).
    pub fn input_path(&self, sha256: &str) -> PathBuf {
        self.inputs_dir.join(sha256)
    }

    /// Where this process receives uploads before they are stored (`Write::Input` renames
    /// them out).
    pub fn staging_dir(&self) -> PathBuf {
        self.inputs_dir.join(STAGING).join(process_tag())
    }

    /// A new file in [`Store::staging_dir`] to receive an upload into (0600), and its guard.
    pub fn stage(&self) -> std::io::Result<(Staged, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        static STAGED: AtomicU64 = AtomicU64::new(0);
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let path = self.staging_dir().join(n.to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((Staged { path, taken: false }, file))
    }

    /// A stored module's binary.
    pub fn module(&self, sha256: &str) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(MODULES).map_err(io)?;
        Ok(table
            .get(sha256)
            .map_err(io)?
            .map(|v| Bytes::copy_from_slice(v.value())))
    }

    /// Up to `limit` entries of the audit log after `after`, oldest first.
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(AUDIT).map_err(io)?;
        let mut entries = Vec::new();
        for row in table
            .range(after.saturating_add(1)..)
            .map_err(io)?
            .take(limit)
        {
            let (key, value) = row.map_err(io)?;
            let event = pb::AuditEvent::decode(value.value())
                .map_err(|e| StoreError::Corrupt(format!("audit entry {}: {e}", key.value())))?;
            entries.push(convert::audit_from_pb(event));
        }
        Ok(entries)
    }

    /// A task's stored output.
    pub fn output(&self, id: TaskId) -> Result<Option<TaskOutput>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(OUTPUTS).map_err(io)?;
        match table.get(id.0).map_err(io)? {
            None => Ok(None),
            Some(v) => pb::TaskOutput::decode(v.value())
                .map(|o| Some(convert::output_from_pb(o)))
                .map_err(|e| StoreError::Corrupt(format!("output of {id}: {e}"))),
        }
    }
}

/// Sets aside, into [`QUARANTINE`], every task, agent and partition record that does not
/// decode, so that one corrupt record does not stop the host from starting; each is reported
/// loudly. Done in one transaction.
fn quarantine(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(io)?;
    let mut bad: Vec<(String, Vec<u8>, String)> = Vec::new();
    {
        let tasks = txn.open_table(TASKS).map_err(io)?;
        for row in tasks.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            let decoded = pb::Task::decode(value.value())
                .map_err(|e| e.to_string())
                .and_then(convert::task_from_pb);
            if let Err(e) = decoded {
                bad.push((format!("tasks/{}", key.value()), value.value().to_vec(), e));
            }
        }
        let jobs = txn.open_table(JOBS).map_err(io)?;
        for row in jobs.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            let decoded = pb::Job::decode(value.value())
                .map_err(|e| e.to_string())
                .and_then(convert::job_from_pb);
            if let Err(e) = decoded {
                bad.push((format!("jobs/{}", key.value()), value.value().to_vec(), e));
            }
        }
        let agents = txn.open_table(AGENTS).map_err(io)?;
        for row in agents.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            if let Err(e) = pb::Agent::decode(value.value()) {
                bad.push((
                    format!("agents/{}", key.value()),
                    value.value().to_vec(),
                    e.to_string(),
                ));
            }
        }
        let partitions = txn.open_table(PARTITIONS).map_err(io)?;
        for row in partitions.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            if let Err(e) = pb::Partition::decode(value.value()) {
                bad.push((
                    format!("partitions/{}", key.value()),
                    value.value().to_vec(),
                    e.to_string(),
                ));
            }
        }
        // A token that does not decode works for no one: set aside, it refuses as unknown.
        let tokens = txn.open_table(TOKENS).map_err(io)?;
        for row in tokens.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            let decoded = pb::StoredToken::decode(value.value())
                .map_err(|e| e.to_string())
                .and_then(convert::token_from_stored_pb);
            if let Err(e) = decoded {
                bad.push((format!("tokens/{}", key.value()), value.value().to_vec(), e));
            }
        }
        // Settings that do not decode are set aside: the config file's apply to that tenant.
        let tenants = txn.open_table(TENANTS).map_err(io)?;
        for row in tenants.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            if let Err(e) = decode_tenant(key.value(), value.value()) {
                bad.push((
                    format!("tenants/{}", key.value()),
                    value.value().to_vec(),
                    e,
                ));
            }
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    {
        let mut quarantine = txn.open_table(QUARANTINE).map_err(io)?;
        let mut tasks = txn.open_table(TASKS).map_err(io)?;
        let mut jobs = txn.open_table(JOBS).map_err(io)?;
        let mut agents = txn.open_table(AGENTS).map_err(io)?;
        let mut partitions = txn.open_table(PARTITIONS).map_err(io)?;
        let mut tokens = txn.open_table(TOKENS).map_err(io)?;
        let mut tenants = txn.open_table(TENANTS).map_err(io)?;
        for (key, bytes, error) in &bad {
            tracing::error!(
                record = key,
                error,
                "a stored record cannot be decoded: it is set aside in the store's quarantine \
                 table and the host starts without it"
            );
            // A record quarantined under the same key before keeps its bytes.
            let mut slot = key.clone();
            let mut n = 1;
            while quarantine.get(slot.as_str()).map_err(io)?.is_some() {
                n += 1;
                slot = format!("{key}#{n}");
            }
            quarantine
                .insert(slot.as_str(), bytes.as_slice())
                .map_err(io)?;
            match key.split_once('/') {
                Some(("tasks", id)) => {
                    if let Ok(id) = id.parse::<u64>() {
                        tasks.remove(id).map_err(io)?;
                    }
                }
                Some(("jobs", id)) => {
                    if let Ok(id) = id.parse::<u64>() {
                        jobs.remove(id).map_err(io)?;
                    }
                }
                Some(("agents", id)) => {
                    agents.remove(id).map_err(io)?;
                }
                Some(("tokens", id)) => {
                    tokens.remove(id).map_err(io)?;
                }
                Some(("tenants", name)) => {
                    tenants.remove(name).map_err(io)?;
                }
                Some((_, id)) => {
                    partitions.remove(id).map_err(io)?;
                }
                None => {}
            }
        }
    }
    txn.commit().map_err(io)?;
    eprintln!(
        "corral host: {} stored record(s) could not be decoded and were set aside (see the log)",
        bad.len()
    );
    Ok(())
}

/// Stored tenant settings, checked as `corral tenant set` checks them.
fn decode_tenant(name: &str, bytes: &[u8]) -> Result<TenantSettings, String> {
    let settings = pb::TenantSettings::decode(bytes)
        .map(|t| convert::tenant_settings_from_pb(name, t))
        .map_err(|e| e.to_string())?;
    settings.validate(name)?;
    Ok(settings)
}

/// A tenant and one of its keys.
type TenantKey = (String, String);

/// A table key of a tenant's key (an idempotency key): `<tenant>\0<key>`. Neither may hold a
/// control character, so the NUL separates them.
fn tenant_key(tenant: &str, key: &str) -> String {
    format!("{tenant}\0{key}")
}

/// Every row of a table keyed by [`tenant_key`]: ((tenant, key), the id it names). A key
/// without a tenant (none should be) is the default tenant's.
fn tenant_keys<I>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, u64>,
    id: impl Fn(u64) -> I,
) -> Result<Vec<(TenantKey, I)>, StoreError> {
    let mut rows = Vec::new();
    for row in txn.open_table(table).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let (tenant, k) = key
            .value()
            .split_once('\0')
            .unwrap_or(("default", key.value()));
        rows.push(((tenant.to_string(), k.to_string()), id(value.value())));
    }
    Ok(rows)
}

/// The id of a record set aside under `<prefix><id>` (or `<prefix><id>#<n>`), 0 when it does
/// not parse; `None` for another prefix.
fn quarantined_id(key: &str, prefix: &str) -> Option<u64> {
    let id = key.strip_prefix(prefix)?;
    let id = id.split('#').next().unwrap_or(id);
    Some(id.parse::<u64>().unwrap_or(0))
}

fn load(db: &Database) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let mut loaded = Loaded::default();
    if let Some(highest) = txn
        .open_table(META)
        .map_err(io)?
        .get(HIGHEST_FORGOTTEN)
        .map_err(io)?
    {
        loaded.highest_task_id = highest.value();
    }
    if let Some(highest) = txn
        .open_table(META)
        .map_err(io)?
        .get(HIGHEST_FORGOTTEN_JOB)
        .map_err(io)?
    {
        loaded.highest_job_id = highest.value();
    }
    match txn.open_table(QUARANTINE) {
        Ok(quarantined) => {
            for row in quarantined.iter().map_err(io)? {
                let (key, _) = row.map_err(io)?;
                if let Some(id) = quarantined_id(key.value(), "tasks/") {
                    loaded.highest_task_id = loaded.highest_task_id.max(id);
                }
                if let Some(id) = quarantined_id(key.value(), "jobs/") {
                    loaded.highest_job_id = loaded.highest_job_id.max(id);
                }
            }
        }
        // Nothing was ever set aside.
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(io(e)),
    }
    for row in txn.open_table(TASKS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let task = pb::Task::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("task {}: {e}", key.value())))
            .and_then(|t| convert::task_from_pb(t).map_err(StoreError::Corrupt))?;
        loaded.highest_task_id = loaded.highest_task_id.max(task.id.0);
        loaded.tasks.push(task);
    }
    for row in txn.open_table(JOBS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let job = pb::Job::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("job {}: {e}", key.value())))
            .and_then(|j| convert::job_from_pb(j).map_err(StoreError::Corrupt))?;
        loaded.highest_job_id = loaded.highest_job_id.max(job.id.0);
        loaded.jobs.push(job);
    }
    loaded.job_keys = tenant_keys(&txn, JOB_KEYS, JobId)?;
    for row in txn.open_table(AGENTS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let agent = pb::Agent::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("agent {}: {e}", key.value())))?;
        let seen = agent.last_seen_ms;
        loaded.agents.push((convert::agent_from_pb(agent), seen));
    }
    for row in txn.open_table(PARTITIONS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let p = pb::Partition::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("partition {}: {e}", key.value())))?;
        loaded.partitions.push(convert::partition_from_pb(p));
    }
    loaded.idempotency = tenant_keys(&txn, IDEMPOTENCY, TaskId)?;
    for row in txn
        .open_table(MODULE_FACTS)
        .map_err(io)?
        .iter()
        .map_err(io)?
    {
        let (key, value) = row.map_err(io)?;
        let facts = ModuleFacts::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("module {}: {e}", key.value())))?;
        loaded.modules.push((key.value().to_string(), facts));
    }
    loaded.module_owners = owners(&txn, MODULE_OWNERS)?;
    for row in txn.open_table(INPUTS).map_err(io)?.iter().map_err(io)? {
        let (key, size) = row.map_err(io)?;
        loaded.inputs.push((key.value().to_string(), size.value()));
    }
    loaded.input_owners = owners(&txn, INPUT_OWNERS)?;
    for row in txn.open_table(TOKENS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let token = pb::StoredToken::decode(value.value())
            .map_err(|e| e.to_string())
            .and_then(convert::token_from_stored_pb)
            .map_err(|e| StoreError::Corrupt(format!("token {}: {e}", key.value())))?;
        loaded.tokens.push(token);
    }
    for row in txn.open_table(TENANTS).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        let settings = decode_tenant(key.value(), value.value())
            .map_err(|e| StoreError::Corrupt(format!("tenant {}: {e}", key.value())))?;
        loaded.tenants.push((key.value().to_string(), settings));
    }
    for row in txn
        .open_table(FUEL_MINUTES)
        .map_err(io)?
        .iter()
        .map_err(io)?
    {
        let (key, value) = row.map_err(io)?;
        let (tenant, minute) = key.value();
        loaded
            .fuel_minutes
            .push((tenant.to_string(), minute, value.value()));
    }
    for row in txn
        .open_table(FUEL_TOTALS)
        .map_err(io)?
        .iter()
        .map_err(io)?
    {
        let (key, value) = row.map_err(io)?;
        loaded
            .fuel_totals
            .push((key.value().to_string(), value.value()));
    }
    for row in txn.open_table(AUDIT).map_err(io)?.iter().map_err(io)? {
        let (key, value) = row.map_err(io)?;
        // Only when it was is needed, for its retention; a damaged entry counts from now.
        let (at, refusal) = pb::AuditEvent::decode(value.value())
            .map_or((i64::MAX, false), |e| (e.at_ms, e.action == "auth.refused"));
        loaded.audit.push((key.value(), at, refusal));
        loaded.highest_audit_seq = loaded.highest_audit_seq.max(key.value());
    }
    if let Some(highest) = txn
        .open_table(META)
        .map_err(io)?
        .get(HIGHEST_FORGOTTEN_AUDIT)
        .map_err(io)?
    {
        loaded.highest_audit_seq = loaded.highest_audit_seq.max(highest.value());
    }
    Ok(loaded)
}

/// Brings a store of an older schema to [`SCHEMA`], in one transaction: a crash midway leaves
/// it as it was. A new store is stamped with [`SCHEMA`].
fn migrate(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(io)?;
    {
        let mut meta = txn.open_table(META).map_err(io)?;
        let found = meta.get("schema").map_err(io)?.map(|v| v.value());
        let unstamped = found.is_none();
        let tasks = txn.open_table(TASKS).map_err(io)?;
        // A store without a schema row is new when it holds no task, else schema 1.
        let found = match found {
            Some(found) => found,
            None if tasks.len().map_err(io)? == 0 => SCHEMA,
            None => 1,
        };
        drop(tasks);
        if found > SCHEMA {
            return Err(StoreError::Newer {
                path: path.to_path_buf(),
                found,
            });
        }
        if found == 1 {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let rows: Vec<(u64, Vec<u8>)> = tasks
                .iter()
                .map_err(io)?
                .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(io)?;
            for (id, bytes) in &rows {
                let migrated = legacy::task_v1_to_v2(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("task {id} (schema 1): {e}")))?;
                tasks.insert(*id, migrated.as_slice()).map_err(io)?;
            }
            tracing::info!(
                tasks = rows.len(),
                "state store migrated from schema 1 to 2"
            );
        }
        // A store without a schema row may be schema 1 with modules and no task.
        repair_module_facts(&txn, unstamped || found < 3)?;
        meta.insert("schema", SCHEMA).map_err(io)?;
    }
    txn.commit().map_err(io)
}

/// Reads again from its binary the facts of each module whose facts do not decode, and with
/// `all` (a store of a schema before they were kept), or when the two tables do not count the
/// same modules, of each module without facts. A module whose binary does not parse is kept
/// as its size, importing every provided function: refused by any import rule, since what it
/// imports is not known.
fn repair_module_facts(txn: &redb::WriteTransaction, all: bool) -> Result<(), StoreError> {
    let modules = txn.open_table(MODULES).map_err(io)?;
    let mut facts = txn.open_table(MODULE_FACTS).map_err(io)?;
    // Otherwise only the facts table is read: not every module's binary at every start.
    let all = all || modules.len().map_err(io)? != facts.len().map_err(io)?;
    let mut redo = Vec::new();
    if all {
        for row in modules.iter().map_err(io)? {
            let (key, _) = row.map_err(io)?;
            let stored = facts.get(key.value()).map_err(io)?;
            if stored.is_none_or(|v| ModuleFacts::decode(v.value()).is_err()) {
                redo.push(key.value().to_string());
            }
        }
    } else {
        for row in facts.iter().map_err(io)? {
            let (key, value) = row.map_err(io)?;
            if ModuleFacts::decode(value.value()).is_err() {
                redo.push(key.value().to_string());
            }
        }
    }
    for sha in &redo {
        let Some(binary) = modules.get(sha.as_str()).map_err(io)? else {
            facts.remove(sha.as_str()).map_err(io)?;
            continue;
        };
        let binary = binary.value();
        let read = ModuleFacts::of(binary).unwrap_or_else(|e| {
            tracing::warn!(sha256 = %sha, error = %e, "stored module does not parse");
            ModuleFacts {
                size: binary.len() as u64,
                imports: ImportSet::all(),
            }
        });
        let bytes = read.to_pb().encode_to_vec();
        facts.insert(sha.as_str(), bytes.as_slice()).map_err(io)?;
    }
    if !redo.is_empty() {
        tracing::info!(
            modules = redo.len(),
            "module facts read from stored modules"
        );
    }
    Ok(())
}

/// Schema 1's fields, read to migrate its records.
mod legacy {
    use corral_proto::pb;
    use prost::Message;

    /// The fields of a schema 1 `Task` that schema 2 moved.
    #[derive(Clone, PartialEq, Message)]
    pub struct TaskV1 {
        /// `Outcome` with its kind as a string.
        #[prost(message, optional, tag = "7")]
        pub outcome: Option<OutcomeV1>,
        /// Wall time in milliseconds.
        #[prost(uint64, tag = "10")]
        pub wall_ms: u64,
    }

    /// Schema 1's `Outcome.kind`.
    #[derive(Clone, PartialEq, Message)]
    pub struct OutcomeV1 {
        /// `success`, `exit`, `out_of_fuel`...
        #[prost(string, tag = "1")]
        pub kind: String,
    }

    /// A schema 1 task record as schema 2 writes it.
    pub fn task_v1_to_v2(bytes: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
        let old = TaskV1::decode(bytes)?;
        let mut task = pb::Task::decode(bytes)?;
        if let (Some(outcome), Some(old)) = (task.outcome.as_mut(), old.outcome) {
            let name = format!("OUTCOME_KIND_{}", old.kind.to_ascii_uppercase());
            let kind = pb::OutcomeKind::from_str_name(&name).unwrap_or(pb::OutcomeKind::AgentError);
            outcome.kind = kind as i32;
        }
        task.wall_us = old.wall_ms.saturating_mul(1000);
        Ok(task.encode_to_vec())
    }
}

fn write_loop(
    db: &Database,
    queue: &mpsc::Receiver<(Vec<Write>, Reply)>,
    faults: &Faults,
    inputs_dir: &Path,
) {
    // After a failed commit nothing more is written: writes queued after the failed ones may
    // depend on them (an assignment on a submit), and a file whose write or sync failed is
    // not to be trusted until it is reopened.
    let mut failed: Option<String> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let delay = faults.delay_ms.swap(0, Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let injected = faults
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let result = if let Some(first) = &failed {
            Err(format!(
                "an earlier commit failed ({first}); nothing more is written"
            ))
        } else if injected {
            Err("injected failure: the commit was not written".to_string())
        } else {
            apply(db, batch.iter().flat_map(|(writes, _)| writes), inputs_dir)
                .map_err(|e| e.detail())
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "state store commit failed");
            failed.get_or_insert_with(|| e.clone());
            // Inputs of a commit that failed are not stored: their staged files (moved in
            // or not) are nobody's now. A reopening keeps this process's staging directory.
            for (writes, _) in &batch {
                for write in writes {
                    if let Write::Input(_, _, staged) = write {
                        let _ = std::fs::remove_file(staged);
                    }
                }
            }
        }
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }
}

/// The keys of `table` that start with `prefix`, in order.
fn keys_under<V: redb::Value + 'static>(
    table: &redb::Table<'_, &'static str, V>,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(table
        .range(prefix..)
        .map_err(io)?
        .map_while(|row| {
            let key = row.ok()?.0.value().to_string();
            key.starts_with(prefix).then_some(key)
        })
        .collect())
}

fn apply<'a>(
    db: &Database,
    writes: impl Iterator<Item = &'a Write>,
    inputs_dir: &Path,
) -> Result<(), StoreError> {
    // A task written several times in one commit (assigned, running and ended, under load)
    // is stored once, as its last write leaves it: the same state after the commit, with
    // less encoding and fewer B-tree updates.
    let writes: Vec<&Write> = writes.collect();
    let mut last_write = HashMap::new();
    for (i, write) in writes.iter().enumerate() {
        if let Write::Task(task) = write {
            last_write.insert(task.id, i);
        }
    }
    // Inputs removed by this commit, whose files go once it is durable.
    let mut unlink = std::collections::BTreeSet::new();
    let mut inputs_moved = false;
    let txn = db.begin_write().map_err(io)?;
    {
        let mut tasks = txn.open_table(TASKS).map_err(io)?;
        let mut jobs = txn.open_table(JOBS).map_err(io)?;
        let mut outputs = txn.open_table(OUTPUTS).map_err(io)?;
        let mut modules = txn.open_table(MODULES).map_err(io)?;
        let mut module_facts = txn.open_table(MODULE_FACTS).map_err(io)?;
        let mut agents = txn.open_table(AGENTS).map_err(io)?;
        let mut partitions = txn.open_table(PARTITIONS).map_err(io)?;
        let mut idempotency = txn.open_table(IDEMPOTENCY).map_err(io)?;
        let mut job_keys = txn.open_table(JOB_KEYS).map_err(io)?;
        let mut meta = txn.open_table(META).map_err(io)?;
        let mut tokens = txn.open_table(TOKENS).map_err(io)?;
        let mut owners = txn.open_table(MODULE_OWNERS).map_err(io)?;
        let mut inputs = txn.open_table(INPUTS).map_err(io)?;
        let mut input_owners = txn.open_table(INPUT_OWNERS).map_err(io)?;
        let mut audit = txn.open_table(AUDIT).map_err(io)?;
        let mut tenants = txn.open_table(TENANTS).map_err(io)?;
        let mut fuel_minutes = txn.open_table(FUEL_MINUTES).map_err(io)?;
        let mut fuel_totals = txn.open_table(FUEL_TOTALS).map_err(io)?;
        let mut highest_forgotten = None;
        let mut highest_forgotten_job = None;
        for (i, write) in writes.into_iter().enumerate() {
            match write {
                Write::Task(task) if last_write.get(&task.id) != Some(&i) => {}
                Write::Task(task) => {
                    let bytes = convert::task_to_pb(task, true).encode_to_vec();
                    tasks.insert(task.id.0, bytes.as_slice()).map_err(io)?;
                }
                Write::Output(id, output) => {
                    let bytes = convert::output_to_pb(output).encode_to_vec();
                    outputs.insert(id.0, bytes.as_slice()).map_err(io)?;
                }
                Write::Module(sha, bytes, facts) => {
                    modules.insert(sha.as_str(), bytes.as_ref()).map_err(io)?;
                    let facts = facts.to_pb().encode_to_vec();
                    module_facts
                        .insert(sha.as_str(), facts.as_slice())
                        .map_err(io)?;
                }
                Write::Agent(info, seen) => {
                    let state = crate::registry::AgentState::Disconnected;
                    let bytes = convert::agent_to_pb(info, state, *seen, 0).encode_to_vec();
                    agents
                        .insert(info.id.as_str(), bytes.as_slice())
                        .map_err(io)?;
                }
                Write::Partitions(agent_id, list) => {
                    for key in keys_under(&partitions, &format!("{agent_id}/"))? {
                        partitions.remove(key.as_str()).map_err(io)?;
                    }
                    for p in list {
                        let bytes = convert::partition_to_pb(p).encode_to_vec();
                        partitions
                            .insert(p.id.as_str(), bytes.as_slice())
                            .map_err(io)?;
                    }
                }
                Write::Idempotency(tenant, key, id) => {
                    let k = tenant_key(tenant, key);
                    idempotency.insert(k.as_str(), id.0).map_err(io)?;
                }
                Write::ForgetTask(id) => {
                    tasks.remove(id.0).map_err(io)?;
                    outputs.remove(id.0).map_err(io)?;
                    highest_forgotten = highest_forgotten.max(Some(id.0));
                }
                Write::Job(job) => {
                    let bytes = convert::job_to_pb(job, None, 0).encode_to_vec();
                    jobs.insert(job.id.0, bytes.as_slice()).map_err(io)?;
                }
                Write::ForgetJob(id) => {
                    jobs.remove(id.0).map_err(io)?;
                    highest_forgotten_job = highest_forgotten_job.max(Some(id.0));
                }
                Write::JobKey(tenant, key, id) => {
                    let k = tenant_key(tenant, key);
                    job_keys.insert(k.as_str(), id.0).map_err(io)?;
                }
                Write::ForgetJobKey(tenant, key) => {
                    let k = tenant_key(tenant, key);
                    job_keys.remove(k.as_str()).map_err(io)?;
                }
                Write::ForgetIdempotency(tenant, key) => {
                    let k = tenant_key(tenant, key);
                    idempotency.remove(k.as_str()).map_err(io)?;
                }
                Write::ForgetModule(sha) => {
                    modules.remove(sha.as_str()).map_err(io)?;
                    module_facts.remove(sha.as_str()).map_err(io)?;
                    for key in keys_under(&owners, &format!("{sha}\0"))? {
                        owners.remove(key.as_str()).map_err(io)?;
                    }
                }
                Write::Token(record) => {
                    let bytes = convert::token_to_stored_pb(record).encode_to_vec();
                    tokens
                        .insert(record.accessor.as_str(), bytes.as_slice())
                        .map_err(io)?;
                }
                Write::Tenant(name, Some(settings)) => {
                    let bytes = convert::tenant_settings_to_pb(settings).encode_to_vec();
                    tenants
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(io)?;
                }
                Write::Tenant(name, None) => {
                    tenants.remove(name.as_str()).map_err(io)?;
                }
                Write::Fuel {
                    tenant,
                    minute,
                    fuel,
                    total,
                } => {
                    fuel_minutes
                        .insert((tenant.as_str(), *minute), *fuel)
                        .map_err(io)?;
                    fuel_totals.insert(tenant.as_str(), *total).map_err(io)?;
                }
                Write::ForgetFuel(tenant, minutes) => {
                    for minute in minutes {
                        fuel_minutes
                            .remove((tenant.as_str(), *minute))
                            .map_err(io)?;
                    }
                }
                Write::Input(sha, size, staged) => {
                    // In place before the commit that lists it; synced with the directory
                    // below. A commit that then fails leaves a file the next open removes.
                    std::fs::rename(staged, inputs_dir.join(sha.as_str()))
                        .map_err(|e| io(format!("storing input {sha}: {e}")))?;
                    inputs_moved = true;
                    unlink.remove(sha);
                    inputs.insert(sha.as_str(), *size).map_err(io)?;
                }
                Write::InputOwner(sha, tenant) => {
                    input_owners
                        .insert(format!("{sha}\0{tenant}").as_str(), ())
                        .map_err(io)?;
                }
                Write::ForgetInput(sha) => {
                    inputs.remove(sha.as_str()).map_err(io)?;
                    for key in keys_under(&input_owners, &format!("{sha}\0"))? {
                        input_owners.remove(key.as_str()).map_err(io)?;
                    }
                    unlink.insert(sha.clone());
                }
                Write::ModuleOwner(sha, tenant) => {
                    owners
                        .insert(format!("{sha}\0{tenant}").as_str(), ())
                        .map_err(io)?;
                }
                Write::Audit(entry) => {
                    let bytes = convert::audit_to_pb(entry).encode_to_vec();
                    audit.insert(entry.seq, bytes.as_slice()).map_err(io)?;
                }
                Write::ForgetAudit(seqs) => {
                    for seq in seqs {
                        audit.remove(*seq).map_err(io)?;
                    }
                    if let Some(&top) = seqs.iter().max() {
                        let stored = meta
                            .get(HIGHEST_FORGOTTEN_AUDIT)
                            .map_err(io)?
                            .map(|v| v.value());
                        if stored.is_none_or(|stored| stored < top) {
                            meta.insert(HIGHEST_FORGOTTEN_AUDIT, top).map_err(io)?;
                        }
                    }
                }
            }
        }
        for (key, id) in [
            (HIGHEST_FORGOTTEN, highest_forgotten),
            (HIGHEST_FORGOTTEN_JOB, highest_forgotten_job),
        ] {
            let Some(id) = id else { continue };
            let stored = meta.get(key).map_err(io)?.map(|v| v.value());
            if stored.is_none_or(|stored| stored < id) {
                meta.insert(key, id).map_err(io)?;
            }
        }
    }
    if inputs_moved {
        sync_dir(inputs_dir).map_err(|e| io(format!("syncing {}: {e}", inputs_dir.display())))?;
    }
    txn.commit().map_err(io)?;
    for sha in unlink {
        let path = inputs_dir.join(&sha);
        if let Err(e) = std::fs::remove_file(&path) {
            // Listed nowhere now: the next open removes it.
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an input's file");
        }
    }
    Ok(())
}

/// The (sha256, tenant) pairs of an owners table (`<sha256>\0<tenant>` keys).
fn owners(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, ()>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut pairs = Vec::new();
    for row in txn.open_table(table).map_err(io)?.iter().map_err(io)? {
        let (key, _) = row.map_err(io)?;
        if let Some((sha, tenant)) = key.value().split_once('\0') {
            pairs.push((sha.to_string(), tenant.to_string()));
        }
    }
    Ok(pairs)
}

/// Where uploads are received, under the inputs directory: a directory per process.
const STAGING: &str = "staging";

/// This process's directory under `staging` (its pid and start time): a store opened by it
/// removes every other one, left by a process that stopped, and keeps its own, whose uploads
/// may be under way while the store is reopened after a failure.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{started}", std::process::id())
    })
}

/// A file being received into the staging directory ([`Store::stage`]): removed when dropped
/// (on a blocking thread, within a runtime: it may be gigabytes), unless handed to the store
/// with [`Staged::take`] for a `Write::Input`.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    taken: bool,
}

impl Staged {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path, for a `Write::Input`, which renames the file into place: no longer removed
    /// here. (The writer removes it when the commit fails.)
    pub fn take(mut self) -> PathBuf {
        self.taken = true;
        self.path.clone()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            let _ = std::fs::remove_file(path);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes the inputs directory (private to the host's user) and holds it to the `inputs`
/// table, in one transaction: a listed input whose file is missing or of another size (a
/// damaged disk, a hand's deletion) is unlisted, with an error logged, rather than served; a
/// file listed nowhere (its commit failed, or its removal did not finish) is removed; and the
/// uploads other processes left in `staging`.
fn check_input_files(db: &Database, dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let staging = dir.join(STAGING).join(process_tag());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(|e| io(format!("cannot make {}: {e}", staging.display())))?;
    let txn = db.begin_write().map_err(io)?;
    {
        let mut inputs = txn.open_table(INPUTS).map_err(io)?;
        let mut owners = txn.open_table(INPUT_OWNERS).map_err(io)?;
        let mut listed = std::collections::BTreeSet::new();
        let mut damaged = Vec::new();
        for row in inputs.iter().map_err(io)? {
            let (sha, size) = row.map_err(io)?;
            let (sha, size) = (sha.value().to_string(), size.value());
            match std::fs::metadata(dir.join(&sha)) {
                Ok(meta) if meta.len() == size => {
                    listed.insert(sha);
                }
                found => {
                    let found =
                        found.map_or_else(|e| e.to_string(), |m| format!("{} bytes", m.len()));
                    tracing::error!(sha256 = %sha, size, %found, "a stored input's file is missing or damaged: it is forgotten; tasks mounting it fail until it is uploaded again");
                    damaged.push(sha);
                }
            }
        }
        for sha in damaged {
            inputs.remove(sha.as_str()).map_err(io)?;
            for key in keys_under(&owners, &format!("{sha}\0"))? {
                owners.remove(key.as_str()).map_err(io)?;
            }
        }
        let entries = std::fs::read_dir(dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != STAGING && !listed.contains(&name) {
                tracing::warn!(file = %entry.path().display(), "removing an input file no record lists");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for entry in std::fs::read_dir(dir.join(STAGING))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name() != process_tag() {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    txn.commit().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;

    fn task(id: u64) -> Task {
        let spec = convert::spec_from_pb(
            pb::TaskSpec {
                name: format!("task{id}"),
                module_sha256: "1".repeat(64),
                stdin: Bytes::from(vec![7u8; 1000]),
                ..Default::default()
            },
            &HostConfig::default(),
        )
        .unwrap();
        Task::new(TaskId(id), spec, 1)
    }

    #[tokio::test]
    async fn an_inputs_file_is_in_place_when_listed_and_gone_once_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            for (sha, bytes) in [(&a, &b"aaaa"[..]), (&b, &b"bb"[..])] {
                let (guard, _file) = store.stage().unwrap();
                std::fs::write(guard.path(), bytes).unwrap();
                let staged = guard.take();
                store
                    .write(vec![
                        Write::Input(sha.clone(), bytes.len() as u64, staged.clone()),
                        Write::InputOwner(sha.clone(), "acme".into()),
                    ])
                    .durable()
                    .await
                    .unwrap();
                assert!(!staged.exists(), "moved into place");
                assert_eq!(std::fs::read(store.input_path(sha)).unwrap(), bytes);
            }
            store
                .write(vec![Write::ForgetInput(b.clone())])
                .durable()
                .await
                .unwrap();
            assert!(!store.input_path(&b).exists(), "removed once committed");
            // What a crash leaves: a file no record lists, another process's upload.
            std::fs::write(store.input_path(&"c".repeat(64)), b"c").unwrap();
            let gone = dir.path().join("inputs/staging/1-2");
            std::fs::create_dir_all(&gone).unwrap();
            std::fs::write(gone.join("0"), b"x").unwrap();
            // This process's own, maybe still being received while the store reopens.
            let (staged, _file) = store.stage().unwrap();
            std::mem::forget(staged);
        }
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.inputs, [(a.clone(), 4)]);
        assert_eq!(loaded.input_owners, [(a.clone(), "acme".to_string())]);
        assert!(!store.input_path(&"c".repeat(64)).exists());
        assert!(!dir.path().join("inputs/staging/1-2").exists());
        assert_eq!(std::fs::read_dir(store.staging_dir()).unwrap().count(), 1);
        // A staged file not taken is removed with its guard.
        let (staged, _file) = store.stage().unwrap();
        let path = staged.path().to_path_buf();
        drop(staged);
        // On a blocking thread of the runtime.
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!path.exists());
        drop(store);
        // A listed input whose file was damaged (another size) is unlisted with its owners.
        std::fs::write(dir.path().join("inputs").join(&a), b"aa").unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.inputs.is_empty() && loaded.input_owners.is_empty());
    }

    #[tokio::test]
    async fn a_forgotten_task_leaves_no_record_but_its_id_is_never_given_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let mut writes: Vec<Write> = (1..=3).map(|i| Write::Task(task(i))).collect();
            writes.push(Write::Output(TaskId(3), TaskOutput::default()));
            writes.push(Write::Idempotency("default".into(), "k".into(), TaskId(3)));
            writes.push(Write::Module(
                "ab".into(),
                Bytes::from_static(b"\0asm"),
                some_facts(),
            ));
            store.write(writes).durable().await.unwrap();
            store
                .write(vec![
                    Write::ForgetIdempotency("default".into(), "k".into()),
                    Write::ForgetTask(TaskId(3)),
                    Write::ForgetTask(TaskId(2)),
                    Write::ForgetModule("ab".into()),
                ])
                .durable()
                .await
                .unwrap();
            assert_eq!(store.output(TaskId(3)).unwrap(), None);
            assert!(store.module("ab").unwrap().is_none());
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        let ids: Vec<TaskId> = loaded.tasks.iter().map(|t| t.id).collect();
        assert_eq!(ids, [TaskId(1)]);
        assert!(loaded.idempotency.is_empty() && loaded.modules.is_empty());
        assert_eq!(loaded.highest_task_id, 3);
    }

    #[tokio::test]
    async fn jobs_and_their_tasks_come_back_and_a_removed_or_bad_jobs_id_is_not_reused() {
        use crate::job::{Job, JobId, JobMember, JobState};
        let job = |id: u64, first: u64| Job {
            id: JobId(id),
            name: "sweep".into(),
            tenant: "default".into(),
            module_sha256: "1".repeat(64),
            count: 2,
            first: TaskId(first),
            param_names: vec!["lr".into()],
            max_failures: 1,
            kill_requested: false,
            state: JobState::Running,
            reason: String::new(),
            created_at_ms: 5,
            finished_at_ms: 0,
            request_sha256: String::new(),
        };
        let mut member = task(1);
        member.job = Some(JobMember {
            job: JobId(1),
            index: 0,
            params: vec![("lr".into(), "0.1".into())],
        });
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let writes = vec![
                Write::Job(job(1, 1)),
                Write::Task(member.clone()),
                Write::Job(job(2, 3)),
                Write::Job(job(3, 5)),
            ];
            store.write(writes).durable().await.unwrap();
            store
                .write(vec![Write::ForgetJob(JobId(3))])
                .durable()
                .await
                .unwrap();
        }
        // Job 2's record is damaged: set aside, and its id still counts.
        {
            let db = Database::open(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(JOBS)
                .unwrap()
                .insert(2, [0xffu8, 0xff, 0xff].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.jobs, [job(1, 1)]);
        assert_eq!(loaded.tasks, [member]);
        assert_eq!(loaded.highest_job_id, 3);
    }

    #[tokio::test]
    async fn what_was_committed_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let output = TaskOutput {
            stdout: Bytes::from_static(b"out"),
            files: vec![crate::task::OutputFile {
                path: "a/b.txt".into(),
                data: Bytes::from_static(b"file"),
            }],
            ..Default::default()
        };
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.tasks.is_empty());
            let commits: Vec<Commit> = (1..=50)
                .map(|i| store.write(vec![Write::Task(task(i))]))
                .collect();
            for commit in commits {
                commit.durable().await.unwrap();
            }
            store
                .write(vec![
                    Write::Output(TaskId(3), output.clone()),
                    Write::Module("ab".into(), Bytes::from_static(b"\0asm"), some_facts()),
                    Write::Idempotency("default".into(), "k1".into(), TaskId(4)),
                ])
                .durable()
                .await
                .unwrap();
            assert_eq!(store.output(TaskId(3)).unwrap(), Some(output.clone()));
        }
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.tasks.len(), 50);
        assert_eq!(loaded.tasks[2], task(3));
        assert_eq!(loaded.modules, [("ab".to_string(), some_facts())]);
        assert_eq!(
            loaded.idempotency,
            [(("default".to_string(), "k1".to_string()), TaskId(4))]
        );
        assert_eq!(store.output(TaskId(3)).unwrap(), Some(output));
        assert_eq!(store.output(TaskId(4)).unwrap(), None);
        assert_eq!(store.module("ab").unwrap().unwrap().as_ref(), b"\0asm");
    }

    /// A task record as schema 1 wrote it: the outcome's kind a string in field 1, the wall
    /// time in milliseconds in field 10.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TaskV1 {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(message, optional, tag = "2")]
        spec: Option<pb::TaskSpec>,
        #[prost(int32, tag = "3")]
        state: i32,
        #[prost(uint32, tag = "4")]
        attempts: u32,
        #[prost(message, optional, tag = "7")]
        outcome: Option<OutcomeV1>,
        #[prost(uint64, tag = "10")]
        wall_ms: u64,
        #[prost(int64, tag = "14")]
        finished_at_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct OutcomeV1 {
        #[prost(string, tag = "1")]
        kind: String,
        #[prost(int32, tag = "2")]
        exit_code: i32,
        #[prost(string, tag = "3")]
        message: String,
    }

    #[tokio::test]
    async fn a_schema_1_store_is_migrated_once_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a Corral of schema 1 left: a task record and no schema row.
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut tasks = txn.open_table(TASKS).unwrap();
                let old = TaskV1 {
                    id: "t-1".into(),
                    spec: Some(convert::spec_to_pb(&task(1).spec, true)),
                    state: pb::TaskState::Failed as i32,
                    attempts: 1,
                    outcome: Some(OutcomeV1 {
                        kind: "exit".into(),
                        exit_code: 3,
                        message: String::new(),
                    }),
                    wall_ms: 1234,
                    finished_at_ms: 9,
                };
                tasks.insert(1, old.encode_to_vec().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            // The second open finds the current schema and changes nothing.
            let (_, loaded) = Store::open(dir.path()).unwrap();
            let task = &loaded.tasks[0];
            let outcome = task.outcome.as_ref().unwrap();
            assert_eq!(
                (outcome.kind, outcome.exit_code),
                (crate::task::OutcomeKind::Exit, 3)
            );
            assert_eq!(task.wall_us, 1_234_000);
            assert_eq!(task.state, crate::task::TaskState::Failed);
        }
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("schema").unwrap().unwrap().value(), SCHEMA);
    }

    /// Facts that no default equals (they are kept as given, not read from the binary).
    fn some_facts() -> ModuleFacts {
        let mut imports = ImportSet::EMPTY;
        imports.insert("corral", "log");
        ModuleFacts {
            size: 4096,
            imports,
        }
    }

    #[tokio::test]
    async fn module_facts_are_read_from_the_binaries_of_a_schema_2_store_and_repaired() {
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "path_open"
                (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
            (func (export "_start")))"#;
        let binary = corral_admission::to_binary(wat.as_bytes())
            .unwrap()
            .into_owned();
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            // What a Corral of schema 2 left: modules, and no facts.
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut modules = txn.open_table(MODULES).unwrap();
                modules.insert("aa", binary.as_slice()).unwrap();
                modules.insert("bb", &b"not wasm"[..]).unwrap();
                txn.open_table(MODULE_FACTS)
                    .unwrap()
                    .retain(|_, _| false)
                    .unwrap();
                txn.open_table(META).unwrap().insert("schema", 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut imports = ImportSet::EMPTY;
        imports.insert("wasi_snapshot_preview1", "path_open");
        let expected = vec![
            (
                "aa".to_string(),
                ModuleFacts {
                    size: binary.len() as u64,
                    imports,
                },
            ),
            // Not a module: its size, importing what no rule allows.
            (
                "bb".to_string(),
                ModuleFacts {
                    size: 8,
                    imports: ImportSet::all(),
                },
            ),
        ];
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.modules, expected);
        {
            // A facts record damaged on disk is read again from the binary.
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            let mut facts = txn.open_table(MODULE_FACTS).unwrap();
            facts.insert("aa", &[0xff, 0xff, 0xff][..]).unwrap();
            // An empty record decodes, as all zeroes: damaged too.
            facts.insert("bb", &[][..]).unwrap();
            drop(facts);
            txn.commit().unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.modules, expected);
        {
            // A binary whose facts row is gone is counted, and read again.
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MODULE_FACTS).unwrap().remove("aa").unwrap();
            txn.commit().unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.modules, expected);
    }

    #[tokio::test]
    async fn the_modules_of_a_store_without_a_schema_row_or_tasks_are_kept() {
        // Schema 1 wrote no schema row: with modules and no task, it looks new.
        let dir = tempfile::tempdir().unwrap();
        let binary = corral_admission::to_binary(b"(module (func (export \"_start\")))")
            .unwrap()
            .into_owned();
        {
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MODULES)
                .unwrap()
                .insert("aa", binary.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        let facts = ModuleFacts {
            size: binary.len() as u64,
            imports: ImportSet::EMPTY,
        };
        assert_eq!(loaded.modules, [("aa".to_string(), facts)]);
    }

    #[tokio::test]
    async fn a_store_of_a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema", SCHEMA + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains(&format!("has schema {}", SCHEMA + 1)), "{e}");
    }

    #[tokio::test]
    async fn an_empty_or_foreign_state_file_is_refused_and_a_missing_one_is_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("the file is empty"), "{e}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "the file was written"
        );
        std::fs::write(&path, b"SQLite format 3\0 and then some pages").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("not a Corral database"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.tasks.is_empty());
        drop(store);
        // And what it made opens again.
        Store::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_set_aside_and_the_host_starts_without_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store
                .write(vec![Write::Task(task(4)), Write::Task(task(5))])
                .durable()
                .await
                .unwrap();
        }
        {
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TASKS)
                .unwrap()
                .insert(5, &b"\xff\xff\xff scribbled"[..])
                .unwrap();
            txn.open_table(AGENTS)
                .unwrap()
                .insert("a9", &b"\x0a\xff"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let ids: Vec<u64> = loaded.tasks.iter().map(|t| t.id.0).collect();
        assert_eq!(ids, vec![4]);
        assert!(loaded.agents.is_empty());
        assert_eq!(
            loaded.highest_task_id, 5,
            "a quarantined task's id could be reused"
        );
        drop(store);
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let quarantine = txn.open_table(QUARANTINE).unwrap();
        assert_eq!(
            quarantine.get("tasks/5").unwrap().unwrap().value(),
            b"\xff\xff\xff scribbled"
        );
        assert!(quarantine.get("agents/a9").unwrap().is_some());
        drop(txn);
        drop(db);
        // Opened again, it starts the same, with nothing new to set aside.
        let (_, again) = Store::open(dir.path()).unwrap();
        assert_eq!(again.tasks.len(), 1);
        assert_eq!(again.highest_task_id, 5);
    }

    #[tokio::test]
    async fn nothing_is_written_after_a_failed_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.fail_next_commits(1);
            assert!(store
                .write(vec![Write::Task(task(1))])
                .durable()
                .await
                .is_err());
            let e = store
                .write(vec![Write::Task(task(2))])
                .durable()
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("an earlier commit failed"), "{e}");
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.tasks.is_empty(), "{:?}", loaded.tasks);
    }

    #[tokio::test]
    async fn a_task_written_several_times_in_one_commit_ends_as_its_last_write() {
        let dir = tempfile::tempdir().unwrap();
        let assigned = Task {
            state: crate::task::TaskState::Assigned,
            ..task(1)
        };
        let finished = Task {
            state: crate::task::TaskState::Finished,
            fuel_used: 1234,
            finished_at_ms: 9,
            ..task(1)
        };
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store
                .write(vec![
                    Write::Task(task(1)),
                    Write::Task(assigned),
                    Write::Task(task(2)),
                    Write::Task(finished.clone()),
                ])
                .durable()
                .await
                .unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.tasks, vec![finished, task(2)]);
    }

    #[tokio::test]
    async fn an_agents_partitions_are_replaced_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = crate::partition::Resources {
            slots: 2,
            memory_bytes: 100,
        };
        let templates = [crate::partition::PartitionTemplate {
            name: "res".into(),
            agents: Default::default(),
            slots: 1,
            memory: bytesize::ByteSize::b(10),
            tenant: Some("acme".into()),
            labels: Default::default(),
        }];
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let two = crate::partition::carve("a1", capacity, &Default::default(), &templates);
            let other = crate::partition::carve("a10", capacity, &Default::default(), &[]);
            store
                .write(vec![
                    Write::Partitions("a1".into(), two),
                    Write::Partitions("a10".into(), other),
                ])
                .durable()
                .await
                .unwrap();
            let one = crate::partition::carve("a1", capacity, &Default::default(), &[]);
            store
                .write(vec![Write::Partitions("a1".into(), one)])
                .durable()
                .await
                .unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        let ids: Vec<_> = loaded.partitions.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a1/default", "a10/default"]);
    }

    #[tokio::test]
    async fn tenant_settings_survive_a_reopen_and_a_damaged_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let acme = TenantSettings {
            weight: 2.5,
            guarantee_slots: 3,
            limit_memory: Some(bytesize::ByteSize::gib(8)),
            ..TenantSettings::default()
        };
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store
                .write(vec![
                    Write::Tenant("acme".into(), Some(acme.clone())),
                    Write::Tenant("gone".into(), Some(TenantSettings::default())),
                    Write::Tenant("gone".into(), None),
                ])
                .durable()
                .await
                .unwrap();
        }
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.tenants, vec![("acme".to_string(), acme)]);
        drop(store);
        // Settings that decode but make no sense (a weight of zero) are set aside, not obeyed.
        {
            let db = Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            let bad = pb::TenantSettings::default().encode_to_vec();
            txn.open_table(TENANTS)
                .unwrap()
                .insert("acme", bad.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.tenants.is_empty(), "{:?}", loaded.tenants);
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let quarantine = txn.open_table(QUARANTINE).unwrap();
        assert!(quarantine.get("tenants/acme").unwrap().is_some());
    }

    #[tokio::test]
    async fn the_fuel_ledger_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            let fuel = |minute: i64, fuel: u64, total: u64| Write::Fuel {
                tenant: "acme".into(),
                minute,
                fuel,
                total,
            };
            store
                .write(vec![
                    fuel(60_000, 5, 5),
                    fuel(120_000, 7, 12),
                    fuel(120_000, 9, 14),
                ])
                .durable()
                .await
                .unwrap();
            store
                .write(vec![Write::ForgetFuel("acme".into(), vec![60_000])])
                .durable()
                .await
                .unwrap();
        }
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.fuel_minutes, vec![("acme".to_string(), 120_000, 9)]);
        assert_eq!(loaded.fuel_totals, vec![("acme".to_string(), 14)]);
    }
}
