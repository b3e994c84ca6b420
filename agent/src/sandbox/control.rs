//! Reaching a run from outside while it runs: [`RunControl`] kills it and reads its fuel so far;
//! [`FuelYields`] counts the guest's fuel yields to publish that figure.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::config::YIELD_FUEL;

/// A handle on a run in progress: kill it, or read how much fuel it has used so far. Cheap to
/// clone; give one to [`RunSpec::control`](super::RunSpec::control) and keep another.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    inner: Arc<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    killed: AtomicBool,
    notify: tokio::sync::Notify,
    fuel_used: AtomicU64,
}

impl RunControl {
    /// A new handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run: it ends with [`Outcome::Killed`](super::Outcome::Killed) within one
    /// fuel-yield interval (about a millisecond of wasm), whether the guest is running wasm or
    /// parked in a host call. Killing before the run starts makes it end at once; killing after
    /// it ended does nothing.
    pub fn kill(&self) {
        self.inner.killed.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
        self.inner.notify.notify_one();
    }

    /// Whether [`RunControl::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
    }

    /// Fuel used so far: while the run is in wasm, counted in whole fuel-yield intervals
    /// ([`YIELD_FUEL`]), so a lower bound until the run ends, when it is the report's figure.
    pub fn fuel_used(&self) -> u64 {
        self.inner.fuel_used.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fuel_used(&self, fuel: u64) {
        self.inner.fuel_used.store(fuel, Ordering::Relaxed);
    }

    /// Resolves once the run is killed (at once if it already was).
    pub(crate) async fn killed(&self) {
        let notified = self.inner.notify.notified();
        if !self.is_killed() {
            notified.await;
        }
    }
}

/// A metered guest's run, counting its fuel yields. wasmtime suspends the guest every
/// [`YIELD_FUEL`] units by waking its task and answering `Pending`; a host call that waits on a
/// timer or I/O does not wake the task while it is being polled, so it is not counted. Each
/// yield publishes the fuel used so far (whole intervals: a lower bound).
pub(crate) struct FuelYields<F> {
    guest: Pin<Box<F>>,
    control: Option<RunControl>,
    yields: u64,
}

impl<F> FuelYields<F> {
    /// Counts the yields of `guest` into `control` (none counted without one).
    pub(crate) fn new(guest: F, control: Option<RunControl>) -> Self {
        Self {
            guest: Box::pin(guest),
            control,
            yields: 0,
        }
    }
}

impl<F: Future> Future for FuelYields<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(control) = self.control.clone() else {
            return self.guest.as_mut().poll(cx);
        };
        let wake = Arc::new(SelfWake {
            woken: AtomicBool::new(false),
            outer: cx.waker().clone(),
        });
        let waker = Waker::from(wake.clone());
        let polled = self.guest.as_mut().poll(&mut Context::from_waker(&waker));
        if polled.is_pending() && wake.woken.load(Ordering::Relaxed) {
            self.yields += 1;
            control.set_fuel_used(self.yields.saturating_mul(YIELD_FUEL));
        }
        polled
    }
}

/// A waker that notes whether it was woken, and passes the wake on.
struct SelfWake {
    woken: AtomicBool,
    outer: Waker,
}

impl Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Relaxed);
        self.outer.wake_by_ref();
    }
}
