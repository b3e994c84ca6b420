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

pub mod input;
pub mod json;
pub mod token;

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
/// compile. 4: `Limits.max_disk_bytes`, outcome `disk_limit`, `guest_warnings`. 5: every call
/// carries a token; `RegisterResponse.credential`.
pub const AGENT_PROTOCOL: u32 = 5;

/// The metadata key under which a refused `UploadModule` (`INVALID_ARGUMENT`) names the
/// outcome a run of the module would have, by its name in the contract
/// (`OUTCOME_KIND_INVALID_MODULE` or `OUTCOME_KIND_LINK_ERROR`).
pub const OUTCOME_METADATA: &str = "corral-outcome";

/// Chunk size for streamed module bytes.
pub const MODULE_CHUNK_BYTES: usize = 1 << 20;

/// What a client or an agent trusts, and shows, when it reaches a host over TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsClient {
    /// The CA that signs the host's certificate (PEM); `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// For mutual TLS: this side's certificate chain and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsClient {
    /// Whether anything of TLS was asked for.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

/// How to reach a Corral host at `url` (`http://host:7700`, `https://host:7700`; a bare
/// `host:port` gets `http://`): the connection settings clients and agents share (a 5 s
/// connect timeout, `TCP_NODELAY`, HTTP/2 keep-alives every 10 s). An `https://` URL is reached
/// over TLS only, verifying the host against `tls.ca` or the system's roots, never in
/// plaintext; TLS settings with an `http://` URL are refused, so that a mistyped scheme does
/// not send tokens in the clear. The error says why the URL is not one.
pub fn endpoint(url: &str, tls: &TlsClient) -> Result<tonic::transport::Endpoint, String> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err("the URL must start with http:// or https://".into());
    }
    if !https && tls.is_set() {
        return Err(
            "TLS settings were given (a CA or a certificate) but the URL is http://: use \
             https://"
                .into(),
        );
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(std::time::Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
        })
        .map_err(|e| e.to_string())?;
    if https {
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &tls.ca {
            Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
    }
    Ok(endpoint)
}

/// An error and its sources, `: `-separated, each said once (tonic's transport error repeats
/// its source's text in its own).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Why a connection to a host failed, with a hint when a plaintext URL met a TLS host.
pub fn unreachable_hint(url: &str, error: &str) -> &'static str {
    let plaintext = !url.starts_with("https://");
    let broken = [
        "connection reset",
        "broken pipe",
        "frame",
        "h2 protocol",
        "connection closed",
        "operation was canceled",
        "transport error",
    ]
    .iter()
    .any(|sign| error.to_ascii_lowercase().contains(sign));
    if plaintext && broken {
        " (the host closed a plaintext connection: if it serves TLS, use an https:// URL)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_said_twice_is_shown_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "tcp connect error: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            source_chain(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
    }
}
