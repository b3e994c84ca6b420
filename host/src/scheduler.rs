//! The scheduler: places pending tasks into partitions, choosing among tenants by weighted
//! dominant resource fairness. A pure function: a snapshot in, a plan out; no I/O, no clock,
//! no async.
//!
//! # Properties
//! - **Never over-allocates**: the plan's placements, added to what each partition already
//!   holds, stay within every partition's capacity.
//! - **Never exceeds a tenant's limit or budget**: what a tenant holds, with the plan's
//!   placements, stays within its [`Share::limit`], and the fuel limits of the tasks placed
//!   within what is left of its fuel budget ([`TenantQueue::fuel_left`]).
//! - **Fair**: each placement goes to the tenant first in [`Order`] among those with a waiting
//!   task that fits (in a partition it may use, within its limit and budget): under
//!   [`Order::Fair`], a tenant holding less than its guarantee first, then the lowest weighted
//!   dominant share (below), then the tenant served longest ago (so that tenants of equal
//!   share take turns), then the one whose oldest waiting task is oldest; under
//!   [`Order::Fifo`], the oldest task (guarantees play no part). Within a tenant, tasks go in
//!   queue order, and one that does not fit does not block those behind it.
//! - **Work-conserving**: a task left waiting fits nowhere given the placements made before it
//!   (unless the round's read budget ran out, or its tenant left the round after
//!   [`MAX_MISSES`] tasks in a row that did not fit).
//! - **Deterministic**: the same snapshot gives the same plan.
//!
//! # Weighted dominant resource fairness
//! A tenant's dominant share is the largest of the fractions it holds of the cluster's slots
//! and of its memory (the capacity of partitions that take tasks); its weighted dominant share
//! is that divided by its weight (Ghodsi et al., "Dominant Resource Fairness", NSDI 2011, with
//! weights as in Mesos's DRF allocator). Giving each slot to the tenant with the lowest one
//! equalises dominant shares: a tenant of small tasks gets more of them than a tenant of big
//! ones. A **guarantee** is honoured as capacity frees: while a tenant with waiting work holds
//! less than its guarantee in every dimension the guarantee sets, it comes before every tenant
//! that does not (its last task may take it past the guarantee by that task's size). Nothing
//! is preempted: a guarantee is not a reservation (others use that capacity while the tenant
//! is idle) and a tenant that comes back gets what frees, not what others hold.
//!
//! # Algorithm
//! Tenants wait in a heap keyed by their order; each step pops the first, takes the earliest
//! of the heads of its groups (tasks of one shape: see [`TenantQueue::groups`]) and places it
//! where the [`Strategy`] says (see [`crate::allocator`]) among the partitions of its
//! placement class (tenant, labels, constraints; found once per class), or leaves it waiting
//! and drops its group from the plan, since none of its tasks could fit either; the tenant
//! goes back with its new key while it has tasks. A tenant whose smallest waiting task would
//! pass its limit or budget is not read at all. The plan stops once no partition has a free
//! slot or `max_read` tasks were read. Cost: O((placements + groups tried) x (eligible
//! partitions + log tenants)), whatever the length of the queues.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use crate::allocator::{better, Candidate, Request, Strategy};
use crate::partition::Resources;
use crate::task::TaskId;

/// Tasks in a row a tenant may have read in one plan without one placed: then it leaves the
/// plan, so that a tenant with a long queue of tasks that do not fit (each of its own shape:
/// a label per task) cannot spend the round's read budget and keep every other tenant
/// waiting. Its tasks further on wait for the next round.
pub const MAX_MISSES: u32 = 1024;

/// A pending task as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingTask<'a> {
    /// The task.
    pub task_id: TaskId,
    /// What it asks of a partition.
    pub request: Request<'a>,
    /// Its fuel limit, held against its tenant's budget while it is placed.
    pub fuel: u64,
}

/// How the next slot is chosen among tenants with waiting tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Guarantees first, then the lowest weighted dominant share.
    #[default]
    Fair,
    /// First come, first served: the oldest waiting task first, whatever its tenant (Corral's
    /// order before fair sharing; limits still hold).
    Fifo,
}

/// What a tenant is entitled to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    /// Its weight: twice the weight, twice the dominant share at equilibrium. Above zero.
    pub weight: f64,
    /// What it gets first while it has work.
    pub guarantee: Resources,
    /// The most it may hold at once.
    pub limit: Resources,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            weight: 1.0,
            guarantee: Resources::default(),
            limit: Resources::UNLIMITED,
        }
    }
}

impl Share {
    /// Its weighted dominant share of `total` when it holds `held`.
    pub fn dominant(&self, held: &Resources, total: &Resources) -> f64 {
        let fraction = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
        let slots = fraction(f64::from(held.slots), f64::from(total.slots));
        let memory = fraction(held.memory_bytes as f64, total.memory_bytes as f64);
        slots.max(memory) / self.weight
    }

    /// Whether a tenant holding `held` may take `more` without exceeding its limit.
    pub fn allows(&self, held: &Resources, more: &Resources) -> bool {
        self.limit.covers(&held.plus(more))
    }

