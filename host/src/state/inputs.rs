//! Inputs as state: which are stored, who uploaded each (a tenant's storage is the sum of what
//! the inputs it uploaded take, each counted whole whoever else has the same bytes), which kept
//! tasks mount each, and when each was last used. An input no kept task mounts is removed once
//! unused for `input_retention`, as a module is. What a tenant is shown of an input is its own
//! use of it (its tasks, its agents' fetches, its last use), never another tenant's.

use std::collections::BTreeMap;

use super::{Effects, HostState, Now, MAX_COLLECT};
use crate::error::HostError;
use crate::store::Write;
use crate::task::{InputMount, Task};

/// Most inputs one tenant may have: each is a file and a record, whatever its size.
pub const MAX_INPUTS_PER_TENANT: usize = 10_000;
/// What an input takes of its tenant's storage at least: a small file still takes a block.
pub const MIN_INPUT_CHARGE: u64 = 4096;
/// Most inputs one listing shows (an admin's of every input is cut there, and says so).
pub const MAX_LISTED_INPUTS: usize = 10_000;

/// A stored input, and who uses it.
#[derive(Clone, Debug, Default)]
pub(super) struct InputUse {
    /// Its bytes are stored. One that is not is listed only while kept tasks mount it (tasks
    /// restored after its file was found missing, or whose copy was found damaged), so that
    /// their count is right.
    pub(super) stored: bool,
    pub(super) size: u64,
    /// Kept tasks that mount it, by tenant.
    pub(super) tasks: BTreeMap<String, u64>,
    /// Its last upload, or submit of a task mounting it (ms since the epoch): when it may go.
    pub(super) last_used_ms: i64,
    /// Agents' fetches since the host started, by the tenant of the task they were for.
    pub(super) fetches: BTreeMap<String, u64>,
    /// Which copy of its bytes is stored (a new one each time they are stored), so that a
    /// report of a damaged copy is not held against the next.
    pub(super) generation: u64,
}

impl InputUse {
    pub(super) fn tasks(&self) -> u64 {
        self.tasks.values().sum()
    }
}

/// The inputs of the state machine.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    pub(super) by_sha: BTreeMap<String, InputUse>,
    /// The inputs each tenant uploaded, with its last use of each.
    pub(super) owned: BTreeMap<String, BTreeMap<String, i64>>,
    /// The last copy's generation given.
    pub(super) generations: u64,
}

/// One input as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputView {
    /// Its sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Kept tasks that mount it (a tenant's own).
    pub tasks: u64,
    /// Agents' fetches since the host started (for a tenant's own tasks).
    pub fetches: u64,
    /// Its last use (a tenant's own; ms since the epoch).
    pub last_used_ms: i64,
}

/// A tenant's inputs and storage, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputsView {
    /// The inputs, by sha256 (at most [`MAX_LISTED_INPUTS`]).
    pub inputs: Vec<InputView>,
    /// Bytes its inputs take against its limit (every input's size, for an admin's listing).
    pub used: u64,
    /// Its limit (none for an admin's listing of every input).
    pub limit: Option<u64>,
    /// More inputs than were listed.
    pub truncated: bool,
}

/// What a task mounting an input the host does not have (or, for a tenant, that it did not
/// upload) answers.
pub fn unknown_input(sha256: &str) -> HostError {
    HostError::NotFound(format!("no input with sha256 {sha256}: upload it first"))
}

/// What an input of `size` bytes takes of its tenant's storage.
fn charge(size: u64) -> u64 {
    size.max(MIN_INPUT_CHARGE)
}

