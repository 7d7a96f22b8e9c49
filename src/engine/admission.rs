//! Admission: a bound on concurrent generations with a bounded queue in front.
//!
//! A request takes a *slot* at once or is refused (→ `429`); a slot holder then waits,
//! first come first served, for one of `max_active` *run* permits. Nothing waits
//! without a slot, so the queue cannot grow past `max_queued`.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    slots: Arc<Semaphore>,
    active: Arc<Semaphore>,
    max_active: usize,
    max_slots: usize,
}

/// A place in the queue; dropping it gives the place back.
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    active: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_active: usize, max_queued: usize) -> Self {
        let max_active = max_active.max(1);
        let max_slots = max_active + max_queued;
        Admission {
            slots: Arc::new(Semaphore::new(max_slots)),
            active: Arc::new(Semaphore::new(max_active)),
            max_active,
            max_slots,
        }
    }

    /// A ticket, or `None` when every run permit and queue place is taken.
    pub fn try_admit(&self) -> Option<Ticket> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        Some(Ticket {
            _slot: slot,
            active: self.active.clone(),
        })
    }

    pub fn running(&self) -> usize {
        self.max_active - self.active.available_permits()
    }

    pub fn queued(&self) -> usize {
        (self.max_slots - self.slots.available_permits()).saturating_sub(self.running())
    }
}

impl Ticket {
    /// Waits for a run permit; hold it for as long as the generation runs.
    pub async fn activate(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.active.clone().acquire_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_then_refuse() {
        let a = Admission::new(1, 1);
        let first = a.try_admit().unwrap();
        let _run = first.activate().await.unwrap();
        let second = a.try_admit().unwrap();
        assert!(a.try_admit().is_none(), "one running + one queued is full");
        assert_eq!((a.running(), a.queued()), (1, 1));
        drop(_run);
        drop(first);
        let _run2 = second.activate().await.unwrap();
        assert!(a.try_admit().is_some());
    }
}
