//! The client API (`corral.v1.Corral`): modules, tasks, agents, partitions.

use std::pin::Pin;

use corral_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::auth::{self, Caller, Principal};
use crate::control::ControlPlane;
use crate::convert;
use crate::job::{JobId, JobRequest};
use crate::state::{JobView, TaskFilter};
use crate::task::TaskId;

/// Default and largest page of [`pb::ListTasksRequest`].
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 10_000;
/// Most encoded bytes of tasks in one page: well under the message cap, whatever the specs.
const PAGE_BYTES: usize = 32 << 20;

/// Serves `corral.v1.Corral`.
pub struct ClientService {
    plane: ControlPlane,
    /// Turns to receive an upload: at most `max_concurrent_uploads` buffer at once.
    uploads: std::sync::Arc<tokio::sync::Semaphore>,
    /// Turns to stream a job's results.
    results: std::sync::Arc<tokio::sync::Semaphore>,
    /// Turns to receive an input (apart from modules': an input may take long), and each
    /// tenant's share of them.
    input_uploads: std::sync::Arc<tokio::sync::Semaphore>,
    input_uploaders: Uploaders,
}

type Uploaders = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// A tenant's input upload turn, counted against its share until dropped.
pub(super) struct InputTurn {
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
    uploaders: Uploaders,
    tenant: Option<String>,
}

impl Drop for InputTurn {
    fn drop(&mut self) {
        let Some(tenant) = &self.tenant else { return };
        let mut uploaders = self.uploaders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = uploaders.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                uploaders.remove(tenant);
            }
        }
    }
}

impl ClientService {
    /// The service over `plane`.
    pub fn new(plane: ControlPlane) -> Self {
        let uploads = plane.config().max_concurrent_uploads as usize;
        Self {
            plane,
            uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(uploads)),
            results: std::sync::Arc::new(tokio::sync::Semaphore::new(RESULTS_STREAMS)),
            input_uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(uploads)),
            input_uploaders: Uploaders::default(),
        }
    }
}

impl ClientService {
    /// The host's configuration.
    pub(super) fn config(&self) -> &crate::config::HostConfig {
        self.plane.config()
    }

    /// A turn to receive an upload (at most `max_concurrent_uploads` buffer at once), waited
    /// for up to `upload_idle_timeout`; held until dropped.
    pub(super) async fn upload_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let idle = self.plane.config().upload_idle_timeout;
        tokio::time::timeout(idle, self.uploads.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "the host is receiving as many uploads as it takes at once ({}); try again",
                    self.plane.config().max_concurrent_uploads
                ))
            })?
            .map_err(|_| Status::unavailable("the host is shutting down"))
    }

    /// Admits and stores an uploaded module (received during a turn): (sha256, size, whether
    /// the caller had it).
    pub(super) async fn upload_bytes(
        &self,
        bytes: Vec<u8>,
        caller: &Caller,
    ) -> Result<(String, u64, bool), Status> {
        self.plane
            .upload_module_as(bytes, caller)
            .await
            .map_err(status)
    }
}

/// An upload's pace: it must send 64 KiB (or end) within each `upload_idle_timeout`, so that
/// a client trickling empty or tiny chunks cannot hold a turn forever.
pub(super) struct Pace {
    idle: std::time::Duration,
    by: tokio::time::Instant,
    since: usize,
}

impl Pace {
    pub(super) fn new(idle: std::time::Duration) -> Self {
        Pace {
            idle,
            by: tokio::time::Instant::now() + idle,
            since: 0,
        }
    }

    /// What `next` (the upload's next chunk) gives, unless the upload fell behind first.
    pub(super) async fn next<F: std::future::Future>(&self, next: F) -> Result<F::Output, Status> {
        tokio::time::timeout_at(self.by, next).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "the upload sent less than 64 KiB in {}: abandoned",
                humantime::format_duration(self.idle)
            ))
        })
    }

    /// Counts `bytes` received.
    pub(super) fn took(&mut self, bytes: usize) {
        self.since += bytes;
        if self.since >= 64 << 10 {
            self.since = 0;
            self.by = tokio::time::Instant::now() + self.idle;
        }
    }
}

