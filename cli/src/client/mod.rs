//! The client commands: `corral submit`, `tasks`, `task get|kill|output|watch`, `agents`,
//! `partitions`. They speak only the `corral.v1.Corral` contract (`corral-proto`) to the host
//! named by `--host` or `CORRAL_HOST`; what they print as JSON is the serde types of
//! [`json`], and the contract's enums are named in one place, here.

pub mod agents;
pub mod jobs;
pub mod json;
pub mod profile;
pub mod submit;
pub mod task;
pub mod tasks;
pub mod tenants;
pub mod tokens;

use anyhow::anyhow;
use corral_proto::pb;
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

/// The contract's name of an enum value without its prefix: `TASK_STATE_PENDING` is
/// `PENDING`.
fn unprefixed<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// A task state's name as the CLI shows it (`PENDING`); `UNKNOWN` for a number this client
/// does not know.
pub fn state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state) {
        Ok(pb::TaskState::Unspecified) | Err(_) => "UNKNOWN",
        Ok(state) => unprefixed(state.as_str_name(), "TASK_STATE_"),
    }
}

/// The task state `--state` names, in any case (`pending`, `RUNNING`).
pub fn parse_state(name: &str) -> Result<pb::TaskState, String> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", name.to_ascii_uppercase()))
        .filter(|s| *s != pb::TaskState::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown task state {name:?}: expected one of pending, assigned, running, \
                 finished, failed, killed, lost"
            )
        })
}

/// Whether a task in `state` has ended.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Finished
            | pb::TaskState::Failed
            | pb::TaskState::Killed
            | pb::TaskState::Lost)
    )
}

/// An outcome kind as JSON and summaries name it: `out_of_fuel`.
pub fn outcome_name(kind: pb::OutcomeKind) -> String {
    unprefixed(kind.as_str_name(), "OUTCOME_KIND_").to_ascii_lowercase()
}

/// An outcome's kind; unspecified for a number this client does not know.
pub fn outcome_kind(outcome: &pb::Outcome) -> pb::OutcomeKind {
    pb::OutcomeKind::try_from(outcome.kind).unwrap_or(pb::OutcomeKind::Unspecified)
}

/// An agent's or a partition's state as the CLI shows it (`active`, `draining`).
pub fn lower_name(name: &str, prefix: &str) -> String {
    match unprefixed(name, prefix) {
        "UNSPECIFIED" => "unknown".into(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
