//! The HTTP/JSON API, served on the gRPC listener (HTTP/1.1 and HTTP/2; gRPC calls go by
//! their own paths), for clients without gRPC: `curl`, the Python client, notebooks.
//!
//! Each endpoint is a thin translation: it authenticates the `Authorization: Bearer` header as
//! the gRPC gate does, turns the JSON into the contract's message, calls the same
//! [`ClientService`] handler a gRPC call reaches (so every check, bound and tenant rule is the
//! same), and answers the `-o json` shapes of [`corral_proto::json`]. Errors are
//! `{"error": {"code": "...", "message": "..."}}` with the HTTP status of their gRPC code.
//! `GET /healthz` alone needs no token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use corral_proto::json::{self, Members};
use corral_proto::pb;
use corral_proto::pb::corral_server::Corral;
use serde::Deserialize;
use tokio_stream::{Stream, StreamExt};

use super::ClientService;
use crate::auth::{Api, Authenticator, Caller, Principal};

/// Bytes of a JSON request body.
pub const MAX_JSON_BYTES: usize = 16 << 20;

/// What the endpoints share.
#[derive(Clone)]
struct Http {
    service: Arc<ClientService>,
    auth: Arc<Authenticator>,
}

/// The API's routes, to merge with the gRPC services' (see [`super::serve`]).
pub fn router(service: Arc<ClientService>, auth: Arc<Authenticator>) -> Router {
    let max_module = service.config().max_module_size.as_u64();
    // A JSON body holds a task's stdin (base64) or a job's parameter sets; data larger than
    // this belongs in a file, or goes by gRPC.
    let max_json = MAX_JSON_BYTES;
    let http = Http { service, auth };
    let api = Router::new()
        .route(
            "/v1/modules",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(
                usize::try_from(max_module.saturating_add(1)).unwrap_or(usize::MAX),
            )),
        )
        .route(
            "/v1/inputs",
            post(upload_input)
                .layer(axum::extract::DefaultBodyLimit::disable())
                .get(list_inputs),
        )
        .route("/v1/inputs/{sha256}", get(get_input))
        .route("/v1/tasks", post(submit_task).get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/kill", post(kill_task))
        .route("/v1/tasks/{id}/output", get(task_output))
        .route("/v1/tasks/{id}/watch", get(watch_task))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/kill", post(kill_job))
        .route("/v1/jobs/{id}/results", get(job_results))
        .route("/v1/jobs/{id}/watch", get(watch_job))
        .route("/v1/agents", get(agents))
        .route("/v1/partitions", get(partitions))
        .route_layer(axum::middleware::from_fn_with_state(http.clone(), gate))
        .layer(axum::extract::DefaultBodyLimit::max(max_json))
        .with_state(http);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(api)
        .method_not_allowed_fallback(method_not_allowed)
}

/// A known endpoint called with another method, in the API's error shape.
async fn method_not_allowed(request: axum::extract::Request) -> Failure {
    Failure {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!(
            "{} {} is not an endpoint (another method is)",
            request.method(),
            request.uri().path()
        ),
    }
}

/// What answers a request no route takes: 404 in the API's error shape, or, for a gRPC call
/// (by its content type), UNIMPLEMENTED as tonic answers it.
pub async fn not_found(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no such method: {}", request.uri().path()))
            .into_http();
    }
    Failure {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    }
    .into_response()
}

/// An error as the API answers it.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn bad_request(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let (status, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::Aborted => (StatusCode::CONFLICT, "aborted"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        // A refused module says which outcome it is, as gRPC's metadata does.
        let code = match s
            .metadata()
            .get(corral_proto::OUTCOME_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some("OUTCOME_KIND_LINK_ERROR") => "link_error",
            Some("OUTCOME_KIND_INVALID_MODULE") => "invalid_module",
            _ => code,
        };
        Failure {
            status,
            code,
            message: s.message().to_string(),
        }
    }
}

impl Failure {
    /// The error as the API writes it.
    fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type Answer<T> = Result<T, Failure>;

/// What axum refused before a handler ran (a malformed query string, a body over the limit),
/// in the API's error shape.
fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> Failure {
    let message = rejection.to_string();
    let status = rejection.into_response().status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "invalid_argument",
        s if s.is_client_error() => "invalid_argument",
        _ => "internal",
    };
    Failure {
        status,
        code,
        message,
    }
}