    /// Whether a tenant holding `held` holds less than its guarantee in every dimension the
    /// guarantee sets (a tenant without one never does): it has not reached it yet. Its next
    /// task may take it past the guarantee by that task's size, never further.
    pub fn below_guarantee(&self, held: &Resources) -> bool {
        let g = self.guarantee;
        g != Resources::default()
            && (g.slots == 0 || held.slots < g.slots)
            && (g.memory_bytes == 0 || held.memory_bytes < g.memory_bytes)
    }
}

/// A tenant with waiting tasks, as the scheduler sees it.
#[derive(Debug)]
pub struct TenantQueue<'a, G> {
    /// Its name.
    pub tenant: &'a str,
    /// What it is entitled to.
    pub share: Share,
    /// What it holds now (tasks placed and running).
    pub held: Resources,
    /// What is left of its fuel budget for new tasks (`u64::MAX` without a budget).
    pub fuel_left: u64,
    /// The least memory and the least fuel any of its waiting tasks asks for (0 when not
    /// known): when even those do not fit its limit or budget, its queue is not read.
    pub smallest: (u64, u64),
    /// When it was last given a slot, on a clock of placements (0: never): among tenants of
    /// equal share, the one served longest ago goes first, so that equal tenants take turns.
    pub served: u64,
    /// Its waiting tasks in groups of one shape (the same request and fuel), each group in
    /// queue order and given with its first task's id, the groups in the order of those ids;
    /// all read lazily. A group is read only once its first task is the tenant's next, and
    /// once one task of a group cannot be placed, no other can in the same plan (capacity,
    /// limits and budgets only shrink as it goes), so the rest of it is not read: a round
    /// costs what it places and the groups it tries, however long the queues.
    pub groups: G,
}

/// One placement of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The task.
    pub task_id: TaskId,
    /// Index of the chosen partition in the snapshot.
    pub partition: usize,
}

/// Why a task read by the plan was left waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Its tenant would exceed its limit.
    Limit,
    /// Its fuel limit exceeds what is left of its tenant's budget.
    Budget,
    /// No partition it may use has room for it now.
    Room,
}

/// A task the plan read and left pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    /// The task.
    pub task_id: TaskId,
    /// Why it waits.
    pub wait: Wait,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tasks to place, in the order they were chosen.
    pub placements: Vec<Placement>,
    /// Tasks read and left pending.
    pub unplaced: Vec<Unplaced>,
}

/// The capacity fair shares are fractions of: that of every partition taking tasks.
pub fn total_capacity(partitions: &[Candidate<'_>]) -> Resources {
    partitions
        .iter()
        .filter(|p| !p.draining)
        .fold(Resources::default(), |sum, p| sum.plus(&p.capacity))
}

/// A tenant's place in the order: lower goes first.
#[derive(Clone, Copy, Debug)]
struct Key {
    /// 0 while it holds less than its guarantee, else 1.
    beyond_guarantee: u8,
    /// Its weighted dominant share (0 under FIFO).
    share: f64,
    /// When it was last served (0 under FIFO).
    served: u64,
    /// Its next task.
    next: TaskId,
    /// Its index, which breaks no tie two tenants can share (their next tasks differ).
    index: usize,
}

impl Key {
    fn rank(&self) -> (u8, u64, TaskId, usize) {
        (self.beyond_guarantee, self.served, self.next, self.index)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.beyond_guarantee
            .cmp(&other.beyond_guarantee)
            .then(self.share.total_cmp(&other.share))
            .then(self.rank().cmp(&other.rank()))
    }
}

/// A tenant as the plan goes: its share, what it holds and has left, the groups it has read
/// (with the head of each still in play) and those it has not.
struct Tenant<'a, I, G: Iterator> {
    share: Share,
    held: Resources,
    fuel_left: u64,
    smallest: (u64, u64),
    served: u64,
    /// Tasks read in a row without one placed.
    misses: u32,
    /// Groups not read yet, by first task.
    unread: std::iter::Peekable<G>,
    groups: Vec<I>,
    /// (task id, group) of each read group's next task, earliest first.
    heads: BinaryHeap<Reverse<(TaskId, usize)>>,
    /// Each read group's next task.
    next: Vec<Option<PendingTask<'a>>>,
}

impl<'a, I, G> Tenant<'a, I, G>
where
    I: Iterator<Item = PendingTask<'a>>,
    G: Iterator<Item = (TaskId, I)>,
{
    /// Reads group `g`'s next task into the heads.
    fn advance(&mut self, g: usize) {
        self.next[g] = self.groups[g].next();
        if let Some(task) = &self.next[g] {
            self.heads.push(Reverse((task.task_id, g)));
        }
    }

    /// The id of its next task: the earliest of its read groups' heads and the first task of
    /// the next group not read.
    fn next_id(&mut self) -> Option<TaskId> {
        let head = self.heads.peek().map(|Reverse((id, _))| *id);
        let unread = self.unread.peek().map(|(id, _)| *id);
        match (head, unread) {
            (Some(h), Some(u)) => Some(h.min(u)),
            (h, u) => h.or(u),
        }
    }

    /// Takes its next task, reading groups as they come first: (its group, the task).
    fn take(&mut self) -> Option<(usize, PendingTask<'a>)> {
        loop {
            let head = self.heads.peek().map(|Reverse((id, _))| *id);
            let unread = self.unread.peek().map(|(id, _)| *id);
            if unread.is_some_and(|u| head.is_none_or(|h| u < h)) {
                let (_, group) = self.unread.next()?;
                self.groups.push(group);
                self.next.push(None);
                self.advance(self.groups.len() - 1);
                continue;
            }
            let Reverse((_, g)) = self.heads.pop()?;
            if let Some(task) = self.next[g].take() {
                return Some((g, task));
            }
        }
    }
}

