//! Corral's gRPC contract, package `corral.v1`, generated at build time from
//! `proto/corral/v1/corral.proto` by protox and tonic-prost-build (no `protoc` needed).
//!
//! Two services:
//! - [`pb::corral_server::Corral`] / [`pb::corral_client::CorralClient`]: the client API:
//!   upload modules, submit, get, list, kill and watch tasks, fetch their output, list agents and
//!   partitions.
//! - [`pb::agent_api_server::AgentApi`] / [`pb::agent_api_client::AgentApiClient`]: what agents
//!   speak: `Register`, then one bidirectional `Session` stream (launches, kills and acks to the
//!   agent; heartbeats and status updates from it), and `FetchModule`.
//!
//! These types stop at the edge: `corral-host` and `corral-agent` convert them to their domain
//! types in their api modules.
//!
//! ```
//! use corral_proto::pb;
//!
//! let request = pb::SubmitTaskRequest {
//!     spec: Some(pb::TaskSpec {
//!         name: "hello".into(),
//!         module_sha256: "ab12".into(),
//!         ..Default::default()
//!     }),
//!     idempotency_key: "sweep-1/fold-3".into(),
//! };
//! assert_eq!(request.spec.unwrap().tenant, "");
//! ```

/// The generated messages, clients and servers of `corral.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("corral.v1");
}

/// Largest gRPC message either side accepts: a task's stdin or a final status update with its
/// captured output can be tens of MiB, over tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 96 << 20;

/// Longest agent id, in bytes.
pub const MAX_AGENT_ID_BYTES: usize = 128;

/// What is wrong with `id` as an agent id, if anything: it must be 1 to
/// [`MAX_AGENT_ID_BYTES`] bytes with no `/` (partitions are named `<agent id>/<name>`), no
/// whitespace and no control characters. Checked by the host at registration and by the agent
/// when it starts, so that a bad id is an error at once rather than a registration refused
/// forever.
pub fn agent_id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > MAX_AGENT_ID_BYTES {
        return Some(format!(
            "agent id {id:?} must be 1 to {MAX_AGENT_ID_BYTES} bytes long"
        ));
    }
    if id
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "agent id {id:?} must contain no '/', whitespace or control characters"
        ));
    }
    None
}

/// The agent protocol this contract defines (`RegisterRequest.protocol`); a host refuses an
/// agent that speaks another. 3: outcome `compile_limit`, and an attempt's timeout counts its
/// compile. 4: `Limits.max_disk_bytes`, outcome `disk_limit`, `guest_warnings`.
pub const AGENT_PROTOCOL: u32 = 4;

/// The metadata key under which a refused `UploadModule` (`INVALID_ARGUMENT`) names the
/// outcome a run of the module would have, by its name in the contract
/// (`OUTCOME_KIND_INVALID_MODULE` or `OUTCOME_KIND_LINK_ERROR`).
pub const OUTCOME_METADATA: &str = "corral-outcome";

/// Chunk size for streamed module bytes.
pub const MODULE_CHUNK_BYTES: usize = 1 << 20;

/// How to reach a Corral host at `url` (`http://host:7700`; a bare `host:port` gets `http://`):
/// the connection settings clients and agents share (a 5 s connect timeout, `TCP_NODELAY`,
/// HTTP/2 keep-alives every 10 s). The error says why the URL is not one.
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, String> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    tonic::transport::Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(std::time::Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
        })
        .map_err(|e| e.to_string())
}
