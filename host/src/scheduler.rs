//! The scheduler: places pending tasks into partitions. A pure function: a snapshot in, a plan
//! out; no I/O, no clock, no async.
//!
//! # Properties
//! - **Never over-allocates**: the plan's placements, added to what each partition already
//!   holds, stay within every partition's capacity.
//! - **Every placeable task is placed**: a task left out of the plan fits in no partition given
//!   the placements made before it (tasks are taken in queue order, and a task that does not fit
//!   does not block those behind it).
//! - **Deterministic**: the same snapshot gives the same plan.
//! - Infeasibility is data: a task no partition could ever hold is listed with the reason,
//!   not raised as an error.
//!
//! # Algorithm
//! Tasks are grouped by their placement class (tenant, labels, constraints); for each class the
//! eligible partitions (not draining, reservation and constraints met) are found once. Each task
//! then scans its class's eligible partitions for the best fit under the [`Strategy`]
//! (see [`crate::allocator`]), and the chosen partition's free capacity shrinks. Partitions
//! with no free slot leave the class's list. The queue is read lazily and only until every
//! slot is taken, so a round on a full cluster costs nothing however long the queue. Cost:
//! O(tasks read x eligible partitions), linear in the number of agents.

use std::collections::HashMap;

use crate::allocator::{better, never_fits, Candidate, Request, Strategy};
use crate::partition::Resources;
use crate::task::TaskId;

/// A pending task as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingTask<'a> {
    /// The task.
    pub task_id: TaskId,
    /// What it asks for.
    pub request: Request<'a>,
}

/// One placement of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The task.
    pub task_id: TaskId,
    /// Index of the chosen partition in the snapshot.
    pub partition: usize,
}

/// A task the plan leaves pending, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    /// The task.
    pub task_id: TaskId,
    /// Why it waits.
    pub reason: String,
    /// True when no partition could hold it even with all its capacity free.
    pub never: bool,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tasks to place, in queue order.
    pub placements: Vec<Placement>,
    /// Tasks left pending.
    pub unplaced: Vec<Unplaced>,
}