impl ClientService {
    /// A turn to receive an input: at most `max_concurrent_uploads` at once (apart from
    /// module uploads), a tenant at most half of them (at least one), so that slow uploads of
    /// one tenant cannot hold every turn; waited for up to `upload_idle_timeout`.
    pub(super) async fn input_turn(&self, caller: &Caller) -> Result<InputTurn, Status> {
        let turns = self.plane.config().max_concurrent_uploads as usize;
        let share = (turns / 2).max(1);
        let mut turn = InputTurn {
            _turn: None,
            uploaders: self.input_uploaders.clone(),
            tenant: None,
        };
        if let Some(t) = &caller.tenant {
            let mut uploaders = self
                .input_uploaders
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = uploaders.entry(t.clone()).or_default();
            if *n >= share {
                return Err(Status::resource_exhausted(format!(
                    "tenant {t} is uploading {n} inputs already, as many as a tenant may at \
                     once: try again when one has ended"
                )));
            }
            *n += 1;
            // Counted from here: given back on every way out, as the turn drops.
            turn.tenant = Some(t.clone());
        }
        let idle = self.plane.config().upload_idle_timeout;
        let permit = tokio::time::timeout(idle, self.input_uploads.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "the host is receiving as many inputs as it takes at once ({turns}); try \
                     again"
                ))
            })?
            .map_err(|_| Status::unavailable("the host is shutting down"))?;
        turn._turn = Some(permit);
        Ok(turn)
    }

    /// Receives an input of `size` bytes (hashing to `sha256`, when given) from `chunks` for
    /// `caller`, in a turn taken before this is called: checked against its storage limit
    /// and the disk's room before a byte is read (and answered at once, with the stored
    /// size, when the caller has these bytes already), the room held while it is received;
    /// streamed to a staged file, making progress (64 KiB) within each
    /// `upload_idle_timeout`, verified, synced, then stored. Answers (sha256, size, whether
    /// the caller had it).
    pub(super) async fn receive_input<S, E>(
        &self,
        caller: &Caller,
        size: u64,
        sha256: Option<String>,
        mut chunks: S,
    ) -> Result<(String, u64, bool), Status>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use sha2::Digest;
        let config = self.plane.config();
        let (cap, idle) = (config.max_input_size.as_u64(), config.upload_idle_timeout);
        if size > cap {
            return Err(Status::invalid_argument(format!(
                "the input is {size} bytes, over the host's {cap}-byte cap (max_input_size)"
            )));
        }
        let sha256 = sha256
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        if let Some(sha) = &sha256 {
            if !corral_proto::input::is_sha256(sha) {
                return Err(Status::invalid_argument(format!(
                    "{} is not a sha256 (64 hex digits)",
                    convert::shown(sha)
                )));
            }
        }
        // Held before it is checked, so that uploads checked together count each other.
        let mut room = self.plane.hold_staging_room(size);
        let had = self
            .plane
            .input_room(caller, sha256.as_deref(), size)
            .await
            .map_err(status)?;
        if let (Some(stored), Some(sha)) = (had, &sha256) {
            return Ok((sha.clone(), stored, true));
        }
        let (staged, mut file) = self.plane.stage_input().await.map_err(status)?;
        let disk = |e: std::io::Error| {
            let full = e.raw_os_error() == Some(28);
            tracing::warn!(error = %e, "cannot stage an input");
            match full {
                true => {
                    Status::resource_exhausted("the host's disk is full: the input was not stored")
                }
                false => Status::internal(format!("the host cannot store the input: {e}")),
            }
        };
        let mut hasher = sha2::Sha256::new();
        let mut received = 0u64;
        let mut pace = Pace::new(idle);
        loop {
            let Some(chunk) = pace.next(chunks.next()).await? else {
                break;
            };
            let chunk = chunk.map_err(|e| Status::cancelled(format!("the upload ended: {e}")))?;
            received += chunk.len() as u64;
            if received > size {
                return Err(Status::invalid_argument(format!(
                    "the upload sent more than the {size} bytes it said"
                )));
            }
            pace.took(chunk.len());
            let n = chunk.len() as u64;
            // Hashed and written off the runtime's threads: a chunk may be megabytes.
            let (f, h) = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                hasher.update(&chunk);
                file.write_all(&chunk).map(|()| (file, hasher))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(disk)?;
            (file, hasher) = (f, h);
            room.written(n);
        }
        if received != size {
            return Err(Status::invalid_argument(format!(
                "the upload sent {received} of the {size} bytes it said"
            )));
        }
        let digest = corral_admission::sha256_hex(&hasher.finalize().into());
        if let Some(expected) = sha256.filter(|e| *e != digest) {
            return Err(Status::invalid_argument(format!(
                "the input's bytes hash to {digest}, not to the sha256 it named ({expected}): \
                 the file changed or was damaged on the way"
            )));
        }
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(disk)?;
        let (_, had) = self
            .plane
            .input_received(caller, &digest, size, staged)
            .await
            .map_err(status)?;
        Ok((digest, size, had))
    }
}

