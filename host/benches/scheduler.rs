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

fn partitions(agents: usize) -> Vec<Candidate> {
    // Enough slots in all for every task, spread evenly.
    let slots = u32::try_from(TASKS as usize / agents + 1).unwrap();
    (0..agents)
        .map(|i| {
            let capacity = Resources {
                slots,
                memory_bytes: u64::from(slots) << 26,
            };
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), format!("z{}", i % 4));
            Candidate {
                partition_id: format!("agent-{i:05}/default"),
                agent_id: format!("agent-{i:05}"),
                agent_labels: labels,
                reservation: Reservation::default(),
                capacity,
                free: capacity,
                draining: false,
            }
        })
        .collect()
}

fn pending() -> Vec<PendingTask> {
    (0..TASKS)
        .map(|i| PendingTask {
            task_id: TaskId(i),
            request: Request {
                resources: Resources {
                    slots: 1,
                    memory_bytes: 64 << 20,
                },
                tenant: "default".into(),
                labels: BTreeMap::new(),
                constraints: BTreeMap::new(),
            },
        })
        .collect()
}

fn scheduler(c: &mut Criterion) {
    let tasks = pending();
    let mut group = c.benchmark_group("scheduler/100k_tasks");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS));
    for agents in [100, 1_000, 10_000] {
        let parts = partitions(agents);
        for (name, strategy) in [("binpack", Strategy::Binpack), ("spread", Strategy::Spread)] {
            group.bench_with_input(BenchmarkId::new(name, agents), &parts, |b, parts| {
                b.iter(|| {
                    let plan = plan(black_box(parts), black_box(&tasks), strategy);
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
