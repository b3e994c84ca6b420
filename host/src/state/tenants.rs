//! Tenants in the state machine: the pending queue of each, what each holds, their settings,
//! and why a pending task waits.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{candidate, request, HostState};
use crate::allocator::{never_fits, Candidate};
use crate::error::HostError;
use crate::partition::Resources;
use crate::scheduler::{total_capacity, Order};
use crate::store::Write;
use crate::task::{Task, TaskId, TaskSpec, TaskState};
use crate::tenant::{Source, TenantChange, TenantSettings};

use super::{Effects, Now};

/// The pending tasks of each tenant, each queue in id order (submission order; a retried task
/// keeps its place), with the sizes its tasks ask for.
#[derive(Debug, Default)]
pub(super) struct Queues {
    by_tenant: BTreeMap<String, Queue>,
    len: usize,
}

/// One tenant's pending tasks.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// The id of each shape (what the scheduler decides by: memory, fuel, labels,
    /// constraints) among them.
    shapes: BTreeMap<Shape, u64>,
    /// The tasks of each shape, in queue order: the scheduler reads a shape until one of its
    /// tasks does not fit, since the rest would not either.
    groups: HashMap<u64, BTreeSet<TaskId>>,
    /// (first task, shape) of each shape, in order: the scheduler reads a shape only once its
    /// first task is the tenant's next.
    firsts: BTreeSet<(TaskId, u64)>,
    next_shape: u64,
    len: usize,
    /// How many of them ask for each amount of memory, and of fuel: the smallest of each
    /// tells the scheduler when none of them can fit the tenant's limit or budget.
    memory: BTreeMap<u64, u32>,
    fuel: BTreeMap<u64, u32>,
}

/// What the scheduler decides a task's placement by, tenant aside.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Shape {
    memory: u64,
    fuel: u64,
    labels: BTreeMap<String, String>,
    constraints: BTreeMap<String, String>,
}

impl Shape {
    pub(super) fn of(spec: &TaskSpec) -> Self {
        Self {
            memory: spec.limits.memory_bytes,
            fuel: spec.limits.fuel,
            labels: spec.labels.clone(),
            constraints: spec.constraints.clone(),
        }
    }
}

impl Queue {
    /// The least memory and the least fuel any of its tasks asks for.
    pub(super) fn smallest(&self) -> (u64, u64) {
        let least = |sizes: &BTreeMap<u64, u32>| sizes.keys().next().copied().unwrap_or(0);
        (least(&self.memory), least(&self.fuel))
    }

    /// Its tasks by shape, each with its first task, in the order of those.
    pub(super) fn groups(&self) -> impl Iterator<Item = (TaskId, &BTreeSet<TaskId>)> {
        self.firsts
            .iter()
            .map(|(first, shape)| (*first, &self.groups[shape]))
    }

    /// Each shape with its tasks.
    #[cfg(test)]
    pub(super) fn shapes(&self) -> impl Iterator<Item = (&Shape, &BTreeSet<TaskId>)> {
        self.shapes
            .iter()
            .map(|(shape, id)| (shape, &self.groups[id]))
    }

    /// Keeps `firsts` right after group `shape`'s first task went from `before` to `after`.
    fn first_moved(&mut self, shape: u64, before: Option<TaskId>, after: Option<TaskId>) {
        if before != after {
            if let Some(b) = before {
                self.firsts.remove(&(b, shape));
            }
            if let Some(a) = after {
                self.firsts.insert((a, shape));
            }
        }
    }
}

fn count_in(sizes: &mut BTreeMap<u64, u32>, size: u64) {
    *sizes.entry(size).or_default() += 1;
}

fn count_out(sizes: &mut BTreeMap<u64, u32>, size: u64) {
    if let Some(n) = sizes.get_mut(&size) {
        *n -= 1;
        if *n == 0 {
            sizes.remove(&size);
        }
    }
}

