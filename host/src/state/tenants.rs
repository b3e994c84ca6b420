//! Tenants in the state machine: the pending queue of each, what each holds, their settings,
//! and why a pending task waits.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{candidate, request, HostState};
use crate::allocator::{never_fits, Candidate};
use crate::error::HostError;
use crate::partition::Resources;
use crate::scheduler::{total_capacity, Order};
use crate::store::Write;
use crate::task::{Task, TaskId};
use crate::tenant::{Source, TenantChange, TenantSettings};

use super::Effects;

/// The pending tasks of each tenant, each queue in id order (submission order; a retried task
/// keeps its place).
#[derive(Debug, Default)]
pub(super) struct Queues {
    by_tenant: BTreeMap<String, BTreeSet<TaskId>>,
    len: usize,
}

impl Queues {
    pub(super) fn insert(&mut self, tenant: &str, id: TaskId) {
        let queue = match self.by_tenant.get_mut(tenant) {
            Some(queue) => queue,
            None => self.by_tenant.entry(tenant.to_string()).or_default(),
        };
        if queue.insert(id) {
            self.len += 1;
        }
    }

    pub(super) fn remove(&mut self, tenant: &str, id: TaskId) {
        let Some(queue) = self.by_tenant.get_mut(tenant) else {
            return;
        };
        if queue.remove(&id) {
            self.len -= 1;
        }
        if queue.is_empty() {
            self.by_tenant.remove(tenant);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tasks `tenant` has waiting.
    pub(super) fn queued(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).map_or(0, BTreeSet::len)
    }

    /// Each tenant with tasks waiting, and its queue.
    pub(super) fn tenants(&self) -> impl Iterator<Item = (&String, &BTreeSet<TaskId>)> {
        self.by_tenant.iter()
    }

    /// Every waiting task, tenant by tenant.
    pub(super) fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.by_tenant.values().flatten().copied()
    }
}

/// A tenant as `corral tenant list` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantView {
    /// Its name.
    pub tenant: String,
    /// The settings that apply.
    pub settings: TenantSettings,
    /// Where they come from.
    pub source: Source,
    /// What its tasks hold now.
    pub held: Resources,
    /// Its tasks waiting.
    pub queued: u64,
    /// Its weighted dominant share of the cluster now.
    pub dominant_share: f64,
}

impl HostState {
    /// The settings that apply to `tenant`, and where they come from.
    pub fn tenant_settings(&self, tenant: &str) -> (&TenantSettings, Source) {
        if let Some(set) = self.tenant_set.get(tenant) {
            return (set, Source::Set);
        }
        match self.rules.tenants.get(tenant) {
            Some(configured) => (configured, Source::Config),
            None => (&self.default_tenant, Source::Default),
        }
    }

    /// What `tenant`'s tasks hold now.
    pub fn held_by(&self, tenant: &str) -> Resources {
        self.held.get(tenant).copied().unwrap_or_default()
    }

    /// Refuses a new task of `tenant` asking for `resources` when its tenant's queue is at its
    /// cap, or when its tenant's limit could never let it run.
    pub(super) fn admit_for_tenant(
        &self,
        tenant: &str,
        resources: &Resources,
    ) -> Result<(), HostError> {
        let (settings, _) = self.tenant_settings(tenant);
        let queued = self.queues.queued(tenant) as u64;
        if queued >= settings.max_queued {
            return Err(HostError::Exhausted(format!(
                "tenant {tenant} has {queued} tasks waiting, its cap (max_queued {}); submit \
                 more as they start",
                settings.max_queued
            )));
        }
        let share = settings.share();
        if !share.limit.covers(resources) {
            return Err(HostError::FailedPrecondition(format!(
                "tenant {tenant}'s limit ({}) is smaller than what the task asks for ({})",
                shown(&share.limit),
                shown(resources)
            )));
        }
        Ok(())
    }

    /// Changes `tenant`'s settings (`None`: forgets what was set), effective at the next
    /// scheduling round; answers the tenant as it is then.
    pub fn set_tenant(
        &mut self,
        tenant: &str,
        change: Option<TenantChange>,
        fx: &mut Effects,
    ) -> Result<TenantView, HostError> {
        match change {
            Some(change) => {
                let next = change.apply(self.tenant_settings(tenant).0);
                next.validate(tenant).map_err(HostError::InvalidArgument)?;
                fx.writes
                    .push(Write::Tenant(tenant.to_string(), Some(next.clone())));
                self.tenant_set.insert(tenant.to_string(), next);
            }
            None => {
                if let Some(problem) = crate::auth::tenant_problem(tenant) {
                    return Err(HostError::InvalidArgument(problem));
                }
                if self.tenant_set.remove(tenant).is_some() {
                    fx.writes.push(Write::Tenant(tenant.to_string(), None));
                }
            }
        }
        self.dirty = true;
        Ok(self.tenant_view(tenant, &self.total()))
    }

