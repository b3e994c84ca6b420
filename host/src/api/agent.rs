//! The agent API (`corral.v1.AgentApi`): registration, the agent's session stream, and module
//! fetches.

use std::pin::Pin;

use corral_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::auth::{self, Principal};
use crate::control::ControlPlane;
use crate::convert;
use crate::registry::AgentInfo;
use crate::state::{AgentCommand, StatusReport};
use crate::task::{Attempt, Progress};

/// Serves `corral.v1.AgentApi`.
pub struct AgentService {
    plane: ControlPlane,
    /// Turns to serve an input.
    fetches: std::sync::Arc<tokio::sync::Semaphore>,
}

impl AgentService {
    /// The service over `plane`.
    pub fn new(plane: ControlPlane) -> Self {
        Self {
            plane,
            fetches: std::sync::Arc::new(tokio::sync::Semaphore::new(INPUT_FETCHES)),
        }
    }
}

fn attempt(task: Option<pb::TaskRef>) -> Result<Attempt, Status> {
    let task = task.ok_or_else(|| Status::invalid_argument("a task reference is missing"))?;
    Ok(Attempt {
        task_id: task.task_id.parse().map_err(Status::invalid_argument)?,
        attempt: task.attempt,
    })
}

fn attempts(refs: Vec<pb::TaskRef>) -> Result<Vec<Attempt>, Status> {
    refs.into_iter().map(|r| attempt(Some(r))).collect()
}

fn task_ref(a: &Attempt) -> Option<pb::TaskRef> {
    Some(pb::TaskRef {
        task_id: a.task_id.to_string(),
        attempt: a.attempt,
    })
}

fn command_to_pb(command: AgentCommand) -> pb::HostMessage {
    use pb::host_message::Message;
    let message = match command {
        AgentCommand::Launch(a, spec) => Message::Launch(pb::Launch {
            task: task_ref(&a),
            spec: Some(convert::spec_to_pb(&spec, true)),
        }),
        AgentCommand::Kill(a) => Message::Kill(pb::Kill { task: task_ref(&a) }),
        AgentCommand::Ack(a) => Message::Ack(pb::Ack { task: task_ref(&a) }),
    };
    pb::HostMessage {
        message: Some(message),
    }
}

fn report_from_pb(update: pb::StatusUpdate) -> StatusReport {
    StatusReport {
        state: convert::state_from_pb(update.state),
        outcome: update.outcome.map(convert::outcome_from_pb),
        fuel_used: update.fuel_used,
        peak_memory_bytes: update.peak_memory_bytes,
        wall_us: update.wall_us,
        guest_warnings: update.guest_warnings,
        progress: update.progress.map(|p| Progress {
            done: p.done,
            total: p.total,
        }),
        output: update.output.map(convert::output_from_pb),
    }
}

/// The agent a credential proves, or why the call needs one: a join token registers, and
/// nothing else.
fn credential_agent(principal: &Principal) -> Result<&str, Status> {
    match principal.agent_id.as_str() {
        "" => Err(Status::permission_denied(format!(
            "token {} is a join token: it only registers new agents, which then use the \
             credential the host gives them",
            principal.accessor
        ))),
        id => Ok(id),
    }
}