fn input_to_pb(view: crate::state::InputView) -> pb::InputInfo {
    pb::InputInfo {
        sha256: view.sha256,
        size_bytes: view.size,
        tasks: view.tasks,
        fetches: view.fetches,
        last_used_ms: view.last_used_ms,
    }
}

/// The tasks of a page in their protobuf form: at least one, then as many as fit in `max_bytes`
/// encoded, so that no page outgrows the message cap; and whether it was cut short.
fn page(tasks: &[crate::task::Task], max_bytes: usize) -> (Vec<pb::Task>, bool) {
    let mut page = Vec::with_capacity(tasks.len());
    let mut bytes = 0usize;
    for task in tasks {
        let encoded = convert::task_to_pb(task, false);
        let len = prost::Message::encoded_len(&encoded) + 8;
        if !page.is_empty() && bytes + len > max_bytes {
            return (page, true);
        }
        bytes += len;
        page.push(encoded);
    }
    (page, false)
}

/// The tenant a request acts for: the one it names, or the token's. A tenant's token naming
/// another tenant is refused; an admin's names any (none: `default`).
fn acting_tenant(named: &str, principal: &Principal) -> Result<String, Status> {
    match principal.tenant() {
        None if named.is_empty() => Ok(auth::DEFAULT_TENANT.to_string()),
        None => Ok(named.to_string()),
        Some(own) if named.is_empty() || named == own => Ok(own.to_string()),
        Some(own) => Err(Status::permission_denied(format!(
            "token {} acts for tenant {own}: it cannot act for tenant {} (only an admin's token \
             can)",
            principal.accessor,
            crate::convert::shown(named)
        ))),
    }
}

/// Refuses a tenant's token: `what` takes an admin's.
fn admin_only(principal: &Principal, what: &str) -> Result<(), Status> {
    match principal.tenant() {
        None => Ok(()),
        Some(_) => Err(Status::permission_denied(format!(
            "token {} is a tenant token: {what} takes an admin token",
            principal.accessor
        ))),
    }
}

/// Longest description of a token, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 256;
/// Longest life of a token: ten years.
const MAX_EXPIRY_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

fn task_id(text: &str) -> Result<TaskId, Status> {
    text.parse()
        .map_err(|m| Status::invalid_argument(super::fit_header(m)))
}

fn job_id(text: &str) -> Result<JobId, Status> {
    text.parse()
        .map_err(|m| Status::invalid_argument(super::fit_header(m)))
}

fn job_to_pb(view: &JobView) -> pb::Job {
    convert::job_to_pb(&view.job, Some(&view.counts), view.fuel_used)
}