impl HostState {
    /// Whether `tenant` (any, for `None`: an admin) may mount input `sha256`: it is stored
    /// and, for a tenant, that tenant uploaded it.
    pub fn may_use_input(&self, sha256: &str, tenant: Option<&str>) -> bool {
        self.inputs.by_sha.get(sha256).is_some_and(|i| i.stored)
            && tenant.is_none_or(|t| {
                self.inputs
                    .owned
                    .get(t)
                    .is_some_and(|s| s.contains_key(sha256))
            })
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

    /// What the inputs `tenant` uploaded take of its storage.
    pub fn input_storage(&self, tenant: &str) -> u64 {
        self.inputs.owned.get(tenant).map_or(0, |shas| {
            shas.keys()
                .filter_map(|s| self.inputs.by_sha.get(s))
                .map(|i| charge(i.size))
                .sum()
        })
    }

    /// The size of input `sha256` when `tenant` (`None`: an admin) has it already; else
    /// refuses an upload of `size` bytes by `tenant` that would take its inputs past its
    /// storage limit or their number past [`MAX_INPUTS_PER_TENANT`] (an admin's count against
    /// no limit).
    pub fn input_room(
        &self,
        tenant: Option<&str>,
        sha256: Option<&str>,
        size: u64,
    ) -> Result<Option<u64>, HostError> {
        if let Some(sha) = sha256.filter(|s| self.may_use_input(s, tenant)) {
            return Ok(Some(self.inputs.by_sha[sha].size));
        }
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let owned = self.inputs.owned.get(tenant).map_or(0, BTreeMap::len);
        if owned >= MAX_INPUTS_PER_TENANT {
            return Err(HostError::Exhausted(format!(
                "tenant {tenant} has {owned} inputs, the most a tenant may have: inputs no \
                 kept task mounts are removed after the host's input_retention"
            )));
        }
        let limit = self.tenant_settings(tenant).0.max_input_storage.as_u64();
        let used = self.input_storage(tenant);
        if used.saturating_add(charge(size)) > limit {
            return Err(HostError::Exhausted(format!(
                "tenant {tenant}'s inputs take {used} bytes of its {limit}-byte storage limit: \
                 {size} more do not fit (inputs no kept task mounts are removed after the \
                 host's input_retention; an admin can raise the limit with `corral tenant set \
                 {tenant} --max-input-storage`)"
            )));
        }
        Ok(None)
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
        let had = self.input_room(tenant, Some(sha256), size)?.is_some();
        let used = self.inputs.by_sha.entry(sha256.to_string()).or_default();
        let new = !used.stored;
        if new {
            self.inputs.generations += 1;
            used.generation = self.inputs.generations;
        }
        used.stored = true;
        used.size = size;
        used.last_used_ms = used.last_used_ms.max(now.ms);
        if let Some(tenant) = tenant {
            let owned = self.inputs.owned.entry(tenant.to_string()).or_default();
            if owned.insert(sha256.to_string(), now.ms).is_none() {
                fx.writes
                    .push(Write::InputOwner(sha256.to_string(), tenant.to_string()));
            }
        }
        Ok((new, had))
    }

    /// One input the caller may use, as listed; asking counts as a use (a client asks
    /// before it submits tasks mounting it).
    pub fn input(
        &mut self,
        sha256: &str,
        tenant: Option<&str>,
        now: Now,
    ) -> Result<InputView, HostError> {
        if !self.may_use_input(sha256, tenant) {
            return Err(unknown_input(sha256));
        }
        self.input_used(sha256, tenant, now);
        Ok(self.input_view(sha256, tenant))
    }

    /// Counts an ask for input `sha256` by `tenant` (an upload of bytes it has) as a use.
    pub fn input_used(&mut self, sha256: &str, tenant: Option<&str>, now: Now) {
        if let Some(used) = self.inputs.by_sha.get_mut(sha256) {
            used.last_used_ms = used.last_used_ms.max(now.ms);
        }
        if let Some(last) = tenant
            .and_then(|t| self.inputs.owned.get_mut(t))
            .and_then(|owned| owned.get_mut(sha256))
        {
            *last = (*last).max(now.ms);
        }
    }

    /// Input `sha256` (listed) as `tenant` sees it: its own tasks, fetches and last use; all
    /// of them for an admin.
    fn input_view(&self, sha256: &str, tenant: Option<&str>) -> InputView {
        let used = &self.inputs.by_sha[sha256];
        let (tasks, fetches, last_used_ms) = match tenant {
            None => (used.tasks(), used.fetches.values().sum(), used.last_used_ms),
            Some(t) => (
                used.tasks.get(t).copied().unwrap_or(0),
                used.fetches.get(t).copied().unwrap_or(0),
                self.inputs
                    .owned
                    .get(t)
                    .and_then(|o| o.get(sha256))
                    .copied()
                    .unwrap_or(0),
            ),
        };
        InputView {
            sha256: sha256.to_string(),
            size: used.size,
            tasks,
            fetches,
            last_used_ms,
        }
    }

    /// `tenant`'s inputs and its storage; every stored input for `None`. At most
    /// [`MAX_LISTED_INPUTS`].
    pub fn list_inputs(&self, tenant: Option<&str>) -> InputsView {
        let shas: Vec<&String> = match tenant {
            None => self
                .inputs
                .by_sha
                .iter()
                .filter(|(_, used)| used.stored)
                .map(|(sha, _)| sha)
                .collect(),
            Some(t) => self
                .inputs
                .owned
                .get(t)
                .into_iter()
                .flat_map(BTreeMap::keys)
                .filter(|sha| self.inputs.by_sha.get(*sha).is_some_and(|u| u.stored))
                .collect(),
        };
        let truncated = shas.len() > MAX_LISTED_INPUTS;
        let inputs = shas
            .into_iter()
            .take(MAX_LISTED_INPUTS)
            .map(|sha| self.input_view(sha, tenant))
            .collect();
        let (used, limit) = match tenant {
            None => (
                self.inputs
                    .by_sha
                    .values()
                    .filter(|u| u.stored)
                    .map(|u| u.size)
                    .sum(),
                None,
            ),
            Some(t) => (
                self.input_storage(t),
                Some(self.tenant_settings(t).0.max_input_storage.as_u64()),
            ),
        };
        InputsView {
            inputs,
            used,
            limit,
            truncated,
        }
    }

    /// Whether input `sha256` is stored and mounted by a task placed on agent `agent_id` now:
    /// the only inputs an agent may fetch. Counts the fetch, for that task's tenant, and
    /// answers the stored copy's generation, when it is.
    pub fn input_fetch(&mut self, agent_id: &str, sha256: &str) -> Option<u64> {
        let tenant = self
            .tasks
            .values()
            .find(|t| {
                t.state.holds_resources()
                    && t.agent_id.as_deref() == Some(agent_id)
                    && t.spec.inputs.iter().any(|i| i.sha256 == sha256)
            })
            .map(|t| t.spec.tenant.clone());
        let used = self.inputs.by_sha.get_mut(sha256).filter(|u| u.stored)?;
        *used.fetches.entry(tenant?).or_default() += 1;
        Some(used.generation)
    }

    /// Copy `generation` of input `sha256` was found damaged (its bytes hash to something
    /// else): unless another copy is stored since, the input is no longer stored, nor
    /// anyone's, so that the next upload stores it again. Its kept tasks still count it.
    pub fn input_damaged(&mut self, sha256: &str, generation: u64, fx: &mut Effects) {
        let Some(used) = self
            .inputs
            .by_sha
            .get_mut(sha256)
            .filter(|u| u.stored && u.generation == generation)
        else {
            return;
        };
        used.stored = false;
        for owned in self.inputs.owned.values_mut() {
            owned.remove(sha256);
        }
        self.inputs.owned.retain(|_, owned| !owned.is_empty());
        if self.inputs.by_sha[sha256].tasks() == 0 {
            self.inputs.by_sha.remove(sha256);
        }
        fx.writes.push(Write::ForgetInput(sha256.to_string()));
    }

    /// Counts `count` new kept tasks of `tenant` mounting `inputs` (all checked stored), used
    /// `now`.
    pub(super) fn inputs_mounted(
        &mut self,
        tenant: &str,
        inputs: &[InputMount],
        count: u64,
        now: Now,
    ) {
        for input in inputs {
            let used = self.inputs.by_sha.entry(input.sha256.clone()).or_default();
            *used.tasks.entry(tenant.to_string()).or_default() += count;
            self.input_used(&input.sha256, Some(tenant), now);
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
            *used.tasks.entry(task.spec.tenant.clone()).or_default() += 1;
        }
    }

    /// A removed task's inputs: one task fewer each, used `now`.
    pub(super) fn task_inputs_removed(&mut self, task: &Task, now: Now) {
        for input in &task.spec.inputs {
            if let Some(used) = self.inputs.by_sha.get_mut(&input.sha256) {
                if let Some(n) = used.tasks.get_mut(&task.spec.tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        used.tasks.remove(&task.spec.tenant);
                    }
                }
                used.last_used_ms = used.last_used_ms.max(now.ms);
                if !used.stored && used.tasks.is_empty() {
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
            .filter(|(_, used)| used.stored && used.tasks.is_empty() && used.last_used_ms <= cutoff)
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
            self.inputs.generations += 1;
            let used = InputUse {
                stored: true,
                size,
                last_used_ms: now.ms,
                generation: self.inputs.generations,
                ..InputUse::default()
            };
            self.inputs.by_sha.insert(sha, used);
        }
        for (sha, tenant) in owners {
            if self.inputs.by_sha.contains_key(&sha) {
                self.inputs
                    .owned
                    .entry(tenant)
                    .or_default()
                    .insert(sha, now.ms);
            }
        }
    }
}
