//! Inputs as state: which are stored, who uploaded each (a tenant's storage is the sum of the
//! sizes of the inputs it uploaded, each counted whole whoever else has the same bytes), which
//! kept tasks mount each, and when each was last used. An input no kept task mounts is removed
//! once unused for `input_retention`, as a module is.

use std::collections::{BTreeMap, BTreeSet};

use super::{Effects, HostState, Now, MAX_COLLECT};
use crate::error::HostError;
use crate::store::Write;
use crate::task::{InputMount, Task};

/// A stored input, and who uses it.
#[derive(Clone, Debug, Default)]
pub(super) struct InputUse {
    /// Its bytes are stored. One that is not is listed only while kept tasks mount it (tasks
    /// restored after its file was found missing), so that their count is right.
    pub(super) stored: bool,
    pub(super) size: u64,
    /// Kept tasks that mount it.
    pub(super) tasks: u64,
    /// Its last upload, or submit of a task mounting it (ms since the epoch).
    pub(super) last_used_ms: i64,
    /// Times agents fetched it since the host started.
    pub(super) fetches: u64,
}

/// The inputs of the state machine.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    pub(super) by_sha: BTreeMap<String, InputUse>,
    /// The inputs each tenant uploaded.
    pub(super) owned: BTreeMap<String, BTreeSet<String>>,
}

/// One input as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputView {
    /// Its sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Kept tasks that mount it.
    pub tasks: u64,
    /// Agents' fetches since the host started.
    pub fetches: u64,
    /// Its last use (ms since the epoch).
    pub last_used_ms: i64,
}

/// A tenant's inputs and storage, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputsView {
    /// The inputs, by sha256.
    pub inputs: Vec<InputView>,
    /// Bytes its inputs take against its limit.
    pub used: u64,
    /// Its limit (none for an admin's listing of every input).
    pub limit: Option<u64>,
}

/// What a task mounting an input the host does not have (or, for a tenant, that it did not
/// upload) answers.
pub fn unknown_input(sha256: &str) -> HostError {
    HostError::NotFound(format!("no input with sha256 {sha256}: upload it first"))
}

impl HostState {
    /// Whether `tenant` (any, for `None`: an admin) may mount input `sha256`: it is stored
    /// and, for a tenant, that tenant uploaded it.
    pub fn may_use_input(&self, sha256: &str, tenant: Option<&str>) -> bool {
        self.inputs.by_sha.get(sha256).is_some_and(|i| i.stored)
            && tenant.is_none_or(|t| self.inputs.owned.get(t).is_some_and(|s| s.contains(sha256)))
    }

    /// Refuses a task mounting an input its caller may not use.
    pub fn check_inputs(
        &self,
        inputs: &[InputMount],
        tenant: Option<&str>,
    ) -> Result<(), HostError> {
        match inputs
            .iter()
            .find(|i| !self.may_use_input(&i.sha256, tenant))
        {
            Some(missing) => Err(unknown_input(&missing.sha256)),
            None => Ok(()),
        }
    }

    /// Bytes the inputs `tenant` uploaded take.
    pub fn input_storage(&self, tenant: &str) -> u64 {
        self.inputs.owned.get(tenant).map_or(0, |shas| {
            shas.iter()
                .filter_map(|s| self.inputs.by_sha.get(s))
                .map(|i| i.size)
                .sum()
        })
    }

    /// Refuses an upload of `size` bytes (of `sha256`, when known) by `tenant` (`None`: an
    /// admin, whose uploads count against no limit) that would take its inputs past its
    /// storage limit. One it has already is never refused.
    pub fn input_room(
        &self,
        tenant: Option<&str>,
        sha256: Option<&str>,
        size: u64,
    ) -> Result<(), HostError> {
        let Some(tenant) = tenant else { return Ok(()) };
        if sha256.is_some_and(|s| self.may_use_input(s, Some(tenant))) {
            return Ok(());
        }
        let limit = self.tenant_settings(tenant).0.max_input_storage.as_u64();
        let used = self.input_storage(tenant);
        if used.saturating_add(size) > limit {
            return Err(HostError::Exhausted(format!(
                "tenant {tenant}'s inputs take {used} bytes of its {limit}-byte storage limit: \
                 {size} more do not fit (inputs no kept task mounts are removed after the \
                 host's input_retention; an admin can raise the limit with `corral tenant set \
                 {tenant} --max-input-storage`)"
            )));
        }
        Ok(())
    }

