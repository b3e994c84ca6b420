//! The scheduler alone: one plan for 100,000 pending tasks over 100, 1,000 and 10,000 agents
//! (one partition each, room for every task), binpack and spread, all of one tenant; then the
//! same tasks spread over 100 tenants (1,000 each, in turn), ordered by weighted dominant
//! resource fairness and first come first served. Throughput is placements per second.
//!
//! Run: `cargo bench -p corral-host --bench scheduler`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use corral_host::allocator::{Candidate, Request, Strategy};
use corral_host::partition::{Reservation, Resources};
use corral_host::scheduler::{plan, Order, PendingTask, Share, TenantQueue};
use corral_host::task::TaskId;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const TASKS: u64 = 100_000;

/// What the partitions' candidates borrow: ids and labels per agent.
struct Agents {
    ids: Vec<(String, String)>,
    labels: Vec<BTreeMap<String, String>>,
    shared: Reservation,
}

fn agents(n: usize) -> Agents {
    Agents {
        ids: (0..n)
            .map(|i| (format!("agent-{i:05}/default"), format!("agent-{i:05}")))
            .collect(),
        labels: (0..n)
            .map(|i| BTreeMap::from([("zone".to_string(), format!("z{}", i % 4))]))
            .collect(),
        shared: Reservation::default(),
    }
}

fn partitions(agents: &Agents) -> Vec<Candidate<'_>> {
    // Enough slots in all for every task, spread evenly.
    let slots = u32::try_from(TASKS as usize / agents.ids.len() + 1).unwrap();
    let capacity = Resources {
        slots,
        memory_bytes: u64::from(slots) << 26,
    };
    agents
        .ids
        .iter()
        .zip(&agents.labels)
        .map(|((partition_id, agent_id), labels)| Candidate {
            partition_id,
            agent_id,
            agent_labels: labels,
            reservation: &agents.shared,
            capacity,
            free: capacity,
            draining: false,
        })
        .collect()
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `TASKS` tasks of `tenants` tenants, submitted in turn: each tenant's queue, in id order.
fn pending(tenants: &[String]) -> Vec<Vec<PendingTask<'_>>> {
    let mut queues = vec![Vec::new(); tenants.len()];
    for i in 0..TASKS {
        let t = (i % tenants.len() as u64) as usize;
        queues[t].push(PendingTask {
            fuel: 1_000_000,
            task_id: TaskId(i),
            request: Request {
                resources: Resources {
                    slots: 1,
                    memory_bytes: 64 << 20,
                },
                tenant: &tenants[t],
                labels: &NO_LABELS,
                constraints: &NO_LABELS,
            },
        });
    }
    queues
}

type Tasks<'a> = std::iter::Copied<std::slice::Iter<'a, PendingTask<'a>>>;

/// The tenants' queues as the scheduler reads them: one group each (all alike).
fn queues<'a>(
    tenants: &'a [String],
    pending: &'a [Vec<PendingTask<'a>>],
) -> Vec<TenantQueue<'a, std::iter::Once<(TaskId, Tasks<'a>)>>> {
    tenants
        .iter()
        .zip(pending)
        .map(|(tenant, tasks)| TenantQueue {
            tenant,
            share: Share::default(),
            held: Resources::default(),
            fuel_left: u64::MAX,
            smallest: (64 << 20, 1_000_000),
            served: 0,
            groups: std::iter::once((tasks[0].task_id, tasks.iter().copied())),
        })
        .collect()
}

fn scheduler(c: &mut Criterion) {
    let one = vec!["default".to_string()];
    let tasks = pending(&one);
    let mut group = c.benchmark_group("scheduler/100k_tasks");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS));
    for n in [100, 1_000, 10_000] {
        let agents = agents(n);
        let parts = partitions(&agents);
        for (name, strategy) in [("binpack", Strategy::Binpack), ("spread", Strategy::Spread)] {
            group.bench_with_input(BenchmarkId::new(name, n), &parts, |b, parts| {
                b.iter(|| {
                    let plan = plan(
                        black_box(parts),
                        queues(&one, black_box(&tasks)),
                        strategy,
                        Order::Fair,
                        usize::MAX,
                    );
                    assert_eq!(plan.placements.len() as u64, TASKS);
                    plan
                })
            });
        }
    }
    group.finish();

    let hundred: Vec<String> = (0..100).map(|i| format!("tenant-{i:03}")).collect();
    let tasks = pending(&hundred);
    let mut group = c.benchmark_group("scheduler/100k_tasks_100_tenants");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS));
    for n in [100, 1_000, 10_000] {
        let agents = agents(n);
        let parts = partitions(&agents);
        for (name, order) in [("fair", Order::Fair), ("fifo", Order::Fifo)] {
            group.bench_with_input(BenchmarkId::new(name, n), &parts, |b, parts| {
                b.iter(|| {
                    let plan = plan(
                        black_box(parts),
                        queues(&hundred, black_box(&tasks)),
                        Strategy::Binpack,
                        order,
                        usize::MAX,
                    );
                    assert_eq!(plan.placements.len() as u64, TASKS);
                    plan
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