/// The gate of every `/v1` route: the caller's `Authorization: Bearer` header, checked as the
/// gRPC gate checks it, before anything of the request's body is read; the `Principal` is put
/// in the request for its handler.
async fn gate(
    State(http): State<Http>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    let now = crate::state::Now::current().ms;
    match http.auth.authenticate(&metadata, Api::Client, now) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e) => Failure::from(e.status()).into_response(),
    }
}

/// A gRPC request carrying `message` as `principal` made it.
fn call<T>(principal: &Principal, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(principal.clone());
    request
}

fn json_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("the JSON shapes serialize");
    line.push(b'\n');
    line
}

/// A stream of JSON lines (`application/x-ndjson`).
fn json_lines<S>(lines: S) -> Response
where
    S: Stream<Item = Vec<u8>> + Send + 'static,
{
    let body = Body::from_stream(lines.map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Whether the client asked for JSON lines rather than server-sent events.
fn wants_json_lines(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson") || a.contains("application/jsonl"))
}

// ----- modules -------------------------------------------------------------------------------

/// A module's bytes (wasm or WAT) as the request's body, received as a gRPC upload is: in a
/// turn, within the host's cap, making progress (64 KiB) within each `upload_idle_timeout`.
async fn upload(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    body: Body,
) -> Answer<Json<serde_json::Value>> {
    let caller = Caller::from(&principal);
    let config = http.service.config();
    let (cap, idle) = (config.max_module_size.as_u64(), config.upload_idle_timeout);
    let _turn = http.service.upload_turn().await?;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut pace = super::client::Pace::new(idle);
    loop {
        let chunk = pace.next(stream.next()).await.map_err(|s| Failure {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "deadline_exceeded",
            message: s.message().to_string(),
        })?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| Failure::bad_request(format!("reading the body: {e}")))?;
        pace.took(chunk.len());
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > cap {
            return Err(Failure {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "invalid_module",
                message: format!("invalid module: larger than the host's {cap}-byte cap"),
            });
        }
    }
    let (sha256, size_bytes, existed) = http.service.upload_bytes(bytes, &caller).await?;
    Ok(Json(serde_json::json!({
        "sha256": sha256,
        "size_bytes": size_bytes,
        "existed": existed,
    })))
}

// ----- inputs --------------------------------------------------------------------------------

/// An input's bytes as the request's body, streamed to the host's disk as a gRPC upload is:
/// `Content-Length` says its size (checked against the tenant's storage limit before a byte
/// is read) and `X-Corral-Sha256`, when given, the sha256 the bytes must hash to.
async fn upload_input(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Answer<Json<serde_json::Value>> {
    let caller = Caller::from(&principal);
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::to_string))
            .transpose()
            .map_err(|_| Failure::bad_request(format!("the {name} header is not text")))
    };
    let size = header("content-length")?
        .ok_or_else(|| Failure {
            status: StatusCode::LENGTH_REQUIRED,
            code: "invalid_argument",
            message: "an input's upload needs a Content-Length header (its size)".into(),
        })?
        .parse::<u64>()
        .map_err(|_| Failure::bad_request("Content-Length is not a number"))?;
    let sha256 = header("x-corral-sha256")?;
    let _turn = http.service.input_turn(&caller).await?;
    let chunks = body.into_data_stream();
    let (sha256, size_bytes, existed) = http
        .service
        .receive_input(&caller, size, sha256, chunks)
        .await?;
    Ok(Json(serde_json::json!({
        "sha256": sha256,
        "size_bytes": size_bytes,
        "existed": existed,
    })))
}

async fn get_input(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(sha256): Path<String>,
) -> Answer<Json<json::Input>> {
    let request = pb::GetInputRequest { sha256 };
    let input = http
        .service
        .get_input(call(&principal, request))
        .await?
        .into_inner();
    Ok(Json(json::Input::from(&input)))
}

async fn list_inputs(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
) -> Answer<Json<json::Inputs>> {
    let request = pb::ListInputsRequest::default();
    let listed = http
        .service
        .list_inputs(call(&principal, request))
        .await?
        .into_inner();
    Ok(Json(json::Inputs::from(&listed)))
}

// ----- tasks ---------------------------------------------------------------------------------