/// Tasks of a job read from the actor at once for [`pb::JobResult`]s.
const RESULTS_PAGE: usize = 256;
/// [`pb::JobResult`] streams served at once.
const RESULTS_STREAMS: usize = 4;
/// How long a `JobResults` call waits for its turn before it is refused.
const RESULTS_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a result waits for its client to take it before the stream is dropped.
const RESULTS_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::corral_server::Corral for ClientService {
    async fn upload_module(
        &self,
        request: Request<Streaming<pb::UploadModuleRequest>>,
    ) -> Result<Response<pb::UploadModuleResponse>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let cap = self.plane.config().max_module_size.as_u64();
        let idle = self.plane.config().upload_idle_timeout;
        let mut stream = request.into_inner();
        // Nothing of the stream is read before its turn: HTTP/2 flow control holds the rest.
        let _turn = self.upload_turn().await?;
        let mut bytes = Vec::new();
        let mut pace = Pace::new(idle);
        loop {
            let Some(chunk) = pace.next(stream.message()).await?? else {
                break;
            };
            pace.took(chunk.chunk.len());
            bytes.extend_from_slice(&chunk.chunk);
            if bytes.len() as u64 > cap {
                return Err(Status::invalid_argument(format!(
                    "invalid module: larger than the host's {cap}-byte cap"
                )));
            }
        }
        let (sha256, size_bytes, existed) = self.upload_bytes(bytes, &caller).await?;
        Ok(Response::new(pb::UploadModuleResponse {
            sha256,
            size_bytes,
            existed,
        }))
    }

    async fn upload_input(
        &self,
        request: Request<Streaming<pb::UploadInputRequest>>,
    ) -> Result<Response<pb::UploadInputResponse>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let mut stream = request.into_inner();
        let idle = self.plane.config().upload_idle_timeout;
        // Nothing of the stream is read before its turn: HTTP/2 flow control holds the rest.
        let _turn = self.input_turn(&caller).await?;
        let first = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("the upload sent nothing: abandoned"))??
            .ok_or_else(|| Status::invalid_argument("the upload sent no message"))?;
        let (size, sha) = (first.size_bytes, first.sha256.clone());
        let head = tokio_stream::once(Ok::<_, Status>(first.chunk));
        let rest = stream.map(|m| m.map(|m| m.chunk));
        let chunks = head.chain(rest);
        let sha = (!sha.is_empty()).then_some(sha);
        let (sha256, size_bytes, existed) = self.receive_input(&caller, size, sha, chunks).await?;
        Ok(Response::new(pb::UploadInputResponse {
            sha256,
            size_bytes,
            existed,
        }))
    }

    async fn get_input(
        &self,
        request: Request<pb::GetInputRequest>,
    ) -> Result<Response<pb::InputInfo>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let sha = request.into_inner().sha256.trim().to_ascii_lowercase();
        let view = self.plane.input(&caller, &sha).await.map_err(status)?;
        Ok(Response::new(input_to_pb(view)))
    }

    async fn list_inputs(
        &self,
        request: Request<pb::ListInputsRequest>,
    ) -> Result<Response<pb::ListInputsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let named = request.into_inner().tenant;
        // A tenant lists its own; an admin every input, or a tenant's when it names one.
        let tenant = match (principal.tenant(), named.is_empty()) {
            (None, true) => None,
            _ => Some(acting_tenant(&named, &principal)?),
        };
        let listed = self.plane.inputs(tenant).await.map_err(status)?;
        Ok(Response::new(pb::ListInputsResponse {
            inputs: listed.inputs.into_iter().map(input_to_pb).collect(),
            used_bytes: listed.used,
            limit_bytes: listed.limit,
            truncated: listed.truncated,
        }))
    }

    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let mut spec = request
            .spec
            .ok_or_else(|| Status::invalid_argument("the request has no task spec"))?;
        spec.tenant = acting_tenant(&spec.tenant, &principal)?;
        let spec = convert::spec_from_pb(spec, self.plane.config())
            .map_err(|m| Status::invalid_argument(super::fit_header(m)))?;
        convert::check_idempotency_key(&request.idempotency_key)
            .map_err(|m| Status::invalid_argument(super::fit_header(m)))?;
        let key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
        let (id, existed) = self
            .plane
            .submit_as(spec, key, &Caller::from(&principal))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id: id.to_string(),
            existed,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let principal = auth::principal(&request)?;
        let mut request = request.into_inner();
        let mut spec = request
            .spec
            .take()
            .ok_or_else(|| Status::invalid_argument("the request has no task spec"))?;
        spec.tenant = acting_tenant(&spec.tenant, &principal)?;
        convert::check_idempotency_key(&request.idempotency_key)
            .map_err(|m| Status::invalid_argument(super::fit_header(m)))?;
        let key = std::mem::take(&mut request.idempotency_key);
        request.spec = Some(spec);
        // The shape is checked here too, off the actor: a huge request is refused for little.
        let tasks = convert::job_tasks_from_pb(&request)
            .and_then(|tasks| tasks.check().map(|_| tasks))
            .map_err(|m| Status::invalid_argument(super::fit_header(m)))?;
        // What a retry under the key must match: the request as it acts (its tenant named).
        let sha256 = match key.is_empty() {
            true => String::new(),
            false => corral_admission::sha256_of(&prost::Message::encode_to_vec(&request)),
        };
        let spec = request.spec.take().expect("put back above");
        let template = convert::spec_from_pb(spec, self.plane.config())
            .map_err(|m| Status::invalid_argument(super::fit_header(m)))?;
        let job = JobRequest {
            template,
            tasks,
            max_failures: request.max_failures,
            idempotency_key: (!key.is_empty()).then_some(key),
            sha256,
        };
        let (view, existed) = self
            .plane
            .submit_job_as(job, &Caller::from(&principal))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job_id: view.job.id.to_string(),
            task_count: view.job.count,
            first_task_id: view.job.first.to_string(),
            existed,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let id = job_id(&request.into_inner().job_id)?;
        let view = self.plane.job_as(id, &caller).await.map_err(status)?;
        Ok(Response::new(job_to_pb(&view)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let tenant = match (principal.tenant(), request.tenant.is_empty()) {
            (None, true) => None,
            _ => Some(acting_tenant(&request.tenant, &principal)?),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(job_id(token)?),
        };
        let limit = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (jobs, more) = self
            .plane
            .list_jobs(tenant, after, limit)
            .await
            .map_err(status)?;
        let next_page_token = match (more, jobs.last()) {
            (true, Some(last)) => last.job.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn kill_job(
        &self,
        request: Request<pb::KillJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let id = job_id(&request.into_inner().job_id)?;
        let view = self.plane.kill_job_as(id, &caller).await.map_err(status)?;
        Ok(Response::new(job_to_pb(&view)))
    }

    type JobResultsStream = Pin<Box<dyn Stream<Item = Result<pb::JobResult, Status>> + Send>>;

    async fn job_results(
        &self,
        request: Request<pb::JobResultsRequest>,
    ) -> Result<Response<Self::JobResultsStream>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let request = request.into_inner();
        let id = job_id(&request.job_id)?;
        // A few streams at once, each holding a page and an output or two at a time: a turn
        // is waited for (up to RESULTS_TURN_WAIT) before anything is read.
        let turn = tokio::time::timeout(RESULTS_TURN_WAIT, self.results.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "the host is streaming as many jobs' results as it does at once \
                     ({RESULTS_STREAMS}); try again"
                ))
            })?
            .map_err(|_| Status::unavailable("the host is shutting down"))?;
        // Refused at once when the job is not the caller's to see.
        let (first, mut more) = self
            .plane
            .job_tasks_as(id, &caller, None, RESULTS_PAGE)
            .await
            .map_err(status)?;
        let plane = self.plane.clone();
        let full = request.full;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _turn = turn;
            // A client that stops reading gives its turn back.
            let send = |item| async {
                matches!(
                    tokio::time::timeout(RESULTS_SEND_WAIT, tx.send(item)).await,
                    Ok(Ok(()))
                )
            };
            let mut page = first;
            loop {
                let last = page.last().map(|t| t.id);
                for task in page {
                    let output = match task.state.is_terminal() {
                        false => None,
                        true => match plane.stored_output(task.id).await {
                            Ok(output) => output,
                            Err(e) => {
                                send(Err(status(e))).await;
                                return;
                            }
                        },
                    };
                    let output = output.map(|mut o| {
                        if !full {
                            o.stderr = Default::default();
                            o.files.clear();
                        }
                        convert::output_to_pb(&o)
                    });
                    let result = pb::JobResult {
                        task: Some(convert::task_to_pb(&task, false)),
                        output,
                    };
                    if !send(Ok(result)).await {
                        return;
                    }
                }
                if !more {
                    return;
                }
                match plane.job_tasks_as(id, &caller, last, RESULTS_PAGE).await {
                    Ok((next, again)) => (page, more) = (next, again),
                    Err(e) => {
                        send(Err(status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let id = task_id(&request.into_inner().task_id)?;
        let task = self.plane.get_as(id, &caller).await.map_err(status)?;
        Ok(Response::new(convert::task_to_pb(&task, false)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let tenant = match (principal.tenant(), request.tenant.is_empty()) {
            (None, true) => None,
            _ => Some(acting_tenant(&request.tenant, &principal)?),
        };
        let state = match request.state {
            0 => None,
            n => Some(
                convert::state_from_pb(n)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown task state {n}")))?,
            ),
        };
        let job = match request.job_id.as_str() {
            "" => None,
            id => Some(job_id(id)?),
        };
        let filter = TaskFilter {
            state,
            name: (!request.name.is_empty()).then_some(request.name),
            tenant,
            labels: request.labels,
            job,
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(task_id(token)?),
        };
        let limit = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (tasks, more) = self
            .plane
            .list(&filter, after, limit)
            .await
            .map_err(status)?;
        let (page, cut) = page(&tasks, PAGE_BYTES);
        let next_page_token = match (more || cut, page.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page,
            next_page_token,
        }))
    }

    async fn kill_task(
        &self,
        request: Request<pb::KillTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let id = task_id(&request.into_inner().task_id)?;
        let task = self.plane.kill_as(id, &caller).await.map_err(status)?;
        Ok(Response::new(convert::task_to_pb(&task, false)))
    }

    type WatchTasksStream = EventStream;

    async fn watch_tasks(
        &self,
        request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let principal = auth::principal(&request)?;
        let caller = Caller::from(&principal);
        let request = request.into_inner();
        let only = match request.task_id.as_str() {
            "" => None,
            id => Some(task_id(id)?),
        };
        let (current, receiver) = self.plane.watch_as(only, &caller).await.map_err(status)?;
        let plane = self.plane.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut receiver = receiver;
            let gone = principal.gone();
            tokio::pin!(gone);
            let event = |t: &crate::task::Task| {
                Ok(pb::TaskEvent {
                    task: Some(convert::task_to_pb(t, false)),
                })
            };
            if let Some(task) = &current {
                if tx.send(event(task)).await.is_err() || task.state.is_terminal() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    // Its client has gone: the watch ends now, not at the task's next change.
                    () = tx.closed() => return,
                    () = &mut gone => {
                        // The token was revoked, or expired: the stream ends, saying why.
                        let why = format!("token {} was revoked or expired", principal.accessor);
                        let _ = tx.send(Err(Status::unauthenticated(why))).await;
                        return;
                    }
                };
                let task = match received {
                    Ok(task) => task,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => match only {
                        // Missed some changes: the task's state now says where it is.
                        Some(id) => match plane.get_as(id, &caller).await {
                            Ok(task) => std::sync::Arc::new(task),
                            Err(_) => return,
                        },
                        None => continue,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if only.is_some_and(|id| id != task.id)
                    || caller.scope().is_some_and(|t| t != task.spec.tenant)
                {
                    continue;
                }
                // A LOST or FAILED attempt that is retried is followed by PENDING: the watch
                // of one task ends only with the task's own end, which alone has a finish time.
                if tx.send(event(&task)).await.is_err() || (only.is_some() && task.has_ended()) {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream.map(|e| e))))
    }

    async fn get_task_output(
        &self,
        request: Request<pb::GetTaskOutputRequest>,
    ) -> Result<Response<pb::TaskOutput>, Status> {
        let caller = Caller::from(&auth::principal(&request)?);
        let id = task_id(&request.into_inner().task_id)?;
        let output = self.plane.output_as(id, &caller).await.map_err(status)?;
        Ok(Response::new(convert::output_to_pb(&output)))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self
            .plane
            .agents()
            .await
            .map_err(status)?
            .iter()
            .map(|a| convert::agent_to_pb(&a.info, a.state, a.last_seen_ms, a.running))
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn list_partitions(
        &self,
        request: Request<pb::ListPartitionsRequest>,
    ) -> Result<Response<pb::ListPartitionsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let partitions = self
            .plane
            .partitions()
            .await
            .map_err(status)?
            .iter()
            .map(|p| {
                let mut p = convert::partition_to_pb(p);
                // A tenant sees that a partition is reserved for another, never for whom, nor
                // how much of it that tenant uses.
                if principal
                    .tenant()
                    .is_some_and(|own| !p.tenant.is_empty() && p.tenant != own)
                {
                    p.tenant.clear();
                    p.reserved_for_other = true;
                    p.allocated = None;
                    p.labels.clear();
                    if p.state == pb::PartitionState::Allocated as i32 {
                        p.state = pb::PartitionState::Available as i32;
                    }
                }
                p
            })
            .collect();
        Ok(Response::new(pb::ListPartitionsResponse { partitions }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let principal = auth::principal(&request)?;
        admin_only(&principal, "making tokens")?;
        let r = request.into_inner();
        let role = corral_proto::token::Role::from_pb(r.role).ok_or_else(|| {
            Status::invalid_argument("a token needs a role: admin, tenant or agent")
        })?;
        match role {
            corral_proto::token::Role::Tenant => {
                if let Some(problem) = auth::tenant_problem(&r.tenant) {
                    return Err(Status::invalid_argument(problem));
                }
            }
            _ if !r.tenant.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "only tenant tokens name a tenant; an {} token acts for every tenant",
                    role.name()
                )))
            }
            _ => {}
        }
        if r.description.len() > MAX_DESCRIPTION_BYTES
            || r.description.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "a token's description is at most {MAX_DESCRIPTION_BYTES} bytes, without \
                 control characters"
            )));
        }
        if r.expires_in_ms > MAX_EXPIRY_MS {
            return Err(Status::invalid_argument(
                "a token expires within ten years at most",
            ));
        }
        let now = crate::state::Now::current().ms;
        let expires = match r.expires_in_ms {
            0 => 0,
            ms => now + i64::try_from(ms).unwrap_or(i64::MAX / 2),
        };
        let minted = auth::mint(role, &r.tenant, "", expires, now, &r.description);
        let (record, token) = self
            .plane
            .create_token(minted, &Caller::from(&principal))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(convert::token_info_to_pb(&record)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        admin_only(&auth::principal(&request)?, "listing tokens")?;
        let tokens = self.plane.tokens().await.map_err(status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_info_to_pb).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let principal = auth::principal(&request)?;
        admin_only(&principal, "revoking tokens")?;
        let accessor = request.into_inner().accessor;
        let record = self
            .plane
            .revoke_token(&accessor, &Caller::from(&principal))
            .await
            .map_err(status)?;
        Ok(Response::new(convert::token_info_to_pb(&record)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        admin_only(&auth::principal(&request)?, "reading the audit log")?;
        let r = request.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let events = self
            .plane
            .audit(r.after, limit)
            .map_err(status)?
            .iter()
            .map(convert::audit_to_pb)
            .collect();
        Ok(Response::new(pb::ListAuditResponse { events }))
    }

    async fn set_tenant(
        &self,
        request: Request<pb::SetTenantRequest>,
    ) -> Result<Response<pb::TenantView>, Status> {
        let principal = auth::principal(&request)?;
        admin_only(&principal, "setting a tenant's share")?;
        let r = request.into_inner();
        let change = convert::tenant_change_from_pb(&r).map_err(Status::invalid_argument)?;
        let view = self
            .plane
            .set_tenant(&r.tenant, change, &Caller::from(&principal))
            .await
            .map_err(status)?;
        Ok(Response::new(convert::tenant_view_to_pb(&view)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        // A tenant sees its own row only: another's settings and usage are not its business.
        let principal = auth::principal(&request)?;
        let tenants = self
            .plane
            .tenants(principal.tenant())
            .await
            .map_err(status)?
            .iter()
            .map(convert::tenant_view_to_pb)
            .collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;
    use crate::task::Task;

    #[test]
    fn a_page_ends_before_it_outgrows_its_byte_bound() {
        let task = |id: u64| {
            let spec = convert::spec_from_pb(
                pb::TaskSpec {
                    module_sha256: "ab".repeat(32),
                    args: vec!["x".repeat(100_000)],
                    ..Default::default()
                },
                &HostConfig::default(),
            )
            .unwrap();
            Task::new(TaskId(id), spec, 0)
        };
        let tasks: Vec<Task> = (1..=10).map(task).collect();
        let (page, cut) = page(&tasks, 350_000);
        assert_eq!(page.len(), 3);
        assert!(cut);
        let (whole, cut) = super::page(&tasks, 10 << 20);
        assert_eq!((whole.len(), cut), (10, false));
        // One task larger than the bound still makes a page of one.
        let (one, _) = super::page(&tasks, 10);
        assert_eq!(one.len(), 1);
    }
}
