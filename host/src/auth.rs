//! Who is calling: tokens, their digests, and the check every call passes before the host reads
//! its body.
//!
//! A token ([`corral_proto::token`] has its text form) has a role: **admin** (everything),
//! **tenant** (the client API, as one tenant) or **agent** (the agent API: a join token, which
//! registers new agents, or one agent's own credential, which the host gives it at its first
//! registration). The host keeps a [`TokenRecord`] per token, keyed by its public accessor,
//! with the SHA-256 of the token's text and never the text. Records change only through the
//! state machine ([`crate::state::HostState`]), durably, and are published here once on disk
//! ([`Authenticator::put`]); so a token works once its creation is durable, and a revocation
//! is never undone by a failed write.
//!
//! [`Authenticator::authenticate`] is what both services' interceptors call on every request,
//! before any of its body is read: it parses the `authorization` header, finds the record by
//! accessor, compares digests in constant time, checks revocation, expiry and role, and
//! answers the caller's [`Principal`]. Refusals are counted, not logged one by one
//! ([`Authenticator::take_refusals`] feeds the audit log).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use corral_proto::token::{self, Role};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// Longest tenant name, in bytes.
pub const MAX_TENANT_BYTES: usize = 128;

/// The tenant of tasks submitted by an admin who names none.
pub const DEFAULT_TENANT: &str = "default";

/// What is wrong with `name` as a tenant's, if anything: 1 to [`MAX_TENANT_BYTES`] bytes of
/// letters, digits, `-`, `_` and `.`.
pub fn tenant_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TENANT_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then(|| {
        format!(
            "tenant {:?} must be 1 to {MAX_TENANT_BYTES} letters, digits, '-', '_' or '.'",
            crate::convert::shown(name)
        )
    })
}

/// A token as the host keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its public part.
    pub accessor: String,
    /// What it may do.
    pub role: Role,
    /// Tenant tokens: the tenant.
    pub tenant: String,
    /// An agent's credential: its agent. Empty for other tokens, join tokens included.
    pub agent_id: String,
    /// SHA-256 of the token's text.
    pub digest: [u8; 32],
    /// When it was made (ms since the epoch).
    pub created_ms: i64,
    /// When it stops working (0: never).
    pub expires_ms: i64,
    /// When it was last used, to the minute (0: never).
    pub last_used_ms: i64,
    /// When it was revoked (0: it was not).
    pub revoked_ms: i64,
    /// What it is for, as its maker said.
    pub description: String,
    /// An agent's credential: the join token it was given for.
    pub issued_by: String,
}

impl TokenRecord {
    /// Neither revoked nor expired at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        self.revoked_ms == 0 && (self.expires_ms == 0 || now_ms < self.expires_ms)
    }

    /// An agent's own credential (not a join token).
    pub fn is_credential(&self) -> bool {
        self.role == Role::Agent && !self.agent_id.is_empty()
    }
}

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its place in the log; never reused.
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Whose token ("" when none was given, or it could not be read).
    pub accessor: String,
    /// What: `token.create`, `token.revoke`, `token.reset_admin`, `task.kill`,
    /// `agent.register`, `auth.refused`.
    pub action: String,
    /// On what, and how it went.
    pub detail: String,
    /// Times it happened (refusals are counted over a span).
    pub count: u64,
}

/// A new token: its record, and its text, to be shown once.
#[derive(Debug)]
pub struct Minted {
    /// What the host keeps.
    pub record: TokenRecord,
    /// The token, for its holder only.
    pub text: String,
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    // The operating system's generator; without it there is no safe token to give.
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random number generator failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a token's text.
pub fn digest(text: &str) -> [u8; 32] {
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// A new random token of `role`.
pub fn mint(
    role: Role,
    tenant: &str,
    agent_id: &str,
    expires_ms: i64,
    now_ms: i64,
    description: &str,
) -> Minted {
    let accessor = random_hex(token::ACCESSOR_HEX / 2);
    let text = token::compose(role, &accessor, &random_hex(token::SECRET_HEX / 2));
    Minted {
        record: TokenRecord {
            accessor,
            role,
            tenant: tenant.to_string(),
            agent_id: agent_id.to_string(),
            digest: digest(&text),
            created_ms: now_ms,
            expires_ms,
            last_used_ms: 0,
            revoked_ms: 0,
            description: description.to_string(),
            issued_by: String::new(),
        },
        text,
    }
}

/// Which service a call is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `corral.v1.Corral`: admin and tenant tokens.
    Client,
    /// `corral.v1.AgentApi`: agent tokens.
    Agent,
}

/// Why a call was refused before it was read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error(
        "no token: this host requires one (give --token, CORRAL_TOKEN or --token-file, or run \
         `corral login`)"
    )]
    Missing,
    /// Not a token at all, or mistyped.
    #[error("{0}")]
    Malformed(String),
    /// Well formed, but the host has no such token (or its secret is wrong).
    #[error("unknown token {0}: the host has no token with this accessor and secret")]
    Unknown(String),
    /// Revoked.
    #[error("token {0} was revoked")]
    Revoked(String),
    /// Past its expiry.
    #[error("token {0} expired at {1}")]
    Expired(String, String),
    /// A token of a role this service does not take.
    #[error("{0}")]
    WrongRole(String),
}