/// Places `pending` (in queue order) into `partitions` under `strategy`: each task goes where
/// [`allocator::choose`](crate::allocator::choose) would put it given the placements before it.
///
/// The queue is read lazily and no further than needed: once no partition that takes tasks has
/// a free slot, the tasks left are in neither list (they wait, keeping their reason), so a
/// round over a long queue on a full cluster costs as much as the placements it makes.
pub fn plan<'a>(
    partitions: &[Candidate<'_>],
    pending: impl IntoIterator<Item = PendingTask<'a>>,
    strategy: Strategy,
) -> Plan {
    let mut free: Vec<Resources> = partitions.iter().map(|p| p.free).collect();
    let mut free_slots: u64 = partitions
        .iter()
        .filter(|p| !p.draining)
        .map(|p| u64::from(p.free.slots))
        .sum();
    let reserved: Vec<bool> = partitions
        .iter()
        .map(|p| p.reservation.is_reserved())
        .collect();
    // Eligible partition indices per placement class; built on first use.
    let mut classes: HashMap<ClassKey<'a>, Vec<usize>> = HashMap::new();
    let mut reasons: HashMap<(ClassKey<'a>, Resources), (String, bool)> = HashMap::new();
    let mut plan = Plan::default();
    if free_slots == 0 {
        return plan;
    }
    for task in pending {
        let request = &task.request;
        let eligible = classes.entry(ClassKey::of(request)).or_insert_with(|| {
            (0..partitions.len())
                .filter(|&i| partitions[i].eligible(request))
                .collect()
        });
        let mut best: Option<usize> = None;
        let mut k = 0;
        while k < eligible.len() {
            let i = eligible[k];
            if free[i].slots == 0 {
                // Full: no task of any class fits until the next snapshot.
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
        match best {
            Some(i) => {
                free[i] = free[i].minus(&request.resources);
                free_slots = free_slots.saturating_sub(u64::from(request.resources.slots));
                plan.placements.push(Placement {
                    task_id: task.task_id,
                    partition: i,
                });
                if free_slots == 0 {
                    break;
                }
            }
            None => {
                // The same for every task of one class and size: worked out once per plan.
                let key = (ClassKey::of(request), request.resources);
                let (reason, never) = reasons
                    .entry(key)
                    .or_insert_with(|| match never_fits(partitions, request) {
                        Some(reason) => (reason, true),
                        None => ("waiting for a partition with room".to_string(), false),
                    })
                    .clone();
                plan.unplaced.push(Unplaced {
                    task_id: task.task_id,
                    reason,
                    never,
                });
            }
        }
    }
    plan
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

    fn pending(id: u64, memory: u64) -> PendingTask<'static> {
        PendingTask {
            task_id: TaskId(id),
            request: Request {
                resources: Resources {
                    slots: 1,
                    memory_bytes: memory,
                },
                tenant: "default",
                labels: &NO_LABELS,
                constraints: &NO_LABELS,
            },
        }
    }

    #[test]
    fn binpack_fills_one_agent_before_the_next() {
        let parts = vec![candidate(0, 2, 100), candidate(1, 2, 100)];
        let tasks: Vec<_> = (0..3).map(|i| pending(i, 10)).collect();
        let plan = plan(&parts, tasks.iter().copied(), Strategy::Binpack);
        let chosen: Vec<_> = plan.placements.iter().map(|p| p.partition).collect();
        assert_eq!(chosen, [0, 0, 1]);
        assert!(plan.unplaced.is_empty());
    }

    #[test]
    fn spread_alternates_between_agents() {
        let parts = vec![candidate(0, 2, 100), candidate(1, 2, 100)];
        let tasks: Vec<_> = (0..4).map(|i| pending(i, 10)).collect();
        let plan = plan(&parts, tasks.iter().copied(), Strategy::Spread);
        let chosen: Vec<_> = plan.placements.iter().map(|p| p.partition).collect();
        assert_eq!(chosen, [0, 1, 0, 1]);
    }

    #[test]
    fn a_big_task_does_not_block_small_ones_behind_it() {
        let parts = vec![candidate(0, 4, 100)];
        let tasks = [pending(1, 60), pending(2, 60), pending(3, 30)];
        let plan = plan(&parts, tasks.iter().copied(), Strategy::Binpack);
        let placed: Vec<_> = plan.placements.iter().map(|p| p.task_id.0).collect();
        assert_eq!(placed, [1, 3]);
        assert_eq!(plan.unplaced.len(), 1);
        assert_eq!(plan.unplaced[0].task_id, TaskId(2));
        assert!(!plan.unplaced[0].never);
    }

    #[test]
    fn an_impossible_task_is_data_with_a_reason() {
        let parts = vec![candidate(0, 4, 100)];
        let plan = plan(&parts, [pending(1, 1000)], Strategy::Binpack);
        assert!(plan.placements.is_empty());
        assert!(plan.unplaced[0].never);
        assert!(plan.unplaced[0].reason.contains("largest partition"));
    }

    #[test]
    fn nothing_is_placed_on_draining_partitions() {
        let mut parts = vec![candidate(0, 4, 100)];
        parts[0].draining = true;
        let plan = plan(&parts, [pending(1, 1)], Strategy::Spread);
        assert!(plan.placements.is_empty());
        // No partition takes tasks: the queue is not even read.
        assert!(plan.unplaced.is_empty());
    }

    #[test]
    fn the_queue_is_read_only_until_every_slot_is_taken() {
        let parts = vec![candidate(0, 2, 100)];
        let read = std::cell::Cell::new(0);
        let tasks = (0..1_000).map(|i| {
            read.set(read.get() + 1);
            pending(i, 1)
        });
        let plan = plan(&parts, tasks, Strategy::Binpack);
        assert_eq!(plan.placements.len(), 2);
        assert!(plan.unplaced.is_empty());
        assert_eq!(read.get(), 2, "tasks past the last free slot were read");
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

    /// A task as generated: memory, tenant (2 is `default`), label `kind`, constraint `zone`.
    type RawTask = (u64, u8, Option<u8>, Option<u8>);

    fn arb_task() -> impl Generator<Value = RawTask> {
        (
            0u64..600,
            0u8..3,
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The module's properties as stated: each placement is where the oracle puts the task
        /// given the placements before it (so no partition is over-allocated); a task left out
        /// fits nowhere given the placements made before it; tasks are left out of both lists
        /// only once every slot is taken; the same snapshot gives the same plan.
        #[test]
        fn plans_keep_the_documented_properties(
            raw_parts in proptest::collection::vec(arb_partition(), 0..8),
            raw_tasks in proptest::collection::vec(arb_task(), 0..40),
            spread in any::<bool>(),
        ) {
            let reservations: Vec<Reservation> = raw_parts
                .iter()
                .map(|p| Reservation { tenant: p.5.map(|t| format!("tenant{t}")), labels: kv("kind", p.6, "k") })
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
            let tenants: Vec<String> = raw_tasks.iter().map(|t| if t.1 == 2 { "default".into() } else { format!("tenant{}", t.1) }).collect();
            let labels: Vec<BTreeMap<String, String>> = raw_tasks.iter().map(|t| kv("kind", t.2, "k")).collect();
            let constraints: Vec<BTreeMap<String, String>> = raw_tasks.iter().map(|t| kv("zone", t.3, "z")).collect();
            let tasks: Vec<PendingTask> = raw_tasks.iter().enumerate().map(|(i, t)| {
                let mut task = pending(i as u64, t.0);
                task.request.tenant = &tenants[i];
                task.request.labels = &labels[i];
                task.request.constraints = &constraints[i];
                task
            }).collect();
            let strategy = if spread { Strategy::Spread } else { Strategy::Binpack };
            let plan = plan(&parts, tasks.iter().copied(), strategy);
            prop_assert_eq!(&plan, &super::plan(&parts, tasks.iter().copied(), strategy), "not deterministic");

            // Replay the queue in order against the oracle.
            let mut free: Vec<Resources> = parts.iter().map(|p| p.free).collect();
            let placed: HashMap<TaskId, usize> = plan.placements.iter().map(|p| (p.task_id, p.partition)).collect();
            let unplaced: HashMap<TaskId, &Unplaced> = plan.unplaced.iter().map(|u| (u.task_id, u)).collect();
            let mut read = 0;
            for task in &tasks {
                let expected = oracle(&parts, &free, &task.request, strategy);
                match (placed.get(&task.task_id), unplaced.get(&task.task_id)) {
                    (Some(&chosen), None) => {
                        prop_assert_eq!(Some(chosen), expected, "task {} placed elsewhere than the oracle says", task.task_id);
                        let f = &mut free[chosen];
                        prop_assert!(f.covers(&task.request.resources), "over-allocated {}", parts[chosen].partition_id);
                        *f = f.minus(&task.request.resources);
                    }
                    (None, Some(left)) => {
                        prop_assert_eq!(expected, None, "task {} fits but was left out", task.task_id);
                        prop_assert!(!left.reason.is_empty());
                    }
                    (None, None) => break,
                    (Some(_), Some(_)) => prop_assert!(false, "task {} both placed and left out", task.task_id),
                }
                read += 1;
            }
            // What follows the tasks read was not read: only once every slot was taken.
            if read < tasks.len() {
                let left: u32 = parts.iter().zip(&free).filter(|(p, _)| !p.draining).map(|(_, f)| f.slots).sum();
                prop_assert_eq!(left, 0);
                prop_assert!(tasks[read..].iter().all(|t| !placed.contains_key(&t.task_id) && !unplaced.contains_key(&t.task_id)));
            }
        }
    }
}
