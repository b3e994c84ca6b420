//! The state store's write throughput: tasks written and awaited to durability, one at a time
//! (one fsync each) and from 64 concurrent writers whose writes the writer thread group-commits
//! (one transaction and one fsync per batch). Throughput is tasks per second; the store is in a
//! temp dir on this machine's disk.
//!
//! Run: `cargo bench -p corral-host --bench store`

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use corral_host::config::HostConfig;
use corral_host::convert;
use corral_host::store::{Store, Write};
use corral_host::task::{Task, TaskId};
use corral_proto::pb;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const TASKS: u64 = 1_024;

fn task(id: u64) -> Task {
    let spec = convert::spec_from_pb(
        pb::TaskSpec {
            name: format!("task-{id}"),
            module_sha256: "ab".repeat(32),
            args: vec!["--json".into()],
            ..Default::default()
        },
        &HostConfig::default(),
    )
    .expect("a valid spec");
    Task::new(TaskId(id), spec, 1)
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("store/durable_task_writes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS));
    for writers in [1u64, 64] {
        group.bench_with_input(
            BenchmarkId::new("writers", writers),
            &writers,
            |b, &writers| {
                b.iter_custom(|iters| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let (store, _) = Store::open(dir.path()).expect("store");
                    let store = std::sync::Arc::new(store);
                    let mut elapsed = Duration::ZERO;
                    for i in 0..iters {
                        let started = Instant::now();
                        runtime.block_on(async {
                            let handles: Vec<_> = (0..writers)
                                .map(|w| {
                                    let store = store.clone();
                                    tokio::spawn(async move {
                                        for k in 0..TASKS / writers {
                                            let id = i * TASKS + w * (TASKS / writers) + k;
                                            store
                                                .write(vec![Write::Task(task(id))])
                                                .durable()
                                                .await
                                                .expect("durable");
                                        }
                                    })
                                })
                                .collect();
                            for h in handles {
                                h.await.expect("writer");
                            }
                        });
                        elapsed += started.elapsed();
                    }
                    elapsed
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
