//! Task change events for watchers.
//!
//! A watcher of every task shares one broadcast channel. A watcher of one task gets a channel
//! of that task alone, made when the first such watcher subscribes and removed when the last
//! leaves: with hundreds of clients each watching its own task, an event wakes only the
//! watchers of its task, not every watcher to filter it out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use crate::task::{Task, TaskId};

/// Events of one task a watcher may fall behind by before it is told it lagged.
const PER_TASK: usize = 64;

/// Where task changes are published.
pub struct Events {
    all: broadcast::Sender<Arc<Task>>,
    by_task: Mutex<HashMap<TaskId, broadcast::Sender<Arc<Task>>>>,
}

impl Events {
    /// Watchers of every task may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            all: broadcast::channel(capacity).0,
            by_task: Mutex::default(),
        })
    }

    fn by_task(&self) -> MutexGuard<'_, HashMap<TaskId, broadcast::Sender<Arc<Task>>>> {
        self.by_task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the watchers of every task, and those of this one.
    pub fn publish(&self, task: Arc<Task>) {
        if let Some(one) = self.by_task().get(&task.id) {
            let _ = one.send(task.clone());
        }
        // An error only says nobody watches every task.
        let _ = self.all.send(task);
    }

    /// Subscribes to every task's changes (`None`) or to one task's.
    pub fn subscribe(self: &Arc<Self>, task: Option<TaskId>) -> Subscription {
        let receiver = match task {
            None => self.all.subscribe(),
            Some(id) => self
                .by_task()
                .entry(id)
                .or_insert_with(|| broadcast::channel(PER_TASK).0)
                .subscribe(),
        };
        Subscription {
            receiver,
            task,
            events: self.clone(),
        }
    }

    /// Tasks with a channel of their own now (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        self.by_task().len()
    }
}

/// A watcher's receiver; leaving removes its task's channel when it was the last one there.
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Task>>,
    task: Option<TaskId>,
    events: Arc<Events>,
}

impl Subscription {
    /// The next change, or `Lagged` when some were missed, or `Closed`.
    pub async fn recv(&mut self) -> Result<Arc<Task>, broadcast::error::RecvError> {
        self.receiver.recv().await
    }

    /// The next change if one is waiting now; none when none is (or some were missed).
    pub fn try_recv(&mut self) -> Option<Arc<Task>> {
        self.receiver.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = self.task {
            let mut by_task = self.events.by_task();
            // Under the lock no one subscribes meanwhile; this receiver is still counted.
            if by_task.get(&id).is_some_and(|s| s.receiver_count() <= 1) {
                by_task.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{RetryPolicy, TaskLimits, TaskSpec};

    fn task(id: u64) -> Arc<Task> {
        let spec = TaskSpec {
            name: String::new(),
            tenant: "default".into(),
            module_sha256: String::new(),
            args: vec![],
            env: Default::default(),
            stdin: Default::default(),
            limits: TaskLimits {
                fuel: 1,
                memory_bytes: 1,
                timeout: std::time::Duration::from_secs(1),
                max_output_bytes: 1,
                max_disk_bytes: 256 << 20,
            },
            labels: Default::default(),
            constraints: Default::default(),
            retry: RetryPolicy {
                max_retries: 0,
                retry_failed: false,
            },
            collect_outputs: false,
            inputs: Vec::new(),
        };
        Arc::new(Task::new(TaskId(id), spec, 0))
    }

    #[tokio::test]
    async fn a_task_watcher_sees_only_its_task_and_its_channel_goes_with_the_last_watcher() {
        let events = Events::new(16);
        let mut all = events.subscribe(None);
        let mut one = events.subscribe(Some(TaskId(2)));
        let other = events.subscribe(Some(TaskId(2)));
        events.publish(task(1));
        events.publish(task(2));
        assert_eq!(one.recv().await.unwrap().id, TaskId(2));
        assert!(one.receiver.is_empty(), "task 1's event never reached it");
        assert_eq!(all.recv().await.unwrap().id, TaskId(1));
        assert_eq!(all.recv().await.unwrap().id, TaskId(2));
        assert_eq!(events.watched_tasks(), 1);
        drop(other);
        assert_eq!(events.watched_tasks(), 1, "one watcher of task 2 is left");
        drop(one);
        assert_eq!(events.watched_tasks(), 0);
        drop(all);
        events.publish(task(3));
    }
}