impl AuthError {
    /// Its kind, for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "no token",
            AuthError::Malformed(_) => "malformed",
            AuthError::Unknown(_) => "unknown",
            AuthError::Revoked(_) => "revoked",
            AuthError::Expired(..) => "expired",
            AuthError::WrongRole(_) => "wrong role",
        }
    }

    /// The status a refused call gets: `UNAUTHENTICATED`, or `PERMISSION_DENIED` for a valid
    /// token of the wrong role.
    pub fn status(&self) -> tonic::Status {
        match self {
            AuthError::WrongRole(m) => tonic::Status::permission_denied(m.clone()),
            other => tonic::Status::unauthenticated(other.to_string()),
        }
    }
}

/// Who a call is from, as its token proves.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Its token's accessor.
    pub accessor: String,
    /// Its token's role.
    pub role: Role,
    /// Tenant tokens: the tenant.
    pub tenant: String,
    /// An agent's credential: the agent. Empty for a join token.
    pub agent_id: String,
    expires_ms: i64,
    revoked: watch::Receiver<bool>,
}

impl Principal {
    /// The tenant it acts as, for a tenant token; `None` for an admin (every tenant).
    pub fn tenant(&self) -> Option<&str> {
        (self.role == Role::Tenant).then_some(self.tenant.as_str())
    }

    /// Resolves once its token is revoked or expires: a stream it opened ends then.
    pub async fn gone(&self) {
        let mut revoked = self.revoked.clone();
        let expiry = async {
            if self.expires_ms == 0 {
                return std::future::pending().await;
            }
            let left = self.expires_ms - crate::state::Now::current().ms;
            tokio::time::sleep(std::time::Duration::from_millis(
                u64::try_from(left).unwrap_or(0),
            ))
            .await;
        };
        tokio::select! {
            _ = revoked.wait_for(|r| *r) => {}
            () = expiry => {}
        }
    }
}

/// Who asks the control plane, as far as it decides: an admin (every tenant) or one tenant, and
/// by which token (for the audit log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The token's accessor ("" for the host itself).
    pub accessor: String,
    /// `None`: an admin, who acts for every tenant.
    pub tenant: Option<String>,
}

impl Caller {
    /// The host itself, or a test: an admin.
    pub fn admin() -> Caller {
        Caller::default()
    }