impl Queues {
    pub(super) fn insert(&mut self, spec: &TaskSpec, id: TaskId) {
        let queue = match self.by_tenant.get_mut(&spec.tenant) {
            Some(queue) => queue,
            None => self.by_tenant.entry(spec.tenant.clone()).or_default(),
        };
        let shape = Shape::of(spec);
        let sid = match queue.shapes.get(&shape) {
            Some(&sid) => sid,
            None => {
                queue.next_shape += 1;
                queue.shapes.insert(shape, queue.next_shape);
                queue.next_shape
            }
        };
        let group = queue.groups.entry(sid).or_default();
        let before = group.first().copied();
        if group.insert(id) {
            let after = group.first().copied();
            queue.first_moved(sid, before, after);
            queue.len += 1;
            self.len += 1;
            count_in(&mut queue.memory, spec.limits.memory_bytes);
            count_in(&mut queue.fuel, spec.limits.fuel);
        }
    }

    pub(super) fn remove(&mut self, spec: &TaskSpec, id: TaskId) {
        let Some(queue) = self.by_tenant.get_mut(&spec.tenant) else {
            return;
        };
        let shape = Shape::of(spec);
        let Some(&sid) = queue.shapes.get(&shape) else {
            return;
        };
        let Some(group) = queue.groups.get_mut(&sid) else {
            return;
        };
        let before = group.first().copied();
        if !group.remove(&id) {
            return;
        }
        let after = group.first().copied();
        if after.is_none() {
            queue.groups.remove(&sid);
            queue.shapes.remove(&shape);
        }
        queue.first_moved(sid, before, after);
        queue.len -= 1;
        self.len -= 1;
        count_out(&mut queue.memory, spec.limits.memory_bytes);
        count_out(&mut queue.fuel, spec.limits.fuel);
        if queue.len == 0 {
            self.by_tenant.remove(&spec.tenant);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tasks `tenant` has waiting.
    pub(super) fn queued(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).map_or(0, |q| q.len)
    }

    /// Each tenant with tasks waiting, and its queue.
    pub(super) fn tenants(&self) -> impl Iterator<Item = (&String, &Queue)> {
        self.by_tenant.iter()
    }

    /// Every waiting task, tenant by tenant.
    pub(super) fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.by_tenant
            .values()
            .flat_map(|q| q.groups.values().flatten().copied())
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
    /// The window its fuel is reported over: its budget's period, else the host's
    /// `fuel_window`.
    pub fuel_window_ms: i64,
    /// Fuel its tasks spent in that window, running tasks' fuel so far included.
    pub fuel_used_in_window: u64,
    /// The fuel limits of its tasks placed now.
    pub fuel_held: u64,
    /// What is left of its budget for new tasks; `None` without a budget.
    pub fuel_left: Option<u64>,
    /// Fuel its tasks spent since the cluster began.
    pub fuel_used_total: u64,
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

    /// What is left of `tenant`'s fuel budget for new tasks at `now` (`u64::MAX` without one).
    pub fn fuel_left(&self, tenant: &str, now: Now) -> u64 {
        match self.tenant_settings(tenant).0.fuel_budget {
            Some(b) => self
                .ledger
                .left(tenant, b.fuel, b.period_ms(), self.ledger_ms.max(now.ms)),
            None => u64::MAX,
        }
    }

    /// Refuses a new task of `tenant` asking for `resources` when its tenant's queue is at its
    /// cap, or when its tenant's limit could never let it run.
    pub(super) fn admit_for_tenant(
        &self,
        tenant: &str,
        resources: &Resources,
        fuel: u64,
        count: u64,
    ) -> Result<(), HostError> {
        let (settings, _) = self.tenant_settings(tenant);
        let queued = self.queues.queued(tenant) as u64;
        if queued + count > settings.max_queued {
            let adding = match count {
                1 => String::new(),
                n => format!(", and a job of {n} would pass"),
            };
            return Err(HostError::Exhausted(format!(
                "tenant {tenant} has {queued} tasks waiting{adding}: its cap is max_queued {}; \
                 submit more as they start",
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
        if let Some(budget) = settings.fuel_budget.filter(|b| fuel > b.fuel) {
            return Err(HostError::FailedPrecondition(format!(
                "the task's fuel limit {fuel} exceeds tenant {tenant}'s whole fuel budget \
                 ({budget}): it could never start"
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
        now: Now,
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
        Ok(self.tenant_view(tenant, &self.total(), now))
    }

    /// Tenants named in the config, set, or with tasks waiting or placed, by name; only
    /// `only`, when given.
    pub fn tenants(&self, only: Option<&str>, now: Now) -> Vec<TenantView> {
        let total = self.total();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.extend(self.rules.tenants.keys().map(String::as_str));
        names.extend(self.tenant_set.keys().map(String::as_str));
        names.extend(self.queues.tenants().map(|(t, _)| t.as_str()));
        names.extend(self.held.keys().map(String::as_str));
        names.extend(self.ledger.tenants().map(String::as_str));
        match only {
            Some(tenant) => vec![self.tenant_view(tenant, &total, now)],
            None => names
                .into_iter()
                .map(|t| self.tenant_view(t, &total, now))
                .collect(),
        }
    }

    fn tenant_view(&self, tenant: &str, total: &Resources, now: Now) -> TenantView {
        let (settings, source) = self.tenant_settings(tenant);
        let held = self.held_by(tenant);
        let window = settings
            .fuel_budget
            .map_or(self.rules.fuel_window_ms, |b| b.period_ms());
        TenantView {
            fuel_window_ms: window,
            fuel_used_in_window: self
                .ledger
                .spent(tenant, window, self.ledger_ms.max(now.ms))
                .saturating_add(self.ledger.running(tenant)),
            fuel_held: self.ledger.held(tenant),
            fuel_left: settings.fuel_budget.map(|_| self.fuel_left(tenant, now)),
            fuel_used_total: self.ledger.total(tenant),
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
    pub fn explain(&self, tasks: &mut [Task], now: Now) {
        if !tasks.iter().any(|t| t.state == TaskState::Pending) {
            return;
        }
        let candidates: Vec<Candidate<'_>> = self.partitions.values().map(candidate).collect();
        let total = total_capacity(&candidates);
        // Tasks of one tenant and shape wait for the same reason: worked out once per call.
        type Why<'t> = (
            &'t str,
            u64,
            u64,
            &'t BTreeMap<String, String>,
            &'t BTreeMap<String, String>,
        );
        let mut known: HashMap<Why<'_>, String> = HashMap::new();
        let mut reasons = Vec::with_capacity(tasks.len());
        for task in tasks.iter() {
            if task.state != TaskState::Pending {
                reasons.push(None);
                continue;
            }
            let spec = &task.spec;
            let shape = (
                spec.tenant.as_str(),
                spec.limits.memory_bytes,
                spec.limits.fuel,
                &spec.labels,
                &spec.constraints,
            );
            let why = known
                .entry(shape)
                .or_insert_with(|| self.why_waiting(task, &candidates, &total, now));
            reasons.push(Some(why.clone()));
        }
        for (task, why) in tasks.iter_mut().zip(reasons) {
            if let Some(why) = why {
                task.reason = match task.reason.is_empty() {
                    true => why,
                    false => format!("{why}; {}", task.reason),
                };
            }
        }
    }

    fn why_waiting(
        &self,
        task: &Task,
        candidates: &[Candidate<'_>],
        total: &Resources,
        now: Now,
    ) -> String {
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
        let fuel = task.spec.limits.fuel;
        if let Some(budget) = settings.fuel_budget {
            if fuel > budget.fuel {
                return format!(
                    "its fuel limit {fuel} exceeds tenant {tenant}'s whole fuel budget \
                     ({budget}, set or lowered since it was submitted): it cannot start until the \
                     budget is raised; kill it or raise the budget"
                );
            }
            let left = self.fuel_left(tenant, now);
            if fuel > left {
                let period = budget.period_ms();
                let when = match self.ledger.frees_at(
                    tenant,
                    budget.fuel,
                    period,
                    fuel,
                    self.ledger_ms.max(now.ms),
                ) {
                    Some(ms) => format!(
                        "; the window frees enough by {} if its placed tasks spend their \
                         whole limits",
                        crate::convert::time_text(ms)
                    ),
                    None => "; its placed tasks must end first".into(),
                };
                return format!(
                    "waiting for its tenant's fuel budget: tenant {tenant} has {left} of \
                     {budget} left ({} held by its placed tasks), the task's limit is {fuel}\
                     {when}",
                    self.ledger.held(tenant)
                );
            }
        }
        if let Some(reason) = never_fits(candidates, &request) {
            return format!("no agent can run it now: {reason}");
        }
        if candidates.iter().any(|c| c.fits(&request)) {
            return "a partition it may use has room now: it is considered in the next scheduling \
                    round"
                .into();
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
                u8::from(!share.below_guarantee(&held)),
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
