//! The gRPC edge: the `corral.v1` services over the [`ControlPlane`]. Protobuf types stop here
//! (and in [`crate::convert`]); errors are mapped to `tonic::Status` once, in [`status`].

mod agent;
mod client;
mod http;

use std::net::SocketAddr;

use corral_proto::pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::control::ControlPlane;
use crate::error::HostError;
use crate::store::StoreError;

pub use agent::AgentService;
pub use client::ClientService;

/// Maps a host error to the gRPC status clients see.
pub fn status(error: HostError) -> tonic::Status {
    let error = match error {
        HostError::NotFound(m) => HostError::NotFound(fit_header(m)),
        HostError::InvalidArgument(m) => HostError::InvalidArgument(fit_header(m)),
        HostError::PermissionDenied(m) => HostError::PermissionDenied(fit_header(m)),
        HostError::FailedPrecondition(m) => HostError::FailedPrecondition(fit_header(m)),
        HostError::Unavailable(m) => HostError::Unavailable(fit_header(m)),
        other => other,
    };
    match error {
        HostError::Refused(refused) => {
            let kind = match refused.kind {
                corral_admission::RefusalKind::InvalidModule => pb::OutcomeKind::InvalidModule,
                corral_admission::RefusalKind::LinkError => pb::OutcomeKind::LinkError,
            };
            let mut status = tonic::Status::invalid_argument(fit_header(
                HostError::Refused(refused).to_string(),
            ));
            status.metadata_mut().insert(
                corral_proto::OUTCOME_METADATA,
                tonic::metadata::MetadataValue::from_static(kind.as_str_name()),
            );
            status
        }
        HostError::NotFound(m) => tonic::Status::not_found(m),
        HostError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        HostError::PermissionDenied(m) => tonic::Status::permission_denied(m),
        HostError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
        HostError::Exhausted(m) => tonic::Status::resource_exhausted(fit_header(m)),
        // The disk failed (and the host is recovering) or is gone: nothing of the request was
        // kept, and trying again later is safe.
        HostError::Store(e @ (StoreError::Io(_) | StoreError::Stopped)) => {
            tonic::Status::unavailable(fit_header(e.to_string()))
        }
        HostError::Store(e) => tonic::Status::internal(fit_header(e.to_string())),
        HostError::Unavailable(m) => tonic::Status::unavailable(m),
    }
}

/// Bytes of an error message sent: a gRPC status travels in a header, which peers cap (8 KiB
/// by default in hyper), so a message naming a huge value must not grow with it.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] at a character boundary, saying so.
pub fn fit_header(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - 16;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("... (cut)");
    }
    message
}

/// TLS for both services: the host's certificate chain and key (PEM) and, for mutual TLS, the
/// CA whose certificates agents must present.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The host's certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Its private key, PEM.
    pub key: Vec<u8>,
    /// With mutual TLS: the CA that signs agents' certificates, PEM.
    pub client_ca: Option<Vec<u8>>,
}

/// Why the host's server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS certificate, key or client CA would not do.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// How long a TLS handshake may take before its connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The host's TLS: its certificate and key, client certificates asked for (and checked against
/// the client CA when given: the agent API's gate requires one under mutual TLS), and ALPN
/// offering `h2` and `http/1.1`, so that HTTP/1.1 clients of the API (Python's `urllib`,
/// `curl --http1.1`) connect as gRPC's HTTP/2 does. rustls with ring, the build's provider.
fn tls_acceptor(tls: Tls) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                let cert = cert.map_err(|e| bad("the client CA", &e))?;
                roots.add(cert).map_err(|e| bad("the client CA", &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| bad("the client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let certs = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| bad("the key", &e))?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("the certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Serves both services, and the HTTP/JSON API beside them, on `listener` until `shutdown`
/// resolves; over TLS with `tls`. Every call passes its service's gate
/// ([`auth::Gate`](crate::auth::Gate)) before its body is read, and every API request the same
/// check of its token (`GET /healthz` aside).
pub async fn serve(
    plane: ControlPlane,
    listener: TcpListener,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use crate::auth::{Api, Gate};
    use tonic::service::interceptor::InterceptedService;
    let max = corral_proto::MAX_MESSAGE_BYTES;
    let mutual = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let authenticator = plane.authenticator();
    let service = std::sync::Arc::new(ClientService::new(plane.clone()));
    let http = http::router(service.clone(), authenticator.clone());
    let client = pb::corral_server::CorralServer::from_arc(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let client =
        InterceptedService::new(client, Gate::new(authenticator.clone(), Api::Client, false));
    let agent = pb::agent_api_server::AgentApiServer::new(AgentService::new(plane))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let agent = InterceptedService::new(agent, Gate::new(authenticator, Api::Agent, mutual));
    // tonic applies its own TCP_NODELAY only to listeners it binds itself; without it, a
    // small response written right after another waits for the peer's delayed ACK (~40 ms).
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let builder = tonic::transport::Server::builder();
    // gRPC and the HTTP/JSON API share one router: gRPC calls go by their services' paths,
    // the rest to the API's routes; HTTP/1.1 is accepted beside HTTP/2.
    let routes = tonic::service::Routes::new(client)
        .add_service(agent)
        .into_axum_router()
        .merge(http)
        .fallback(http::not_found);
    let router = builder
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_routes(tonic::service::Routes::from(routes));
    let Some(tls) = tls else {
        return Ok(router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?);
    };
    // Handshakes run each on its own task, under a timeout and at most MAX_HANDSHAKES at
    // once, so that a slow one holds up no other connection and a flood of them holds a
    // bounded number of descriptors; the streams that complete one are served (tonic reads
    // their peers' certificates for the gate). The accepting task, its listener and its
    // handshakes end with the server: when it stops taking streams, or is dropped.
    let acceptor = tls_acceptor(tls)?;
    let (accepted, handshaken) = tokio::sync::mpsc::channel(256);
    let accepting = AbortOnDrop(tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let Ok(turn) = turns.clone().acquire_owned().await else {
                return;
            };
            let stream = tokio::select! {
                stream = incoming.next() => stream,
                () = accepted.closed() => return,
                // Reap the handshakes that ended.
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            };
            let stream = match stream {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    // Out of descriptors, say: wait a little rather than spin on it.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            };
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            handshakes.spawn(async move {
                let _turn = turn;
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    }));
    let served = router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(handshaken),
            shutdown,
        )
        .await;
    drop(accepting);
    Ok(served?)
}

/// TLS handshakes in progress at once, at most.
const MAX_HANDSHAKES: usize = 512;

/// A task aborted when this is dropped: the server's accepting task, which must not outlive a
/// server that is cancelled rather than shut down.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_message_is_cut_to_fit_a_header_at_a_character_boundary() {
        let short = "no task t-9".to_string();
        assert_eq!(fit_header(short.clone()), short);
        let long = "é".repeat(10_000);
        let cut = fit_header(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("... (cut)"));
        let status = status(HostError::InvalidArgument("x".repeat(1 << 20)));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }
}
