//! Who may do what, as state: tokens, agents' credentials, which tenants uploaded each module,
//! what a tenant sees of the tasks, and the audit log. Every change is durable before the
//! [`Authenticator`](crate::auth::Authenticator) is told of it (through
//! [`Effects::tokens`]).

use corral_proto::token::Role;

use super::{Effects, HostState, Now, MAX_COLLECT};
use crate::auth::{AuditEntry, TokenRecord};
use crate::error::HostError;
use crate::store::{ModuleFacts, Write};
use crate::task::{Task, TaskId};

/// Most entries of the audit log kept, whatever their age: the oldest go first. Entries of
/// refused calls count apart, against as many again, so that they never push out the rest.
pub const MAX_AUDIT_ENTRIES: usize = 100_000;

impl HostState {
    // ----- tokens -------------------------------------------------------------------------

    /// Every token, by accessor.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    fn put_token(&mut self, record: TokenRecord, fx: &mut Effects) {
        fx.writes.push(Write::Token(record.clone()));
        fx.tokens.push(record.clone());
        self.tokens.insert(record.accessor.clone(), record);
    }

    /// Records a token made by `by` (an accessor; "" for the host itself).
    pub fn create_token(&mut self, record: TokenRecord, by: &str, now: Now, fx: &mut Effects) {
        let detail = describe(&record);
        self.put_token(record, fx);
        self.audit("token.create", by, detail, 1, now, fx);
    }

    /// Revokes a token; revoking one revoked already changes nothing.
    pub fn revoke_token(
        &mut self,
        accessor: &str,
        by: &str,
        now: Now,
        fx: &mut Effects,
    ) -> Result<TokenRecord, HostError> {
        let record = self
            .tokens
            .get(accessor)
            .ok_or_else(|| HostError::NotFound(format!("no token with accessor {accessor:?}")))?;
        if record.revoked_ms != 0 {
            return Ok(record.clone());
        }
        let mut record = record.clone();
        record.revoked_ms = now.ms;
        let detail = describe(&record);
        self.put_token(record.clone(), fx);
        self.audit("token.revoke", by, detail, 1, now, fx);
        Ok(record)
    }

    /// Revokes every admin token and records `fresh`: `corral host --reset-admin-token`.
    pub fn reset_admin(&mut self, fresh: TokenRecord, now: Now, fx: &mut Effects) {
        let admins: Vec<String> = self
            .tokens
            .values()
            .filter(|t| t.role == Role::Admin && t.revoked_ms == 0)
            .map(|t| t.accessor.clone())
            .collect();
        for accessor in &admins {
            let mut record = self.tokens[accessor].clone();
            record.revoked_ms = now.ms;
            self.put_token(record, fx);
        }
        let detail = format!(
            "revoked {} admin token(s), made {}",
            admins.len(),
            fresh.accessor
        );
        self.put_token(fresh, fx);
        self.audit("token.reset_admin", "", detail, 1, now, fx);
    }

    /// Records a credential's first use (its agent attached with it), durably with the attach:
    /// from then on its join token cannot ask for the id again.
    pub fn credential_used(&mut self, accessor: &str, now: Now, fx: &mut Effects) {
        if self
            .tokens
            .get(accessor)
            .is_some_and(|t| t.last_used_ms == 0)
        {
            let minute = now.ms - now.ms.rem_euclid(60_000);
            self.tokens_used(&[(accessor.to_string(), minute.max(1))], fx);
        }
    }

    /// Records when tokens were last used (each to the minute, as the authenticator saw it).
    pub fn tokens_used(&mut self, used: &[(String, i64)], fx: &mut Effects) {
        for (accessor, at) in used {
            let Some(record) = self.tokens.get(accessor) else {
                continue;
            };
            if *at > record.last_used_ms {
                let mut record = record.clone();
                record.last_used_ms = *at;
                self.put_token(record, fx);
            }
        }
    }

    /// The live credential of agent `agent_id`, if it has one.
    pub fn credential_of(&self, agent_id: &str, now: Now) -> Option<&TokenRecord> {
        self.tokens
            .values()
            .find(|t| t.is_credential() && t.agent_id == agent_id && t.live(now.ms))
    }

    /// Whether a new agent registering with join token `by` may have id `agent_id`: `Ok` with
    /// the credential to retire when it is given its own, or why not (the caller counts the
    /// refusal, as the gate counts its own: never a write per refused call). An id is another
    /// agent's when a credential was ever bound to it (a revoked one retires the id), or, for
    /// an agent registered before tokens, while it is attached or holds tasks. One exception:
    /// the same join token may ask again for an id whose credential was never used (neither
    /// on record nor, as `used` tells, in the calls seen since), as an agent does whose answer
    /// was lost; that credential is retired when the new one is given ([`Self::claim_agent`]).
    pub fn may_join(
        &self,
        agent_id: &str,
        by: &str,
        used: impl Fn(&str) -> bool,
        now: Now,
    ) -> Result<Option<String>, HostError> {
        let held = self
            .tokens
            .values()
            .filter(|t| t.is_credential() && t.agent_id == agent_id)
            // The live one, if any (there is at most one), else the last revoked.
            .max_by_key(|t| (t.live(now.ms), t.created_ms));
        let reason = match held {
            Some(held)
                if held.live(now.ms)
                    && !held.issued_by.is_empty()
                    && held.issued_by == by
                    && held.last_used_ms == 0
                    && !used(&held.accessor) =>
            {
                return Ok(Some(held.accessor.clone()));
            }
            Some(held) if held.revoked_ms != 0 => format!(
                "agent id {agent_id} was retired when its credential {} was revoked: start \
                 the agent under a new --id",
                held.accessor
            ),
            Some(held) => format!(
                "agent id {agent_id} belongs to a registered agent: a join token cannot claim \
                 it (that agent registers with its own credential; to retire it, revoke that \
                 credential with `corral token revoke {}`)",
                held.accessor
            ),
            None if self.attached.contains_key(agent_id)
                || self.tasks.values().any(|t| {
                    t.state.holds_resources() && t.agent_id.as_deref() == Some(agent_id)
                }) =>
            {
                format!(
                    "agent id {agent_id} is in use by an agent that registered without a \
                     credential: a join token cannot claim it while that agent is attached or \
                     holds tasks"
                )
            }
            None => return Ok(None),
        };
        Err(HostError::PermissionDenied(reason))
    }

    /// Gives agent `agent_id`, registered with join token `by`, its own credential, retiring
    /// the unused one it was given before, if any ([`Self::may_join`]).
    pub fn claim_agent(
        &mut self,
        agent_id: &str,
        credential: TokenRecord,
        retire: Option<String>,
        by: &str,
        now: Now,
        fx: &mut Effects,
    ) {
        if let Some(old) = retire.and_then(|a| self.tokens.get(&a).cloned()) {
            let mut old = old;
            old.revoked_ms = now.ms;
            self.put_token(old, fx);
        }
        let detail = format!(
            "agent {agent_id} joined; its credential is {}",
            credential.accessor
        );
        self.put_token(credential, fx);
        self.audit("agent.register", by, detail, 1, now, fx);
    }

    // ----- the audit log ------------------------------------------------------------------

    /// Appends to the audit log.
    pub fn audit(
        &mut self,
        action: &str,
        accessor: &str,
        detail: String,
        count: u64,
        now: Now,
        fx: &mut Effects,
    ) {
        self.audit_seq += 1;
        let entry = AuditEntry {
            seq: self.audit_seq,
            at_ms: now.ms,
            accessor: accessor.to_string(),
            action: action.to_string(),
            detail,
            count,
        };
        let kept = match action {
            "auth.refused" => &mut self.refusals_kept,
            _ => &mut self.audit_kept,
        };
        kept.push_back((entry.seq, entry.at_ms));
        fx.writes.push(Write::Audit(entry));
    }

    /// Removes the audit log's entries past its retention, or past [`MAX_AUDIT_ENTRIES`]:
    /// answers how many.
    pub(super) fn collect_audit(&mut self, now: Now, fx: &mut Effects) -> usize {
        let cutoff = now.ms.saturating_sub(self.rules.audit_retention_ms);
        let mut gone = Vec::new();
        for kept in [&mut self.audit_kept, &mut self.refusals_kept] {
            while let Some(&(seq, at)) = kept.front() {
                if (at > cutoff && kept.len() <= MAX_AUDIT_ENTRIES) || gone.len() >= MAX_COLLECT {
                    break;
                }
                kept.pop_front();
                gone.push(seq);
            }
        }
        let removed = gone.len();
        if !gone.is_empty() {
            fx.writes.push(Write::ForgetAudit(gone));
        }
        removed
    }

    // ----- what a tenant sees -------------------------------------------------------------

    /// Task `id` as `tenant` may see it (every task for `None`, an admin): another tenant's
    /// task is answered exactly as one that does not exist.
    pub fn get_as(&self, id: TaskId, tenant: Option<&str>) -> Result<&Task, HostError> {
        let task = self.get(id)?;
        match tenant {
            Some(tenant) if task.spec.tenant != tenant => Err(self.missing(id)),
            _ => Ok(task),
        }
    }

    /// Whether `tenant` (any, for `None`) may run module `sha256`: it is stored and, for a
    /// tenant, that tenant uploaded it.
    pub fn may_use_module(&self, sha256: &str, tenant: Option<&str>) -> bool {
        self.has_module(sha256)
            && tenant.is_none_or(|t| {
                self.module_owners
                    .contains(&(sha256.to_string(), t.to_string()))
            })
    }

    /// Records an upload by `tenant` (`None`: an admin) of a module already admitted: whether
    /// its binary is new (to be written with this change), and whether the uploader had it
    /// already (for an admin: whether the host had it).
    pub fn module_uploaded(
        &mut self,
        sha256: &str,
        facts: ModuleFacts,
        tenant: Option<&str>,
        now: Now,
        fx: &mut Effects,
    ) -> (bool, bool) {
        let had = self.may_use_module(sha256, tenant);
        let new = self.module_stored(sha256, facts, now);
        if let Some(tenant) = tenant {
            let key = (sha256.to_string(), tenant.to_string());
            if !self.module_owners.contains(&key) {
                fx.writes
                    .push(Write::ModuleOwner(key.0.clone(), key.1.clone()));
                self.module_owners.insert(key);
            }
        }
        (new, had)
    }

    /// Whether module `sha256` is that of a task placed on agent `agent_id` now: the only
    /// modules an agent may fetch.
    pub fn launched_module(&self, agent_id: &str, sha256: &str) -> bool {
        self.tasks.values().any(|t| {
            t.state.holds_resources()
                && t.agent_id.as_deref() == Some(agent_id)
                && t.spec.module_sha256 == sha256
        })
    }

    /// Records a kill by `by` in the audit log.
    pub fn audit_kill(&mut self, task: &Task, by: &str, now: Now, fx: &mut Effects) {
        let detail = format!("task {} of tenant {}", task.id, task.spec.tenant);
        self.audit("task.kill", by, detail, 1, now, fx);
    }
}

/// A token as the audit log names it.
fn describe(t: &TokenRecord) -> String {
    let mut text = format!("{} token {}", t.role.name(), t.accessor);
    if !t.tenant.is_empty() {
        text.push_str(&format!(" of tenant {}", t.tenant));
    }
    if !t.agent_id.is_empty() {
        text.push_str(&format!(" of agent {}", t.agent_id));
    }
    text
}
