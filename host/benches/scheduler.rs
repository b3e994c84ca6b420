//! The scheduler alone: one plan for 100,000 pending tasks over 100, 1,000 and 10,000 agents
//! (one partition each, room for every task), binpack and spread. Throughput is placements per
//! second.
//!
//! Run: `cargo bench -p corral-host --bench scheduler`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use corral_host::allocator::{Candidate, Request, Strategy};
use corral_host::partition::{Reservation, Resources};
use corral_host::scheduler::{plan, PendingTask};
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

fn pending() -> Vec<PendingTask<'static>> {
    (0..TASKS)
        .map(|i| PendingTask {
            task_id: TaskId(i),
            request: Request {
                resources: Resources {
                    slots: 1,
                    memory_bytes: 64 << 20,
                },
                tenant: "default",
                labels: &NO_LABELS,
                constraints: &NO_LABELS,
            },
        })
        .collect()
}

fn scheduler(c: &mut Criterion) {
    let tasks = pending();
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
                        black_box(&tasks).iter().copied(),
                        strategy,
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
