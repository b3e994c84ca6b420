//! The gate in front of the pooling allocator's instance slots: a run waits here for a free
//! slot before its clock starts, instead of failing on an exhausted pool.

use std::sync::{Condvar, Mutex, PoisonError};

/// A counting semaphore over the pooling allocator's instance slots.
pub(crate) struct SlotGate {
    free: Mutex<u32>,
    freed: Condvar,
}

/// A slot held until it is dropped.
pub(crate) struct SlotGuard<'a>(&'a SlotGate);

impl SlotGate {
    pub(crate) fn new(slots: u32) -> Self {
        Self {
            free: Mutex::new(slots.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot and takes it.
    pub(crate) fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_waits_for_a_slot_to_be_released() {
        let gate = std::sync::Arc::new(SlotGate::new(1));
        let held = gate.acquire();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _slot = gate.acquire();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(50))
                .is_err(),
            "the second run got a slot while the only one was held"
        );
        drop(held);
        rx.recv().unwrap();
        waiter.join().unwrap();
    }
}