    /// Tenants named in the config, set, or with tasks waiting or placed, by name; only
    /// `only`, when given.
    pub fn tenants(&self, only: Option<&str>) -> Vec<TenantView> {
        let total = self.total();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.extend(self.rules.tenants.keys().map(String::as_str));
        names.extend(self.tenant_set.keys().map(String::as_str));
        names.extend(self.queues.tenants().map(|(t, _)| t.as_str()));
        names.extend(self.held.keys().map(String::as_str));
        match only {
            Some(tenant) => vec![self.tenant_view(tenant, &total)],
            None => names
                .into_iter()
                .map(|t| self.tenant_view(t, &total))
                .collect(),
        }
    }

    fn tenant_view(&self, tenant: &str, total: &Resources) -> TenantView {
        let (settings, source) = self.tenant_settings(tenant);
        let held = self.held_by(tenant);
        TenantView {
            tenant: tenant.to_string(),
            settings: settings.clone(),
            source,
            held,
            queued: self.queues.queued(tenant) as u64,
            dominant_share: settings.share().dominant(&held, total),
        }
    }

    /// The capacity shares are fractions of.
    fn total(&self) -> Resources {
        let candidates: Vec<Candidate<'_>> = self.partitions.values().map(candidate).collect();
        total_capacity(&candidates)
    }

    /// Why each of `tasks` that is PENDING waits, worked out now (tasks read in one call
    /// share the work): its tenant's limit; a constraint or size no current partition
    /// meets; other tenants ahead of it in the fair-share order; or no room. A reason stored
    /// with it (the attempt it retries after) follows.
    pub fn explain(&self, tasks: &mut [Task]) {
        if !tasks
            .iter()
            .any(|t| t.state == crate::task::TaskState::Pending)
        {
            return;
        }
        let candidates: Vec<Candidate<'_>> = self.partitions.values().map(candidate).collect();
        let total = total_capacity(&candidates);
        for task in tasks {
            if task.state != crate::task::TaskState::Pending {
                continue;
            }
            let why = self.why_waiting(task, &candidates, &total);
            task.reason = match task.reason.is_empty() {
                true => why,
                false => format!("{why}; {}", task.reason),
            };
        }
    }

    fn why_waiting(&self, task: &Task, candidates: &[Candidate<'_>], total: &Resources) -> String {
        let tenant = task.spec.tenant.as_str();
        let request = request(&task.spec);
        let (settings, _) = self.tenant_settings(tenant);
        let share = settings.share();
        let held = self.held_by(tenant);
        if !share.allows(&held, &request.resources) {
            return format!(
                "waiting for its tenant's limit: tenant {tenant} holds {} of its limit of {}",
                shown(&held),
                shown(&share.limit)
            );
        }
        if let Some(reason) = never_fits(candidates, &request) {
            return format!("no agent can run it now: {reason}");
        }
        if candidates.iter().any(|c| c.fits(&request)) {
            return "a partition has room for it: it is placed in the next scheduling round".into();
        }
        if self.rules.order == Order::Fair && self.behind_others(tenant, total) {
            return format!(
                "waiting for its fair share: tenants with a lower weighted dominant share come \
                 first (tenant {tenant} holds {}, a weighted dominant share of {:.3})",
                shown(&held),
                share.dominant(&held, total)
            );
        }
        "waiting for capacity: every partition it may use is full".into()
    }

    /// Whether another tenant with work waiting comes before `tenant` in the fair-share order
    /// (guarantees, then weighted dominant share).
    fn behind_others(&self, tenant: &str, total: &Resources) -> bool {
        let rank = |t: &str| {
            let share = self.tenant_settings(t).0.share();
            let held = self.held_by(t);
            (
                u8::from(held.covers(&share.guarantee)),
                share.dominant(&held, total),
            )
        };
        let mine = rank(tenant);
        self.queues
            .tenants()
            .filter(|(t, _)| t.as_str() != tenant)
            .any(|(t, _)| {
                let theirs = rank(t);
                theirs.0 < mine.0 || (theirs.0 == mine.0 && theirs.1 < mine.1)
            })
    }
}

/// Resources as messages show them; "no limit" for an unlimited dimension.
fn shown(r: &Resources) -> String {
    let slots = match r.slots {
        u32::MAX => "any number of slots".to_string(),
        n => format!("{n} slot(s)"),
    };
    let memory = match r.memory_bytes {
        u64::MAX => "any memory".to_string(),
        n => bytesize::ByteSize::b(n).display().iec().to_string(),
    };
    format!("{slots} and {memory}")
}

/// Adds `r` to what `tenant` holds.
pub(super) fn hold(held: &mut HashMap<String, Resources>, tenant: &str, r: &Resources) {
    match held.get_mut(tenant) {
        Some(h) => *h = h.plus(r),
        None => {
            held.insert(tenant.to_string(), *r);
        }
    }
}

/// Takes `r` from what `tenant` holds; a tenant left holding nothing is forgotten.
pub(super) fn release(held: &mut HashMap<String, Resources>, tenant: &str, r: &Resources) {
    if let Some(h) = held.get_mut(tenant) {
        *h = h.minus(r);
        if *h == Resources::default() {
            held.remove(tenant);
        }
    }
}
