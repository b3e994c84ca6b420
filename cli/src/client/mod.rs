//! The client commands: `corral submit`, `tasks`, `task get|kill|output|watch`, `agents`,
//! `partitions`. They speak only the `corral.v1.Corral` contract (`corral-proto`) to the host
//! named by `--host` or `CORRAL_HOST`; what they print as JSON is the serde types of
//! [`json`], and the contract's enums are named in one place, here.

pub mod agents;
pub mod inputs;
pub mod jobs;
pub use corral_proto::json;
pub mod profile;
pub mod submit;
pub mod task;
pub mod tasks;
pub mod tenants;
pub mod tokens;

use anyhow::anyhow;
use corral_proto::pb::corral_client::CorralClient;
use corral_proto::token::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::args::HostArg;
use profile::Target;

/// A client of the host.
pub type Client = CorralClient<InterceptedService<Channel, Bearer>>;

/// A failure that maps to an exit status other than "corral failed".
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What to print.
    pub message: String,
    /// The exit status.
    pub status: u8,
}

/// Connects to the host `--host` names, with the token the flags, the environment or the
/// profile give ([`profile`]).
pub async fn connect(host: &HostArg) -> anyhow::Result<Client> {
    let target = profile::resolve(host, std::env::var("CORRAL_TOKEN").ok(), profile::load()?)?;
    connect_to(&target).await
}

/// The URL this process's client reached, for [`rpc`]'s hint.
static CONNECTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Connects to `target`.
pub async fn connect_to(target: &Target) -> anyhow::Result<Client> {
    let _ = CONNECTED.set(target.host.clone());
    let ca = match &target.tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow!("cannot read the CA file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let tls = corral_proto::TlsClient { ca, identity: None };
    let endpoint = corral_proto::endpoint(&target.host, &tls)
        .map_err(|e| anyhow!("invalid host address {:?}: {e}", target.host))?;
    if let Some(token) = &target.token {
        corral_proto::token::parse(token).map_err(access_denied)?;
    }
    let bearer = Bearer::new(target.token.as_deref()).map_err(access_denied)?;
    let channel = endpoint.connect().await.map_err(|e| {
        let text = corral_proto::source_chain(&e);
        anyhow!(
            "cannot reach the Corral host at {}: {text}{} (is `corral host` or `corral dev` running there? set --host or CORRAL_HOST)",
            target.host,
            corral_proto::unreachable_hint(&target.host, &text),
        )
    })?;
    Ok(CorralClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES))
}

/// A refusal of the caller's token, which exits with [`crate::exit::ACCESS_DENIED`].
fn access_denied(message: impl Into<String>) -> anyhow::Error {
    Failure {
        message: message.into(),
        status: crate::exit::ACCESS_DENIED,
    }
    .into()
}

/// A gRPC error as the CLI reports it: the host's message, or why the host was unreachable.
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    // A plaintext call to a TLS host breaks at its first request, not at connect.
    let hint = CONNECTED.get().map_or("", |url| {
        corral_proto::unreachable_hint(url, status.message())
    });
    if !hint.is_empty() {
        return anyhow!("the host is unreachable: {}{hint}", status.message());
    }
    match status.code() {
        tonic::Code::Unavailable => anyhow!("the host is unreachable: {}", status.message()),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            access_denied(status.message())
        }
        _ => anyhow!("{}", status.message()),
    }
}

pub use corral_proto::json::{is_terminal, outcome_kind, outcome_name, parse_state, state_name};

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::pb;

    #[test]
    fn states_are_named_and_parsed_without_their_prefix() {
        assert_eq!(state_name(pb::TaskState::Lost as i32), "LOST");
        assert_eq!(state_name(99), "UNKNOWN");
        assert_eq!(parse_state("running"), Ok(pb::TaskState::Running));
        assert_eq!(parse_state("Finished"), Ok(pb::TaskState::Finished));
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("done").unwrap_err().contains("\"done\""));
        assert!(is_terminal(pb::TaskState::Killed as i32));
        assert!(!is_terminal(pb::TaskState::Running as i32));
    }

    /// `corral run` names outcomes by the sandbox's `Outcome::kind`, the cluster commands by
    /// the contract's kind: the two agree for every outcome the sandbox has.
    #[test]
    fn outcome_names_are_the_sandboxs_own() {
        use corral_agent::sandbox::Outcome;
        let outcomes = [
            Outcome::Success,
            Outcome::Exit { code: 1 },
            Outcome::OutOfFuel,
            Outcome::MemoryLimit,
            Outcome::Timeout,
            Outcome::StackOverflow,
            Outcome::Trap {
                message: "x".into(),
            },
            Outcome::LinkError {
                message: "x".into(),
            },
            Outcome::InvalidModule {
                message: "x".into(),
            },
            Outcome::Killed,
            Outcome::CompileLimit {
                message: "x".into(),
            },
            Outcome::DiskLimit,
        ];
        for outcome in outcomes {
            let pb = corral_agent::daemon::outcome_to_pb(&outcome);
            assert_eq!(outcome_name(outcome_kind(&pb)), outcome.kind());
        }
        assert_eq!(outcome_name(pb::OutcomeKind::AgentError), "agent_error");
    }
}