/// A task, or a job's tasks, as `POST /v1/tasks` and `POST /v1/jobs` take it: the flags of
/// `corral submit`, by the names of the JSON the CLI prints.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    module_sha256: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// stdin as text.
    stdin: Option<String>,
    /// stdin as base64, for bytes that are not text.
    stdin_base64: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    constraints: BTreeMap<String, String>,
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    max_output_bytes: Option<u64>,
    max_disk_bytes: Option<u64>,
    retries: Option<u32>,
    #[serde(default)]
    retry_failed: bool,
    /// A writable output directory whose files are kept.
    #[serde(default)]
    outputs: bool,
    /// Uploaded inputs it mounts: `[{"sha256": "...", "path": "/input/iris.csv"}]`.
    #[serde(default)]
    inputs: Vec<json::InputMount>,
    idempotency_key: Option<String>,
    // Jobs only.
    array: Option<u32>,
    /// `[{"name": "lr", "values": [0.1, 0.01]}, ...]`, in order.
    sweep: Option<Vec<SweepAxis>>,
    /// One object of parameters per task, each in the order written.
    params: Option<Vec<Members>>,
    max_failures: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepAxis {
    name: String,
    values: Vec<serde_json::Value>,
}

impl SubmitBody {
    fn is_job(&self) -> bool {
        self.array.is_some() || self.sweep.is_some() || self.params.is_some()
    }