type HostStream = Pin<Box<dyn Stream<Item = Result<pb::HostMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ModuleChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_api_server::AgentApi for AgentService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let principal = auth::principal(&request)?;
        let r = request.into_inner();
        if r.protocol != corral_proto::AGENT_PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "agent {} (Corral {}) speaks agent protocol {}; this host (Corral {}) speaks {}: \
                 run the same Corral on the host and its agents",
                crate::convert::shown(&r.agent_id),
                crate::convert::shown(&r.version),
                r.protocol,
                env!("CARGO_PKG_VERSION"),
                corral_proto::AGENT_PROTOCOL
            )));
        }
        if !principal.agent_id.is_empty() && principal.agent_id != r.agent_id {
            return Err(Status::permission_denied(format!(
                "credential {} is agent {}'s: it cannot register as agent {}",
                principal.accessor,
                principal.agent_id,
                crate::convert::shown(&r.agent_id)
            )));
        }
        let info = AgentInfo {
            id: r.agent_id,
            address: r.address,
            capacity: convert::resources_from_pb(r.capacity),
            labels: r.labels,
            version: r.version,
        };
        let running = attempts(r.running)?;
        let unacknowledged = attempts(r.unacknowledged)?;
        let (session, credential) = match principal.agent_id.as_str() {
            "" => self
                .plane
                .join(info, running, unacknowledged, &principal.accessor)
                .await
                .map_err(status)?,
            _ => {
                let session = self
                    .plane
                    .register_as(info, running, unacknowledged, &principal.accessor)
                    .await
                    .map_err(status)?;
                (session, String::new())
            }
        };
        let interval = self.plane.config().heartbeat_interval;
        Ok(Response::new(pb::RegisterResponse {
            session,
            heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            max_module_bytes: self.plane.config().max_module_size.as_u64(),
            credential,
        }))
    }

    type SessionStream = HostStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        use pb::agent_message::Message;
        let principal = auth::principal(&request)?;
        let own = credential_agent(&principal)?.to_string();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .and_then(|m| m.message)
            .ok_or_else(|| Status::invalid_argument("the stream's first message must be attach"))?;
        let Message::Attach(attach) = first else {
            return Err(Status::invalid_argument(
                "the stream's first message must be attach",
            ));
        };
        let (agent_id, session) = (attach.agent_id, attach.session);
        if agent_id != own {
            return Err(Status::permission_denied(format!(
                "credential {} is agent {own}'s: it cannot attach as agent {}",
                principal.accessor,
                crate::convert::shown(&agent_id)
            )));
        }
        let commands = self
            .plane
            .attach_as(&agent_id, session, &principal.accessor)
            .await
            .map_err(status)?;
        let plane = self.plane.clone();
        tokio::spawn(async move {
            let gone = principal.gone();
            tokio::pin!(gone);
            loop {
                let received = tokio::select! {
                    received = inbound.message() => received,
                    // Its credential was revoked: the session ends (the host ends its
                    // command stream too).
                    () = &mut gone => break,
                };
                let message = match received {
                    Ok(Some(m)) => m.message,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(agent_id, error = %e, "agent stream broke");
                        break;
                    }
                };
                match message {
                    // Not waited on: a stale session's stream is ended by the host dropping it.
                    Some(Message::Heartbeat(_)) => plane.heartbeat(&agent_id, session).await,
                    Some(Message::Status(update)) => {
                        let Ok(attempt) = attempt(update.task.clone()) else {
                            tracing::warn!(
                                agent_id,
                                "status update without a valid task reference"
                            );
                            continue;
                        };
                        // Final reports are acknowledged through the command stream once
                        // durable; nothing here waits for that.
                        plane
                            .report(&agent_id, session, attempt, report_from_pb(update))
                            .await;
                    }
                    Some(Message::Attach(_)) | None => {
                        tracing::warn!(agent_id, "unexpected message on the agent stream");
                    }
                }
            }
            plane.detach(&agent_id, session).await;
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(commands)
            .map(|c| Ok(command_to_pb(c)));
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchModuleStream = ChunkStream;
    type FetchInputStream = InputStream;

    async fn fetch_input(
        &self,
        request: Request<pb::FetchInputRequest>,
    ) -> Result<Response<Self::FetchInputStream>, Status> {
        let principal = auth::principal(&request)?;
        let agent_id = credential_agent(&principal)?;
        let sha = request.into_inner().sha256;
        if !corral_proto::input::is_sha256(&sha) {
            return Err(Status::invalid_argument("not a sha256"));
        }
        let (path, generation) = self.plane.input_for(agent_id, &sha).await.map_err(status)?;
        // Waited for as long as it takes: a refusal would cost the task an attempt, and an
        // agent that goes away drops the wait.
        let turn = self
            .fetches
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the host is shutting down"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (plane, agent) = (self.plane.clone(), agent_id.to_string());
        // A chunk at a time, as the agent takes them: an input may be gigabytes. Its bytes
        // are checked against its name on the way (the agent checks them too): a damaged file
        // is said to be one rather than served.
        tokio::spawn(async move {
            serve_input(plane, path, (sha, generation), agent, tx).await;
            drop(turn);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch_module(
        &self,
        request: Request<pb::FetchModuleRequest>,
    ) -> Result<Response<Self::FetchModuleStream>, Status> {
        let principal = auth::principal(&request)?;
        let agent_id = credential_agent(&principal)?;
        let sha = request.into_inner().sha256;
        let bytes = self
            .plane
            .module_for(agent_id, &sha)
            .await
            .map_err(status)?;
        let chunks: Vec<Result<pb::ModuleChunk, Status>> = (0..bytes.len().max(1))
            .step_by(corral_proto::MODULE_CHUNK_BYTES)
            .map(|start| {
                let end = (start + corral_proto::MODULE_CHUNK_BYTES).min(bytes.len());
                Ok(pb::ModuleChunk {
                    chunk: bytes.slice(start..end),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

type InputStream = Pin<Box<dyn Stream<Item = Result<pb::InputChunk, Status>> + Send>>;

/// Input fetches served at once (each reads its file a megabyte at a time).
const INPUT_FETCHES: usize = 8;
/// How long a fetch waits for its agent to take a chunk before it is dropped.
const FETCH_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends input `sha` from `path` to `tx`: its size first, then a megabyte at a time, each read
/// and hashed on a blocking thread; an error in place of the end when the file cannot be read
/// or its bytes do not hash to `sha` (then the input is forgotten, so that an upload stores it
/// again). An agent that takes no chunk for a minute loses the stream.
async fn serve_input(
    plane: ControlPlane,
    path: std::path::PathBuf,
    (sha, generation): (String, u64),
    agent: String,
    tx: tokio::sync::mpsc::Sender<Result<pb::InputChunk, Status>>,
) {
    use sha2::Digest;
    let unreadable = |e: String| {
        tracing::error!(sha256 = %sha, error = %e, "cannot read a stored input");
        Status::internal(format!("the host cannot read input {sha}: {e}"))
    };
    let sent: Result<bool, Status> = async {
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, size))
        })
        .await
        .map_err(|e| unreadable(e.to_string()))?;
        let (mut file, size) = opened.map_err(|e| unreadable(e.to_string()))?;
        let mut hasher = sha2::Sha256::new();
        let (mut read, mut first) = (0u64, true);
        loop {
            let (f, h, chunk) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut chunk = vec![0u8; corral_proto::MODULE_CHUNK_BYTES];
                let n = file.read(&mut chunk)?;
                chunk.truncate(n);
                hasher.update(&chunk);
                Ok::<_, std::io::Error>((file, hasher, chunk))
            })
            .await
            .map_err(|e| unreadable(e.to_string()))?
            .map_err(|e| unreadable(e.to_string()))?;
            (file, hasher) = (f, h);
            let n = chunk.len();
            read += n as u64;
            if n == 0 && !first {
                break;
            }
            let message = pb::InputChunk {
                size_bytes: if first { size } else { 0 },
                chunk: chunk.into(),
            };
            first = false;
            match tokio::time::timeout(FETCH_SEND_WAIT, tx.send(Ok(message))).await {
                Ok(Ok(())) => {}
                // The agent went away, or took nothing for a minute.
                _ => return Ok(false),
            }
            if n == 0 {
                break;
            }
        }
        let digest = corral_admission::sha256_hex(&hasher.finalize().into());
        if digest != sha || read != size {
            tracing::error!(sha256 = %sha, found = %digest, "a stored input's bytes are damaged: it is forgotten until uploaded again");
            plane.input_damaged(&sha, generation).await;
            return Err(Status::data_loss(format!(
                "the host's copy of input {sha} is damaged (its bytes hash to {digest}): upload \
                 it again"
            )));
        }
        Ok(true)
    }
    .await;
    match sent {
        Ok(true) => tracing::debug!(sha256 = %sha, agent, "input served"),
        Ok(false) => {}
        Err(status) => drop(tx.send(Err(status)).await),
    }
}