/// A tenant's key under `order`, or `None` when it has no task left or may take none.
fn key<'a, I, G>(
    index: usize,
    tenant: &mut Tenant<'a, I, G>,
    total: &Resources,
    order: Order,
) -> Option<Key>
where
    I: Iterator<Item = PendingTask<'a>>,
    G: Iterator<Item = (TaskId, I)>,
{
    // Every task takes a slot and at least the smallest memory and fuel asked: a tenant that
    // cannot take that much takes nothing.
    let least = Resources {
        slots: 1,
        memory_bytes: tenant.smallest.0,
    };
    if !tenant.share.allows(&tenant.held, &least) || tenant.smallest.1 > tenant.fuel_left {
        return None;
    }
    let next = tenant.next_id()?;
    Some(match order {
        Order::Fair => Key {
            beyond_guarantee: u8::from(!tenant.share.below_guarantee(&tenant.held)),
            share: tenant.share.dominant(&tenant.held, total),
            served: tenant.served,
            next,
            index,
        },
        Order::Fifo => Key {
            beyond_guarantee: 0,
            share: 0.0,
            served: 0,
            next,
            index,
        },
    })
}

/// Places the tenants' waiting tasks into `partitions`: tenants in `order`, each task where
/// the `strategy` puts it (see [`crate::allocator::choose`]), given the placements before it.
/// Reads at most `max_read` tasks. See the module documentation for the properties.
pub fn plan<'a, I, G>(
    partitions: &[Candidate<'_>],
    tenants: Vec<TenantQueue<'a, G>>,
    strategy: Strategy,
    order: Order,
    max_read: usize,
) -> Plan
where
    I: Iterator<Item = PendingTask<'a>>,
    G: Iterator<Item = (TaskId, I)>,
{
    let mut free: Vec<Resources> = partitions.iter().map(|p| p.free).collect();
    let mut free_slots: u64 = partitions
        .iter()
        .filter(|p| !p.draining)
        .map(|p| u64::from(p.free.slots))
        .sum();
    let mut plan = Plan::default();
    if free_slots == 0 || max_read == 0 {
        return plan;
    }
    let total = total_capacity(partitions);
    let reserved: Vec<bool> = partitions
        .iter()
        .map(|p| p.reservation.is_reserved())
        .collect();
    // Eligible partition indices per placement class; built on first use.
    let mut classes: HashMap<ClassKey<'a>, Vec<usize>> = HashMap::new();
    let mut clock = tenants.iter().map(|t| t.served).max().unwrap_or(0);
    let mut queues: Vec<Tenant<'a, I, G>> = Vec::with_capacity(tenants.len());
    let mut heap = BinaryHeap::with_capacity(tenants.len());
    for (index, t) in tenants.into_iter().enumerate() {
        let mut tenant = Tenant {
            share: t.share,
            held: t.held,
            fuel_left: t.fuel_left,
            smallest: t.smallest,
            served: t.served,
            misses: 0,
            unread: t.groups.peekable(),
            groups: Vec::new(),
            heads: BinaryHeap::new(),
            next: Vec::new(),
        };
        if let Some(k) = key(index, &mut tenant, &total, order) {
            heap.push(Reverse(k));
        }
        queues.push(tenant);
    }
    let mut read = 0;
    while let Some(Reverse(Key { index, .. })) = heap.pop() {
        let tenant = &mut queues[index];
        let Some((g, task)) = tenant.take() else {
            continue;
        };
        read += 1;
        let request = &task.request;
        let wait = if !tenant.share.allows(&tenant.held, &request.resources) {
            Some(Wait::Limit)
        } else if task.fuel > tenant.fuel_left {
            Some(Wait::Budget)
        } else {
            let eligible = classes.entry(ClassKey::of(request)).or_insert_with(|| {
                (0..partitions.len())
                    .filter(|&i| partitions[i].eligible(request))
                    .collect()
            });
            match best_fit(eligible, &free, &reserved, request, strategy) {
                Some(i) => {
                    free[i] = free[i].minus(&request.resources);
                    free_slots = free_slots.saturating_sub(u64::from(request.resources.slots));
                    tenant.held = tenant.held.plus(&request.resources);
                    tenant.fuel_left -= task.fuel;
                    clock += 1;
                    tenant.served = clock;
                    plan.placements.push(Placement {
                        task_id: task.task_id,
                        partition: i,
                    });
                    None
                }
                None => Some(Wait::Room),
            }
        };
        match wait {
            // The group's next task is like this one: it fits as well, or not at all.
            None => {
                tenant.misses = 0;
                tenant.advance(g);
            }
            Some(wait) => {
                tenant.misses += 1;
                plan.unplaced.push(Unplaced {
                    task_id: task.task_id,
                    wait,
                });
            }
        }
        if free_slots == 0 || read >= max_read {
            break;
        }
        if tenant.misses >= MAX_MISSES {
            continue;
        }
        if let Some(k) = key(index, tenant, &total, order) {
            heap.push(Reverse(k));
        }
    }
    plan
}