    /// The tenant it acts as; `None` for an admin.
    pub fn scope(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

impl From<&Principal> for Caller {
    fn from(p: &Principal) -> Caller {
        Caller {
            accessor: p.accessor.clone(),
            tenant: p.tenant().map(str::to_string),
        }
    }
}

struct Entry {
    record: TokenRecord,
    last_used_ms: AtomicI64,
    revoked: watch::Sender<bool>,
}

/// Most distinct (kind, accessor) pairs of refusals counted between two flushes to the audit
/// log; further ones are counted under one key.
const MAX_REFUSAL_KEYS: usize = 1024;

/// Refused calls since the last flush, by (kind, accessor): a flood of bad tokens costs a
/// counter each, never a disk write each.
pub type Refusals = HashMap<(String, String), u64>;

/// The tokens in force, as every call checks them. Shared by the services and the actor,
/// which alone changes it, once a change is durable.
#[derive(Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, Arc<Entry>>>,
    refused: Mutex<Refusals>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Authenticator {
    /// Replaces every token with `records` (the store's, as restored).
    /// Streams opened with a token that is still there go on (a store reopened after a
    /// failure installs what it holds, which is everything published before).
    pub fn install<'a>(&self, records: impl IntoIterator<Item = &'a TokenRecord>) {
        let mut tokens = write(&self.tokens);
        let mut old = std::mem::take(&mut *tokens);
        for record in records {
            // The entry it had keeps its streams' signal.
            if let Some(entry) = old.remove(&record.accessor) {
                tokens.insert(record.accessor.clone(), entry);
            }
            self.put_into(&mut tokens, record.clone());
        }
        // Tokens gone from the store end their streams as revoked ones do.
        for entry in old.into_values() {
            entry.revoked.send_replace(true);
        }
    }

    /// When a token was last used, as calls have shown it (0: never).
    pub fn last_used(&self, accessor: &str) -> i64 {
        read(&self.tokens)
            .get(accessor)
            .map_or(0, |e| e.last_used_ms.load(Ordering::Relaxed))
    }

    /// Adds or replaces one token, as a durable change made it. A revoked one ends the streams
    /// opened with it.
    pub fn put(&self, record: TokenRecord) {
        let mut tokens = write(&self.tokens);
        self.put_into(&mut tokens, record);
    }

    fn put_into(&self, tokens: &mut HashMap<String, Arc<Entry>>, record: TokenRecord) {
        let revoked = record.revoked_ms != 0;
        match tokens.get(&record.accessor) {
            Some(entry) => {
                let entry = Arc::new(Entry {
                    last_used_ms: AtomicI64::new(
                        entry
                            .last_used_ms
                            .load(Ordering::Relaxed)
                            .max(record.last_used_ms),
                    ),
                    revoked: entry.revoked.clone(),
                    record,
                });
                if revoked {
                    entry.revoked.send_replace(true);
                }
                tokens.insert(entry.record.accessor.clone(), entry);
            }
            None => {
                let entry = Arc::new(Entry {
                    last_used_ms: AtomicI64::new(record.last_used_ms),
                    revoked: watch::channel(revoked).0,
                    record,
                });
                tokens.insert(entry.record.accessor.clone(), entry);
            }
        }
    }

    /// Checks a call's token for `api` at `now_ms`: who it is from, or why it is refused (and
    /// counted).
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        api: Api,
        now_ms: i64,
    ) -> Result<Principal, AuthError> {
        let result = self.check(metadata, api, now_ms);
        if let Err((accessor, error)) = &result {
            // A caller can make up accessors at will: only a token the host made (revoked,
            // expired, of the wrong role) is counted by name, so that refusals make at most a
            // few entries per kind and known token however they are sent.
            let accessor = match error {
                AuthError::Missing | AuthError::Malformed(_) | AuthError::Unknown(_) => "",
                _ => accessor.as_str(),
            };
            self.count_refusal(error.kind(), accessor);
        }
        result.map_err(|(_, e)| e)
    }

    fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        api: Api,
        now_ms: i64,
    ) -> Result<Principal, (String, AuthError)> {
        let anonymous = |e| (String::new(), e);
        let header = metadata
            .get(token::AUTHORIZATION)
            .ok_or(anonymous(AuthError::Missing))?;
        let text = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                anonymous(AuthError::Malformed(
                    "malformed authorization header: expected `Bearer <token>`".into(),
                ))
            })?;
        let parsed = token::parse(text).map_err(|m| anonymous(AuthError::Malformed(m)))?;
        let accessor = parsed.accessor.to_string();
        let refuse = |e| (accessor.clone(), e);
        let entry = read(&self.tokens).get(parsed.accessor).cloned();
        let entry = entry.ok_or_else(|| refuse(AuthError::Unknown(accessor.clone())))?;
        let record = &entry.record;
        let same: bool = record.digest.ct_eq(&digest(parsed.text)).into();
        if !same || record.role != parsed.role {
            return Err(refuse(AuthError::Unknown(accessor.clone())));
        }
        if record.revoked_ms != 0 {
            return Err(refuse(AuthError::Revoked(accessor.clone())));
        }
        if record.expires_ms != 0 && now_ms >= record.expires_ms {
            return Err(refuse(AuthError::Expired(
                accessor.clone(),
                crate::convert::time_text(record.expires_ms),
            )));
        }
        let allowed = match api {
            Api::Client => matches!(record.role, Role::Admin | Role::Tenant),
            Api::Agent => record.role == Role::Agent,
        };
        if !allowed {
            let message = match api {
                Api::Client => format!(
                    "token {accessor} is an agent token: it can call only the agent API, not \
                     the client API"
                ),
                Api::Agent => format!(
                    "token {accessor} is a {} token: only agent tokens can call the agent API",
                    record.role.name()
                ),
            };
            return Err(refuse(AuthError::WrongRole(message)));
        }
        // Kept to the minute: a busy token does not write its record on every call.
        let minute = now_ms - now_ms.rem_euclid(60_000);
        entry.last_used_ms.fetch_max(minute, Ordering::Relaxed);
        Ok(Principal {
            accessor,
            role: record.role,
            tenant: record.tenant.clone(),
            agent_id: record.agent_id.clone(),
            expires_ms: record.expires_ms,
            revoked: entry.revoked.subscribe(),
        })
    }

    /// Counts one refused call of `kind` by `accessor` (a token the host made, or ""), for the
    /// audit log's next flush.
    pub fn count_refusal(&self, kind: &str, accessor: &str) {
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = (kind.to_string(), accessor.to_string());
        if refused.len() >= MAX_REFUSAL_KEYS && !refused.contains_key(&key) {
            key = ("other".into(), String::new());
        }
        *refused.entry(key).or_default() += 1;
    }

    /// Tokens used since their record was written: (accessor, last used), for the actor to
    /// write.
    pub fn used(&self) -> Vec<(String, i64)> {
        read(&self.tokens)
            .values()
            .filter_map(|e| {
                let used = e.last_used_ms.load(Ordering::Relaxed);
                (used > e.record.last_used_ms).then(|| (e.record.accessor.clone(), used))
            })
            .collect()
    }

    /// The refusals counted since the last call, cleared.
    pub fn take_refusals(&self) -> Refusals {
        std::mem::take(
            &mut *self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The interceptor of one service: authenticates each call and puts its [`Principal`] in the
/// request's extensions, or refuses it before its body is read.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<Authenticator>,
    api: Api,
    /// The agent API requires a client certificate (mutual TLS; rustls has verified it
    /// against the client CA when the connection was made).
    require_client_cert: bool,
}

impl Gate {
    /// The gate of `api`.
    pub fn new(authenticator: Arc<Authenticator>, api: Api, require_client_cert: bool) -> Self {
        Self {
            authenticator,
            api,
            require_client_cert,
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if self.require_client_cert && !has_client_certificate(&request) {
            return Err(tonic::Status::unauthenticated(
                "the agent API requires a client certificate signed by the host's client CA \
                 (mutual TLS): give the agent --tls-cert and --tls-key",
            ));
        }
        let now = crate::state::Now::current().ms;
        let principal = self
            .authenticator
            .authenticate(request.metadata(), self.api, now)
            .map_err(|e| e.status())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn has_client_certificate(request: &tonic::Request<()>) -> bool {
    request.peer_certs().is_some_and(|certs| !certs.is_empty())
}

/// The principal the gate put in `request`.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("the call passed no authentication gate"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn with(text: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            token::AUTHORIZATION,
            format!("Bearer {text}").parse().unwrap(),
        );
        m
    }

    #[test]
    fn each_way_a_token_fails_gets_its_own_error() {
        let auth = Authenticator::default();
        let tenant = mint(Role::Tenant, "acme", "", 0, 1_000, "");
        let expired = mint(Role::Tenant, "acme", "", 2_000, 1_000, "");
        let mut revoked = mint(Role::Admin, "", "", 0, 1_000, "");
        let agent = mint(Role::Agent, "", "", 0, 1_000, "");
        revoked.record.revoked_ms = 1_500;
        auth.install([
            &tenant.record,
            &expired.record,
            &revoked.record,
            &agent.record,
        ]);
        let now = 3_000;
        let p = auth
            .authenticate(&with(&tenant.text), Api::Client, now)
            .unwrap();
        assert_eq!((p.role, p.tenant()), (Role::Tenant, Some("acme")));
        let e = |m: &MetadataMap, api| auth.authenticate(m, api, now).unwrap_err();
        assert_eq!(e(&MetadataMap::new(), Api::Client), AuthError::Missing);
        assert!(matches!(
            e(&with("nonsense"), Api::Client),
            AuthError::Malformed(_)
        ));
        // A valid checksum but another secret: as the host sees it, unknown.
        let forged = token::compose(Role::Tenant, &tenant.record.accessor, &"0".repeat(64));
        assert!(matches!(
            e(&with(&forged), Api::Client),
            AuthError::Unknown(_)
        ));
        let other = mint(Role::Tenant, "acme", "", 0, 1_000, "");
        assert!(matches!(
            e(&with(&other.text), Api::Client),
            AuthError::Unknown(_)
        ));
        assert!(matches!(
            e(&with(&revoked.text), Api::Client),
            AuthError::Revoked(_)
        ));
        assert!(matches!(
            e(&with(&expired.text), Api::Client),
            AuthError::Expired(..)
        ));
        assert!(matches!(
            e(&with(&agent.text), Api::Client),
            AuthError::WrongRole(_)
        ));
        assert!(matches!(
            e(&with(&tenant.text), Api::Agent),
            AuthError::WrongRole(_)
        ));
        assert_eq!(
            e(&with(&agent.text), Api::Client).status().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            e(&with(&other.text), Api::Client).status().code(),
            tonic::Code::Unauthenticated
        );
        // Counted, not logged one by one; taken once.
        let refusals = auth.take_refusals();
        assert_eq!(refusals.values().sum::<u64>(), 10);
        assert_eq!(refusals[&("no token".to_string(), String::new())], 1);
        assert!(auth.take_refusals().is_empty());
    }

    #[test]
    fn a_token_used_is_kept_to_the_minute_and_reported_once_written() {
        let auth = Authenticator::default();
        let t = mint(Role::Admin, "", "", 0, 0, "");
        auth.install([&t.record]);
        assert!(auth.used().is_empty());
        auth.authenticate(&with(&t.text), Api::Client, 125_000)
            .unwrap();
        assert_eq!(auth.used(), [(t.record.accessor.clone(), 120_000)]);
        let mut written = t.record.clone();
        written.last_used_ms = 120_000;
        auth.put(written);
        assert!(auth.used().is_empty());
    }

    #[tokio::test]
    async fn revoking_a_token_ends_what_its_principal_waits_on() {
        let auth = Authenticator::default();
        let t = mint(Role::Tenant, "acme", "", 0, 0, "");
        auth.install([&t.record]);
        let p = auth.authenticate(&with(&t.text), Api::Client, 1).unwrap();
        let gone = tokio::spawn(async move { p.gone().await });
        let mut revoked = t.record.clone();
        revoked.revoked_ms = 2;
        auth.put(revoked);
        tokio::time::timeout(std::time::Duration::from_secs(5), gone)
            .await
            .expect("the principal saw its revocation")
            .unwrap();
    }

    #[tokio::test]
    async fn a_token_that_expires_ends_the_streams_opened_with_it() {
        let auth = Authenticator::default();
        let now = crate::state::Now::current().ms;
        let t = mint(Role::Tenant, "acme", "", now + 200, now, "");
        auth.install([&t.record]);
        let p = auth.authenticate(&with(&t.text), Api::Client, now).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), p.gone())
            .await
            .expect("the stream outlived its token's expiry");
        let e = auth
            .authenticate(&with(&t.text), Api::Client, now + 200)
            .unwrap_err();
        assert!(matches!(e, AuthError::Expired(..)), "{e:?}");
    }

    #[tokio::test]
    async fn installing_what_the_store_holds_keeps_the_streams_of_tokens_still_there() {
        let auth = Authenticator::default();
        let kept = mint(Role::Tenant, "acme", "", 0, 0, "");
        let dropped = mint(Role::Tenant, "acme", "", 0, 0, "");
        auth.install([&kept.record, &dropped.record]);
        let watch = |t: &Minted| {
            let p = auth.authenticate(&with(&t.text), Api::Client, 1).unwrap();
            tokio::spawn(async move { p.gone().await })
        };
        let (stays, ends) = (watch(&kept), watch(&dropped));
        // A store reopened after a failure: the same token comes back, the other does not.
        auth.install([&kept.record]);
        tokio::time::timeout(std::time::Duration::from_secs(5), ends)
            .await
            .expect("a token gone from the store ended its stream")
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !stays.is_finished(),
            "a reopened store ended a live token's stream"
        );
        stays.abort();
    }

    #[test]
    fn tenant_names_are_bounded_and_plain() {
        assert!(tenant_problem("acme-ml_2.eu").is_none());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(tenant_problem(bad).is_some(), "{bad:?}");
        }
    }
}