    fn spec(&mut self) -> Answer<pb::TaskSpec> {
        let stdin = match (self.stdin.take(), self.stdin_base64.take()) {
            (Some(_), Some(_)) => {
                return Err(Failure::bad_request("give stdin or stdin_base64, not both"))
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| Failure::bad_request(format!("stdin_base64 is not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        Ok(pb::TaskSpec {
            name: std::mem::take(&mut self.name),
            tenant: std::mem::take(&mut self.tenant),
            module_sha256: std::mem::take(&mut self.module_sha256),
            args: std::mem::take(&mut self.args),
            env: std::mem::take(&mut self.env),
            stdin: stdin.into(),
            limits: Some(pb::Limits {
                fuel: self.fuel.unwrap_or(0),
                memory_bytes: self.memory_bytes.unwrap_or(0),
                timeout_ms: self.timeout_ms.unwrap_or(0),
                max_output_bytes: self.max_output_bytes.unwrap_or(0),
                max_disk_bytes: self.max_disk_bytes.unwrap_or(0),
            }),
            labels: std::mem::take(&mut self.labels),
            constraints: std::mem::take(&mut self.constraints),
            retry: Some(pb::RetryPolicy {
                max_retries: self.retries,
                retry_failed: self.retry_failed,
            }),
            collect_outputs: self.outputs,
            inputs: std::mem::take(&mut self.inputs)
                .into_iter()
                .map(pb::InputMount::from)
                .collect(),
        })
    }
}

/// A JSON body, its errors answered as the API's.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Answer<T> {
    serde_json::from_slice(bytes).map_err(|e| Failure::bad_request(format!("the body: {e}")))
}

async fn submit_task(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    bytes: Result<axum::body::Bytes, BytesRejection>,
) -> Answer<Json<json::Submitted>> {
    let bytes = bytes.map_err(rejected)?;
    let mut submit: SubmitBody = body(&bytes)?;
    if submit.is_job() || submit.max_failures.is_some() {
        return Err(Failure::bad_request(
            "array, sweep, params and max_failures make a job: POST /v1/jobs",
        ));
    }
    let request = pb::SubmitTaskRequest {
        spec: Some(submit.spec()?),
        idempotency_key: submit.idempotency_key.unwrap_or_default(),
    };
    let answer = http
        .service
        .submit_task(call(&principal, request))
        .await?
        .into_inner();
    Ok(Json(json::Submitted {
        task_id: answer.task_id,
        existed: answer.existed,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    name: Option<String>,
    tenant: Option<String>,
    job: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

async fn list_tasks(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(query) = query.map_err(rejected)?;
    let state = match &query.state {
        Some(s) => json::parse_state(s).map_err(Failure::bad_request)? as i32,
        None => 0,
    };
    let request = pb::ListTasksRequest {
        state,
        name: query.name.unwrap_or_default(),
        tenant: query.tenant.unwrap_or_default(),
        job_id: query.job.unwrap_or_default(),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
        labels: Default::default(),
    };
    let page = http
        .service
        .list_tasks(call(&principal, request))
        .await?
        .into_inner();
    let tasks: Vec<json::Task> = page.tasks.iter().map(json::Task::from).collect();
    Ok(Json(serde_json::json!({
        "tasks": tasks,
        "next_page_token": page.next_page_token,
    })))
}

async fn get_task(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<Json<json::Task>> {
    let task = http
        .service
        .get_task(call(&principal, pb::GetTaskRequest { task_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::Task::from(&task)))
}

async fn kill_task(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<Json<json::Task>> {
    let task = http
        .service
        .kill_task(call(&principal, pb::KillTaskRequest { task_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::Task::from(&task)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    /// Include the output files' bytes (base64).
    #[serde(default)]
    files: bool,
}

async fn task_output(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<OutputQuery>, QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(query) = query.map_err(rejected)?;
    let output = http
        .service
        .get_task_output(call(&principal, pb::GetTaskOutputRequest { task_id: id }))
        .await?
        .into_inner();
    let mut value = serde_json::to_value(json::Output::from(&output)).expect("serializes");
    if query.files {
        let engine = base64::engine::general_purpose::STANDARD;
        let files: Vec<serde_json::Value> = output
            .files
            .iter()
            .map(|f| serde_json::json!({"path": f.path, "data_base64": engine.encode(&f.data)}))
            .collect();
        value["files"] = serde_json::Value::Array(files);
    }
    Ok(Json(value))
}

async fn watch_task(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let events = http
        .service
        .watch_tasks(call(&principal, pb::WatchTasksRequest { task_id: id }))
        .await?
        .into_inner();
    // Each change of the task as its JSON, until it has ended; a failure (a revoked token)
    // is the stream's last item.
    let tasks = events.filter_map(|event| match event {
        Ok(event) => event.task.map(Ok),
        Err(status) => Some(Err(Failure::from(status))),
    });
    let tasks = tasks.map(|t| t.map(|t| json::Task::from(&t)));
    Ok(watch_response(&headers, "task", tasks))
}

/// A watch's items as the client asked for them: JSON lines, or server-sent events named
/// `event` (a failure, always the last item, as an `error` event or an error line).
fn watch_response<T, S>(headers: &HeaderMap, event: &'static str, items: S) -> Response
where
    T: serde::Serialize,
    S: Stream<Item = Result<T, Failure>> + Send + 'static,
{
    if wants_json_lines(headers) {
        return json_lines(items.map(|item| match item {
            Ok(item) => json_bytes(&item),
            Err(failure) => json_bytes(&failure.body()),
        }));
    }
    let events = items.map(move |item| {
        let (name, data) = match item {
            Ok(item) => (event, serde_json::to_value(item).expect("serializes")),
            Err(failure) => ("error", failure.body()),
        };
        Ok::<_, Infallible>(
            Event::default()
                .event(name)
                .json_data(data)
                .expect("serializes"),
        )
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ----- jobs ----------------------------------------------------------------------------------

async fn submit_job(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    bytes: Result<axum::body::Bytes, BytesRejection>,
) -> Answer<Json<json::JobSubmitted>> {
    let bytes = bytes.map_err(rejected)?;
    let mut submit: SubmitBody = body(&bytes)?;
    let spec = submit.spec()?;
    let sweep = submit
        .sweep
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|axis| {
            let values = axis
                .values
                .into_iter()
                .map(|v| json::param_value(&axis.name, v))
                .collect::<Result<_, _>>()?;
            Ok(pb::SweepAxis {
                name: axis.name,
                values,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(Failure::bad_request)?;
    let params = submit
        .params
        .take()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, Members(members))| {
            json::param_set(members).map_err(|e| format!("parameter set {}: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(Failure::bad_request)?;
    let request = pb::SubmitJobRequest {
        spec: Some(spec),
        array: submit.array.unwrap_or(0),
        sweep,
        params,
        max_failures: submit.max_failures.unwrap_or(0),
        idempotency_key: submit.idempotency_key.unwrap_or_default(),
    };
    let answer = http
        .service
        .submit_job(call(&principal, request))
        .await?
        .into_inner();
    Ok(Json(json::JobSubmitted {
        job_id: answer.job_id,
        task_count: answer.task_count,
        first_task_id: answer.first_task_id,
        existed: answer.existed,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    tenant: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

async fn list_jobs(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Query(query) = query.map_err(rejected)?;
    let request = pb::ListJobsRequest {
        tenant: query.tenant.unwrap_or_default(),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let page = http
        .service
        .list_jobs(call(&principal, request))
        .await?
        .into_inner();
    let jobs: Vec<json::Job> = page.jobs.iter().map(json::Job::from).collect();
    Ok(Json(serde_json::json!({
        "jobs": jobs,
        "next_page_token": page.next_page_token,
    })))
}

async fn get_job(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<Json<json::Job>> {
    let job = http
        .service
        .get_job(call(&principal, pb::GetJobRequest { job_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::Job::from(&job)))
}

async fn kill_job(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<Json<json::Job>> {
    let job = http
        .service
        .kill_job(call(&principal, pb::KillJobRequest { job_id: id }))
        .await?
        .into_inner();
    Ok(Json(json::Job::from(&job)))
}

async fn job_results(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<Response> {
    let request = pb::JobResultsRequest {
        job_id: id,
        full: false,
    };
    let results = http
        .service
        .job_results(call(&principal, request))
        .await?
        .into_inner();
    // A row per task, as `corral job results -o jsonl` prints; a failure midway ends the
    // stream with an error line.
    let lines = results.map(|result| match result {
        Ok(r) => {
            let task = r.task.unwrap_or_default();
            json_bytes(&json::ResultRow::new(&task, r.output.as_ref()))
        }
        Err(status) => json_bytes(&Failure::from(status).body()),
    });
    Ok(json_lines(lines))
}

/// How often a job watch looks at its job.
const JOB_WATCH_EVERY: Duration = Duration::from_millis(100);

async fn watch_job(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let get = |http: Http, principal: Principal, id: String| async move {
        http.service
            .get_job(call(&principal, pb::GetJobRequest { job_id: id }))
            .await
            .map(tonic::Response::into_inner)
    };
    // Refused at once when the job is not the caller's to see.
    let first = get(http.clone(), principal.clone(), id.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Job, Failure>>(4);
    tokio::spawn(async move {
        let gone = principal.gone();
        tokio::pin!(gone);
        let mut last = first;
        if tx.send(Ok(last.clone())).await.is_err() {
            return;
        }
        // The job as it changes, until it has ended, its client has gone, or its token was
        // revoked or expired (said as the stream's last item).
        while last.state == pb::JobState::Running as i32 {
            tokio::select! {
                () = tokio::time::sleep(JOB_WATCH_EVERY) => {}
                () = tx.closed() => return,
                () = &mut gone => {
                    let why = format!("token {} was revoked or expired", principal.accessor);
                    let _ = tx.send(Err(tonic::Status::unauthenticated(why).into())).await;
                    return;
                }
            }
            let job = match get(http.clone(), principal.clone(), id.clone()).await {
                Ok(job) => job,
                Err(status) => {
                    let _ = tx.send(Err(status.into())).await;
                    return;
                }
            };
            if job != last {
                if tx.send(Ok(job.clone())).await.is_err() {
                    return;
                }
                last = job;
            }
        }
    });
    let jobs = tokio_stream::wrappers::ReceiverStream::new(rx);
    let jobs = jobs.map(|j| j.map(|j| json::Job::from(&j)));
    Ok(watch_response(&headers, "job", jobs))
}

// ----- agents and partitions -----------------------------------------------------------------

async fn agents(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
) -> Answer<Json<Vec<json::Agent>>> {
    let listed = http
        .service
        .list_agents(call(&principal, pb::ListAgentsRequest {}))
        .await?
        .into_inner();
    Ok(Json(listed.agents.iter().map(json::Agent::from).collect()))
}

async fn partitions(
    State(http): State<Http>,
    Extension(principal): Extension<Principal>,
) -> Answer<Json<Vec<json::Partition>>> {
    let listed = http
        .service
        .list_partitions(call(&principal, pb::ListPartitionsRequest {}))
        .await?
        .into_inner();
    Ok(Json(
        listed
            .partitions
            .iter()
            .map(json::Partition::from)
            .collect(),
    ))
}