    /// Records an upload of input `sha256` (`size` bytes, received and verified) by `tenant`
    /// (`None`: an admin): (whether its bytes are new, to be stored with this change; whether
    /// the uploader had it already). Refused past the tenant's storage limit.
    pub fn input_uploaded(
        &mut self,
        sha256: &str,
        size: u64,
        tenant: Option<&str>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<(bool, bool), HostError> {
        self.input_room(tenant, Some(sha256), size)?;
        let had = self.may_use_input(sha256, tenant);
        let used = self.inputs.by_sha.entry(sha256.to_string()).or_default();
        let new = !used.stored;
        used.stored = true;
        used.size = size;
        used.last_used_ms = used.last_used_ms.max(now.ms);
        if let Some(tenant) = tenant {
            let owned = self.inputs.owned.entry(tenant.to_string()).or_default();
            if owned.insert(sha256.to_string()) {
                fx.writes
                    .push(Write::InputOwner(sha256.to_string(), tenant.to_string()));
            }
        }
        Ok((new, had))
    }

    /// One input the caller may use, as listed.
    pub fn input(&self, sha256: &str, tenant: Option<&str>) -> Result<InputView, HostError> {
        match self.may_use_input(sha256, tenant) {
            true => Ok(self.input_view(sha256, &self.inputs.by_sha[sha256])),
            false => Err(unknown_input(sha256)),
        }
    }

    fn input_view(&self, sha256: &str, used: &InputUse) -> InputView {
        InputView {
            sha256: sha256.to_string(),
            size: used.size,
            tasks: used.tasks,
            fetches: used.fetches,
            last_used_ms: used.last_used_ms,
        }
    }

    /// `tenant`'s inputs and its storage; every stored input for `None`.
    pub fn list_inputs(&self, tenant: Option<&str>) -> InputsView {
        let stored =
            |(sha, used): (&String, &InputUse)| used.stored.then(|| self.input_view(sha, used));
        match tenant {
            None => {
                let inputs: Vec<InputView> = self.inputs.by_sha.iter().filter_map(stored).collect();
                let used = inputs.iter().map(|i| i.size).sum();
                InputsView {
                    inputs,
                    used,
                    limit: None,
                }
            }
            Some(tenant) => {
                let inputs = self
                    .inputs
                    .owned
                    .get(tenant)
                    .into_iter()
                    .flatten()
                    .filter_map(|sha| self.inputs.by_sha.get_key_value(sha))
                    .filter_map(stored)
                    .collect();
                InputsView {
                    inputs,
                    used: self.input_storage(tenant),
                    limit: Some(self.tenant_settings(tenant).0.max_input_storage.as_u64()),
                }
            }
        }
    }

    /// Whether input `sha256` is mounted by a task placed on agent `agent_id` now: the only
    /// inputs an agent may fetch. Counts the fetch when it is.
    pub fn input_fetch(&mut self, agent_id: &str, sha256: &str) -> bool {
        let launched = self.tasks.values().any(|t| {
            t.state.holds_resources()
                && t.agent_id.as_deref() == Some(agent_id)
                && t.spec.inputs.iter().any(|i| i.sha256 == sha256)
        });
        if let Some(used) = self.inputs.by_sha.get_mut(sha256).filter(|_| launched) {
            used.fetches += 1;
        }
        launched
    }

    /// Counts `count` new kept tasks mounting `inputs` (all checked stored), used `now`.
    pub(super) fn inputs_mounted(&mut self, inputs: &[InputMount], count: u64, now: Now) {
        for input in inputs {
            let used = self.inputs.by_sha.entry(input.sha256.clone()).or_default();
            used.tasks += count;
            used.last_used_ms = used.last_used_ms.max(now.ms);
        }
    }

    /// A restored task's inputs: counted, listed unstored when their bytes were not restored.
    pub(super) fn restore_task_inputs(&mut self, task: &Task, now: Now) {
        for input in &task.spec.inputs {
            let used = self
                .inputs
                .by_sha
                .entry(input.sha256.clone())
                .or_insert(InputUse {
                    last_used_ms: now.ms,
                    ..InputUse::default()
                });
            used.tasks += 1;
        }
    }

    /// A removed task's inputs: one task fewer each, used `now`.
    pub(super) fn task_inputs_removed(&mut self, task: &Task, now: Now) {
        for input in &task.spec.inputs {
            if let Some(used) = self.inputs.by_sha.get_mut(&input.sha256) {
                used.tasks = used.tasks.saturating_sub(1);
                used.last_used_ms = used.last_used_ms.max(now.ms);
                if !used.stored && used.tasks == 0 {
                    self.inputs.by_sha.remove(&input.sha256);
                }
            }
        }
    }

    /// Removes inputs no kept task mounts that were unused since `cutoff` (at most
    /// [`MAX_COLLECT`]): their bytes and who uploaded them. Answers how many.
    pub(super) fn collect_inputs(&mut self, cutoff: i64, fx: &mut Effects) -> usize {
        let unused: Vec<String> = self
            .inputs
            .by_sha
            .iter()
            .filter(|(_, used)| used.stored && used.tasks == 0 && used.last_used_ms <= cutoff)
            .map(|(sha, _)| sha.clone())
            .take(MAX_COLLECT)
            .collect();
        for sha in &unused {
            self.inputs.by_sha.remove(sha);
            for owned in self.inputs.owned.values_mut() {
                owned.remove(sha);
            }
            fx.writes.push(Write::ForgetInput(sha.clone()));
        }
        self.inputs.owned.retain(|_, owned| !owned.is_empty());
        unused.len()
    }

    /// Restores the stored inputs (each as used `now`: its last use is not stored) and their
    /// uploaders.
    pub(super) fn restore_inputs(
        &mut self,
        stored: Vec<(String, u64)>,
        owners: Vec<(String, String)>,
        now: Now,
    ) {
        for (sha, size) in stored {
            let used = InputUse {
                stored: true,
                size,
                tasks: 0,
                last_used_ms: now.ms,
                fetches: 0,
            };
            self.inputs.by_sha.insert(sha, used);
        }
        for (sha, tenant) in owners {
            if self.inputs.by_sha.contains_key(&sha) {
                self.inputs.owned.entry(tenant).or_default().insert(sha);
            }
        }
    }
}