/// The best partition of `eligible` for `request` given `free`, dropping full ones from the
/// list (no task of any class fits there until the next snapshot).
fn best_fit(
    eligible: &mut Vec<usize>,
    free: &[Resources],
    reserved: &[bool],
    request: &Request<'_>,
    strategy: Strategy,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut k = 0;
    while k < eligible.len() {
        let i = eligible[k];
        if free[i].slots == 0 {
            eligible.swap_remove(k);
            continue;
        }
        if free[i].covers(&request.resources)
            && best.is_none_or(|b| {
                let (ri, rb) = (reserved[i], reserved[b]);
                better(strategy, (ri, &free[i]), (rb, &free[b]))
                    || (ri == rb && free[i] == free[b] && i < b)
            })
        {
            best = Some(i);
        }
        k += 1;
    }
    best
}

/// What decides which partitions a task may use, capacity aside.
#[derive(PartialEq, Eq, Hash)]
struct ClassKey<'a> {
    tenant: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    constraints: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> ClassKey<'a> {
    fn of(request: &Request<'a>) -> Self {
        Self {
            tenant: request.tenant,
            labels: request.labels,
            constraints: request.constraints,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use proptest::strategy::Strategy as Generator;

    use super::*;
    use crate::partition::Reservation;

    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    static SHARED: Reservation = Reservation {
        tenant: None,
        labels: BTreeMap::new(),
    };
    const IDS: [&str; 8] = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"];
    const TENANTS: [&str; 4] = ["tenant0", "tenant1", "tenant2", "default"];

    fn candidate(i: usize, slots: u32, memory: u64) -> Candidate<'static> {
        let capacity = Resources {
            slots,
            memory_bytes: memory,
        };
        Candidate {
            partition_id: IDS[i],
            agent_id: IDS[i],
            agent_labels: &NO_LABELS,
            reservation: &SHARED,
            capacity,
            free: capacity,
            draining: false,
        }
    }

    fn task(id: u64, tenant: &'static str, slots: u32, memory: u64) -> PendingTask<'static> {
        PendingTask {
            fuel: 1,
            task_id: TaskId(id),
            request: Request {
                resources: Resources {
                    slots,
                    memory_bytes: memory,
                },
                tenant,
                labels: &NO_LABELS,
                constraints: &NO_LABELS,
            },
        }
    }

    fn pending(id: u64, memory: u64) -> PendingTask<'static> {
        task(id, "default", 1, memory)
    }

    type Tasks<'a> = std::vec::IntoIter<PendingTask<'a>>;

    /// `tasks` in groups of one shape (request and fuel), each in the order given, with its
    /// first task's id, in the order of those ids.
    fn groups<'a>(
        tasks: impl Iterator<Item = PendingTask<'a>>,
    ) -> std::vec::IntoIter<(TaskId, Tasks<'a>)> {
        type Shape = (
            Resources,
            u64,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
        );
        let mut by_shape: Vec<(Shape, Vec<PendingTask<'a>>)> = Vec::new();
        for t in tasks {
            let r = &t.request;
            let shape = (r.resources, t.fuel, r.labels.clone(), r.constraints.clone());
            match by_shape.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, group)) => group.push(t),
                None => by_shape.push((shape, vec![t])),
            }
        }
        let mut groups: Vec<(TaskId, Tasks<'a>)> = by_shape
            .into_iter()
            .map(|(_, g)| (g[0].task_id, g.into_iter()))
            .collect();
        groups.sort_by_key(|g| g.0);
        groups.into_iter()
    }

    /// One queue per tenant named in `tasks`, default shares, nothing held.
    fn queues(
        tasks: &[PendingTask<'static>],
    ) -> Vec<TenantQueue<'static, std::vec::IntoIter<(TaskId, Tasks<'static>)>>> {
        let mut by_tenant: BTreeMap<&'static str, Vec<PendingTask<'static>>> = BTreeMap::new();
        for t in tasks {
            by_tenant.entry(t.request.tenant).or_default().push(*t);
        }
        by_tenant
            .into_iter()
            .map(|(tenant, tasks)| TenantQueue {
                tenant,
                share: Share::default(),
                held: Resources::default(),
                fuel_left: u64::MAX,
                smallest: (0, 0),
                served: 0,
                groups: groups(tasks.into_iter()),
            })
            .collect()
    }

    fn fifo(parts: &[Candidate<'_>], tasks: &[PendingTask<'static>], strategy: Strategy) -> Plan {
        plan(parts, queues(tasks), strategy, Order::Fifo, usize::MAX)
    }

    fn placed_per_tenant(
        plan: &Plan,
        tasks: &[PendingTask<'static>],
    ) -> BTreeMap<&'static str, usize> {
        let mut count = BTreeMap::new();
        for p in &plan.placements {
            let t = tasks.iter().find(|t| t.task_id == p.task_id).unwrap();
            *count.entry(t.request.tenant).or_default() += 1;
        }
        count
    }

    /// Ghodsi et al., NSDI 2011, section 4: 9 CPUs and 18 GB; A's tasks need <1 CPU, 4 GB>,
    /// B's <3 CPUs, 1 GB>. DRF gives A three tasks and B two (both dominant shares 2/3).
    #[test]
    fn drf_reproduces_the_papers_example() {
        let parts = vec![candidate(0, 9, 18)];
        let mut tasks = Vec::new();
        for i in 0..10 {
            tasks.push(task(2 * i, "A", 1, 4));
            tasks.push(task(2 * i + 1, "B", 3, 1));
        }
        let plan = plan(
            &parts,
            queues(&tasks),
            Strategy::Binpack,
            Order::Fair,
            usize::MAX,
        );
        assert_eq!(
            placed_per_tenant(&plan, &tasks),
            BTreeMap::from([("A", 3), ("B", 2)])
        );
    }

    /// One agent of 10 slots and 20 GiB; A's tasks take <1 slot, 4 GiB>, B's <1 slot, 1 GiB>,
    /// A's all submitted first. DRF: A 3, B 7. First come, first served: A 5, B none.
    #[test]
    fn drf_with_corrals_resources_and_fifo_against_it() {
        const GIB: u64 = 1 << 30;
        let parts = vec![candidate(0, 10, 20 * GIB)];
        let mut tasks: Vec<_> = (0..20).map(|i| task(i, "A", 1, 4 * GIB)).collect();
        tasks.extend((20..40).map(|i| task(i, "B", 1, GIB)));
        let fair = plan(
            &parts,
            queues(&tasks),
            Strategy::Binpack,
            Order::Fair,
            usize::MAX,
        );
        assert_eq!(
            placed_per_tenant(&fair, &tasks),
            BTreeMap::from([("A", 3), ("B", 7)])
        );
        let old = fifo(&parts, &tasks, Strategy::Binpack);
        assert_eq!(placed_per_tenant(&old, &tasks), BTreeMap::from([("A", 5)]));
    }

    #[test]
    fn weights_scale_the_share() {
        let parts = vec![candidate(0, 9, 100)];
        let tasks: Vec<_> = (0..30)
            .map(|i| task(i, ["heavy", "light"][(i % 2) as usize], 1, 1))
            .collect();
        let mut q = queues(&tasks);
        q[0].share.weight = 2.0;
        assert_eq!(q[0].tenant, "heavy");
        let plan = plan(&parts, q, Strategy::Binpack, Order::Fair, usize::MAX);
        assert_eq!(
            placed_per_tenant(&plan, &tasks),
            BTreeMap::from([("heavy", 6), ("light", 3)])
        );
    }

    #[test]
    fn a_tenant_below_its_guarantee_goes_first_and_no_tenant_passes_its_limit() {
        let parts = vec![candidate(0, 10, 100)];
        let tasks: Vec<_> = (0..60)
            .map(|i| task(i, ["big", "capped", "guaranteed"][(i % 3) as usize], 1, 1))
            .collect();
        let mut q = queues(&tasks);
        // `big` already holds 4 slots elsewhere in the cluster's accounting.
        q[0].held = Resources {
            slots: 4,
            memory_bytes: 4,
        };
        q[1].share.limit = Resources {
            slots: 1,
            memory_bytes: u64::MAX,
        };
        q[2].share.guarantee = Resources {
            slots: 5,
            memory_bytes: 0,
        };
        let plan = plan(&parts, q, Strategy::Binpack, Order::Fair, usize::MAX);
        let first: Vec<_> = plan.placements[..5]
            .iter()
            .map(|p| tasks[p.task_id.0 as usize].request.tenant)
            .collect();
        assert_eq!(first, ["guaranteed"; 5], "the guarantee is served first");
        assert_eq!(
            placed_per_tenant(&plan, &tasks),
            // Ties at equal shares go to the tenant served longest ago.
            BTreeMap::from([("big", 2), ("capped", 1), ("guaranteed", 7)])
        );
    }

    #[test]
    fn binpack_fills_one_agent_before_the_next() {
        let parts = vec![candidate(0, 2, 100), candidate(1, 2, 100)];
        let tasks: Vec<_> = (0..3).map(|i| pending(i, 10)).collect();
        let plan = fifo(&parts, &tasks, Strategy::Binpack);
        let chosen: Vec<_> = plan.placements.iter().map(|p| p.partition).collect();
        assert_eq!(chosen, [0, 0, 1]);
        assert!(plan.unplaced.is_empty());
    }

    #[test]
    fn spread_alternates_between_agents() {
        let parts = vec![candidate(0, 2, 100), candidate(1, 2, 100)];
        let tasks: Vec<_> = (0..4).map(|i| pending(i, 10)).collect();
        let plan = fifo(&parts, &tasks, Strategy::Spread);
        let chosen: Vec<_> = plan.placements.iter().map(|p| p.partition).collect();
        assert_eq!(chosen, [0, 1, 0, 1]);
    }

    #[test]
    fn a_big_task_does_not_block_small_ones_behind_it() {
        let parts = vec![candidate(0, 4, 100)];
        let tasks = [pending(1, 60), pending(2, 60), pending(3, 30)];
        let plan = fifo(&parts, &tasks, Strategy::Binpack);
        let placed: Vec<_> = plan.placements.iter().map(|p| p.task_id.0).collect();
        assert_eq!(placed, [1, 3]);
        assert_eq!(
            plan.unplaced,
            [Unplaced {
                task_id: TaskId(2),
                wait: Wait::Room
            }]
        );
    }

    #[test]
    fn nothing_is_placed_on_draining_partitions() {
        let mut parts = vec![candidate(0, 4, 100)];
        parts[0].draining = true;
        let plan = fifo(&parts, &[pending(1, 1)], Strategy::Spread);
        assert!(plan.placements.is_empty());
        // No partition takes tasks: the queue is not even read.
        assert!(plan.unplaced.is_empty());
    }

    #[test]
    fn the_queues_are_read_only_until_every_slot_is_taken_or_the_budget_is_spent() {
        let parts = vec![candidate(0, 2, 100)];
        let read = std::cell::Cell::new(0);
        let counted = |tenant: &'static str, base: u64| {
            let read = &read;
            (0..1_000).map(move |i| {
                read.set(read.get() + 1);
                task(base + i, tenant, 1, 1)
            })
        };
        let tenants = vec![
            TenantQueue {
                tenant: "a",
                share: Share::default(),
                held: Resources::default(),
                fuel_left: u64::MAX,
                smallest: (0, 0),
                served: 0,
                groups: vec![(TaskId(0), counted("a", 0))].into_iter(),
            },
            TenantQueue {
                tenant: "b",
                share: Share::default(),
                held: Resources::default(),
                fuel_left: u64::MAX,
                smallest: (0, 0),
                served: 0,
                groups: vec![(TaskId(1_000), counted("b", 1_000))].into_iter(),
            },
        ];
        let plan = plan(&parts, tenants, Strategy::Binpack, Order::Fair, usize::MAX);
        assert_eq!(plan.placements.len(), 2);
        // Each queue's head is peeked, and the one behind a placed task.
        assert!(read.get() <= 4, "{} tasks read", read.get());

        // Tasks of one shape that do not fit cost one read, however many wait.
        let tasks: Vec<_> = (0..100).map(|i| pending(i, 1_000)).collect();
        let plan = super::plan(&parts, queues(&tasks), Strategy::Binpack, Order::Fair, 10);
        assert_eq!(plan.unplaced.len(), 1);
        // Tasks of many shapes that do not fit cost the round at most its budget: the groups
        // past it are not even read.
        let tasks: Vec<_> = (0..100).map(|i| pending(i, 1_000 + i)).collect();
        let pulled = std::cell::Cell::new(0);
        let tenants = vec![TenantQueue {
            tenant: "default",
            share: Share::default(),
            held: Resources::default(),
            fuel_left: u64::MAX,
            smallest: (0, 0),
            served: 0,
            groups: groups(tasks.iter().copied()).inspect(|_| pulled.set(pulled.get() + 1)),
        }];
        let plan = super::plan(&parts, tenants, Strategy::Binpack, Order::Fair, 10);
        assert_eq!(plan.unplaced.len(), 10);
        assert!(pulled.get() <= 11, "{} groups read", pulled.get());

        // A tenant of many shapes that do not fit leaves the round after MAX_MISSES of them:
        // it cannot keep another tenant's task that fits from its slot.
        let mut tasks: Vec<_> = (0..2_000).map(|i| task(i, "wide", 1, 1_000 + i)).collect();
        tasks.push(task(5_000, "small", 1, 1));
        let plan = super::plan(
            &parts,
            queues(&tasks),
            Strategy::Binpack,
            Order::Fair,
            1_500,
        );
        let placed: Vec<u64> = plan.placements.iter().map(|p| p.task_id.0).collect();
        assert_eq!(placed, [5_000]);
        assert_eq!(plan.unplaced.len(), MAX_MISSES as usize);
    }

    /// A partition as generated: capacity, used, draining, reserved tenant, reserved label,
    /// agent zone.
    type RawPartition = (u32, u64, u32, u64, bool, Option<u8>, Option<u8>, Option<u8>);

    fn arb_partition() -> impl Generator<Value = RawPartition> {
        (
            0u32..6,
            0u64..1000,
            0u32..6,
            0u64..1000,
            any::<bool>(),
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
        )
    }

    /// A task as generated: memory, tenant (an index of `TENANTS`), label `kind`, constraint
    /// `zone`, fuel.
    type RawTask = (u64, usize, Option<u8>, Option<u8>, u64);

    fn arb_task() -> impl Generator<Value = RawTask> {
        (
            0u64..600,
            0usize..4,
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
            1u64..50,
        )
    }

    /// A tenant's share and holdings as generated: weight, guaranteed slots, slot limit,
    /// memory limit, slots held, memory held, fuel budget left, whether the plan is told its
    /// smallest task, guaranteed memory.
    type RawTenant = (
        u8,
        u32,
        Option<u32>,
        Option<u64>,
        u32,
        u64,
        Option<u64>,
        bool,
        Option<u64>,
    );

    fn arb_tenant() -> impl Generator<Value = RawTenant> {
        (
            1u8..4,
            0u32..4,
            proptest::option::of(0u32..6),
            proptest::option::of(0u64..1500),
            0u32..4,
            0u64..800,
            proptest::option::of(0u64..150),
            any::<bool>(),
            proptest::option::of(0u64..1200),
        )
    }

    fn kv(key: &str, value: Option<u8>, prefix: &str) -> BTreeMap<String, String> {
        value
            .map(|v| (key.to_string(), format!("{prefix}{v}")))
            .into_iter()
            .collect()
    }

    /// The oracle: written from the allocator's documentation, sharing no code with it. Where
    /// `request` goes given `free`: among partitions that are not draining, whose reservation
    /// names no other tenant and no label the task lacks, whose agent has every label the task
    /// requires, and whose free capacity covers the request, a partition reserved for the task
    /// first; then binpack's least free memory (then fewest free slots) or spread's most free
    /// slots (then most memory); ties to the earliest.
    fn oracle(
        parts: &[Candidate<'_>],
        free: &[Resources],
        request: &Request<'_>,
        strategy: Strategy,
    ) -> Option<usize> {
        let fits = |i: usize| {
            let p = &parts[i];
            let tenant_ok = p
                .reservation
                .tenant
                .as_deref()
                .is_none_or(|t| t == request.tenant);
            let labels_ok = p
                .reservation
                .labels
                .iter()
                .all(|(k, v)| request.labels.get(k) == Some(v));
            let zone_ok = request
                .constraints
                .iter()
                .all(|(k, v)| p.agent_labels.get(k) == Some(v));
            let room = free[i].slots >= request.resources.slots
                && free[i].memory_bytes >= request.resources.memory_bytes;
            !p.draining && tenant_ok && labels_ok && zone_ok && room
        };
        (0..parts.len()).filter(|&i| fits(i)).min_by_key(|&i| {
            let reserved =
                parts[i].reservation.tenant.is_some() || !parts[i].reservation.labels.is_empty();
            let f = free[i];
            let rank = match strategy {
                Strategy::Binpack => (f.memory_bytes as i128, i128::from(f.slots)),
                Strategy::Spread => (-i128::from(f.slots), -(f.memory_bytes as i128)),
            };
            (!reserved, rank, i)
        })
    }

    /// A tenant's weighted dominant share, from the paper's definition.
    fn drf(held: (u64, u64), total: (u64, u64), weight: f64) -> f64 {
        let part = |h: u64, t: u64| if t == 0 { 0.0 } else { h as f64 / t as f64 };
        part(held.0, total.0).max(part(held.1, total.1)) / weight
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The module's properties as stated, replayed placement by placement: each goes to a
        /// tenant first in the order (guarantee, then weighted dominant share; under FIFO, the
        /// oldest task) among those with a waiting task that fits, to that tenant's first
        /// fitting task, in the partition the oracle picks (so no partition is
        /// over-allocated); no placement takes a tenant past its limit or budget, even when the
        /// plan is told each tenant's smallest task; once the plan ends,
        /// no waiting task fits (work-conserving); the same snapshot gives the same plan.
        #[test]
        fn plans_keep_the_documented_properties(
            raw_parts in proptest::collection::vec(arb_partition(), 0..8),
            raw_tasks in proptest::collection::vec(arb_task(), 0..40),
            raw_tenants in proptest::collection::vec(arb_tenant(), 4),
            spread in any::<bool>(),
            fair in any::<bool>(),
        ) {
            let reservations: Vec<Reservation> = raw_parts
                .iter()
                .map(|p| Reservation { tenant: p.5.map(|t| TENANTS[usize::from(t)].to_string()), labels: kv("kind", p.6, "k") })
                .collect();
            let zones: Vec<BTreeMap<String, String>> = raw_parts.iter().map(|p| kv("zone", p.7, "z")).collect();
            let parts: Vec<Candidate> = raw_parts.iter().enumerate().map(|(i, &(cap_s, cap_m, used_s, used_m, draining, ..))| {
                let mut c = candidate(i, cap_s, cap_m);
                c.free = c.capacity.minus(&Resources { slots: used_s.min(cap_s), memory_bytes: used_m.min(cap_m) });
                c.draining = draining;
                c.reservation = &reservations[i];
                c.agent_labels = &zones[i];
                c
            }).collect();
            let labels: Vec<BTreeMap<String, String>> = raw_tasks.iter().map(|t| kv("kind", t.2, "k")).collect();
            let constraints: Vec<BTreeMap<String, String>> = raw_tasks.iter().map(|t| kv("zone", t.3, "z")).collect();
            let tasks: Vec<PendingTask> = raw_tasks.iter().enumerate().map(|(i, t)| {
                let mut task = task(i as u64, TENANTS[t.1], 1, t.0);
                task.fuel = t.4;
                task.request.labels = &labels[i];
                task.request.constraints = &constraints[i];
                task
            }).collect();
            let budgets: Vec<u64> = raw_tenants.iter().map(|t| t.6.unwrap_or(u64::MAX)).collect();
            let served: Vec<u64> = (0..4).map(|t| (t as u64 * 7 + raw_tasks.len() as u64) % 5).collect();
            let smallest: Vec<(u64, u64)> = (0..4).map(|t| {
                let mine = || tasks.iter().filter(|x| x.request.tenant == TENANTS[t]);
                match raw_tenants[t].7 {
                    true => (mine().map(|x| x.request.resources.memory_bytes).min().unwrap_or(0), mine().map(|x| x.fuel).min().unwrap_or(0)),
                    false => (0, 0),
                }
            }).collect();
            let shares: Vec<(Share, Resources)> = raw_tenants.iter().map(|&(w, g, ls, lm, hs, hm, _, _, gm)| (
                Share {
                    weight: f64::from(w),
                    guarantee: Resources { slots: g, memory_bytes: gm.unwrap_or(0) },
                    limit: Resources { slots: ls.unwrap_or(u32::MAX), memory_bytes: lm.unwrap_or(u64::MAX) },
                },
                Resources { slots: hs, memory_bytes: hm },
            )).collect();
            let make = || -> Vec<TenantQueue<'_, std::vec::IntoIter<(TaskId, Tasks<'_>)>>> {
                (0..4).map(|t| TenantQueue {
                    tenant: TENANTS[t],
                    share: shares[t].0,
                    held: shares[t].1,
                    fuel_left: budgets[t],
                    smallest: smallest[t],
                    served: served[t],
                    groups: groups(tasks.iter().copied().filter(|x| x.request.tenant == TENANTS[t])),
                }).collect()
            };
            let strategy = if spread { Strategy::Spread } else { Strategy::Binpack };
            let order = if fair { Order::Fair } else { Order::Fifo };
            let plan = plan(&parts, make(), strategy, order, usize::MAX);
            prop_assert_eq!(&plan, &super::plan(&parts, make(), strategy, order, usize::MAX), "not deterministic");

            let total = parts.iter().filter(|p| !p.draining).fold((0u64, 0u64), |(s, m), p| (s + u64::from(p.capacity.slots), m + p.capacity.memory_bytes));
            let mut free: Vec<Resources> = parts.iter().map(|p| p.free).collect();
            let mut held: Vec<Resources> = shares.iter().map(|s| s.1).collect();
            let mut left = budgets.clone();
            let mut waiting: Vec<PendingTask> = tasks.clone();
            let tenant_of = |t: &PendingTask| TENANTS.iter().position(|&n| n == t.request.tenant).unwrap();
            // A waiting task fits when some partition takes it and its tenant's limit and
            // budget allow.
            let fits = |t: &PendingTask, free: &[Resources], held: &[Resources], left: &[u64]| {
                let i = tenant_of(t);
                let after = held[i].plus(&t.request.resources);
                shares[i].0.limit.slots >= after.slots && shares[i].0.limit.memory_bytes >= after.memory_bytes
                    && t.fuel <= left[i]
                    && oracle(&parts, free, &t.request, strategy).is_some()
            };
            for placement in &plan.placements {
                let at = waiting.iter().position(|t| t.task_id == placement.task_id);
                prop_assert!(at.is_some(), "task {} placed twice or unknown", placement.task_id);
                let chosen = waiting[at.unwrap()];
                let tenant = tenant_of(&chosen);
                // Every tenant's first fitting task, and its rank: first while it holds less
                // than its guarantee in each dimension the guarantee sets.
                let rank = |i: usize| -> (u8, f64) {
                    let g = shares[i].0.guarantee;
                    let below = (g.slots, g.memory_bytes) != (0, 0)
                        && (g.slots == 0 || held[i].slots < g.slots)
                        && (g.memory_bytes == 0 || held[i].memory_bytes < g.memory_bytes);
                    (u8::from(!below), drf((u64::from(held[i].slots), held[i].memory_bytes), total, shares[i].0.weight))
                };
                let mut candidates: Vec<(usize, TaskId)> = Vec::new();
                for t in &waiting {
                    let i = tenant_of(t);
                    if fits(t, &free, &held, &left) && !candidates.iter().any(|c| c.0 == i) {
                        candidates.push((i, t.task_id));
                    }
                }
                waiting.remove(at.unwrap());
                prop_assert!(candidates.iter().any(|c| c == &(tenant, chosen.task_id)), "task {} is not its tenant's first fitting task", chosen.task_id);
                match order {
                    Order::Fair => {
                        let best = candidates.iter().map(|c| rank(c.0)).min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))).unwrap();
                        let mine = rank(tenant);
                        prop_assert!(mine.0 == best.0 && mine.1.total_cmp(&best.1).is_eq(), "tenant {} went at rank {:?}, best {:?}", tenant, mine, best);
                    }
                    Order::Fifo => {
                        let oldest = candidates.iter().map(|c| c.1).min().unwrap();
                        prop_assert_eq!(chosen.task_id, oldest, "not the oldest fitting task");
                    }
                }
                let expected = oracle(&parts, &free, &chosen.request, strategy);
                prop_assert_eq!(Some(placement.partition), expected, "task {} placed elsewhere than the oracle says", chosen.task_id);
                free[placement.partition] = free[placement.partition].minus(&chosen.request.resources);
                held[tenant] = held[tenant].plus(&chosen.request.resources);
                let limit = shares[tenant].0.limit;
                prop_assert!(limit.covers(&held[tenant]), "tenant {} past its limit", tenant);
                prop_assert!(chosen.fuel <= left[tenant], "tenant {} past its budget", tenant);
                left[tenant] -= chosen.fuel;
            }
            // Work-conserving: nothing left fits.
            for t in &waiting {
                prop_assert!(!fits(t, &free, &held, &left), "task {} fits but waits", t.task_id);
            }
            // Every task read and left has a true reason.
            for u in &plan.unplaced {
                prop_assert!(waiting.iter().any(|t| t.task_id == u.task_id));
            }
        }
    }
}
