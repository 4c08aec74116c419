//! Who must arm the dispatcher's doorbell, and when: the counts behind the
//! lazy arm of [`super::doorbell`]'s protocol. Kept apart from the worker's
//! ring and mapping (its atomics are `crate::sync`'s) so that the loom
//! models in `doorbell` check this very code.

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One worker incarnation's readers and debts (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Threads reading the worker-to-host ring while they wait for a phase
    /// (`host::Help`).
    helpers: AtomicU32,
    /// The last reader left with nothing owed and did not arm the doorbell:
    /// the next request sent while no reader reads must.
    unwatched: AtomicBool,
    /// Requests sent to the live incarnation (phase starts, entry checks)
    /// and not answered yet, cancelled ones included (also the stall
    /// watchdog's measure: while it is above 0 and no frame comes, the
    /// worker is stuck).
    owed: AtomicU64,
}

impl Watch {
    /// A reader starts reading (it then disarms the doorbell, so that the
    /// worker's answers wake nobody).
    pub(super) fn enter(&self) {
        self.helpers.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether some reader reads the ring (the dispatcher need not).
    pub(super) fn read(&self) -> bool {
        self.helpers.load(Ordering::SeqCst) > 0
    }

    /// A reader leaves. `true`: the caller must [`Watch::take`] the duty to
    /// arm (the worker still owes answers, and nobody else reads).
    pub(super) fn leave(&self) -> bool {
        if self.helpers.fetch_sub(1, Ordering::SeqCst) != 1 {
            return false;
        }
        // SYNC POINT: store-buffering with `sent` (the sender counts its
        // request, then reads the mark): either we read its count and
        // watch, or it reads our mark and watches.
        self.unwatched.store(true, Ordering::SeqCst);
        self.owed.load(Ordering::SeqCst) > 0
    }

    /// Counts a request the worker will answer; before it is sent, so that
    /// its answer finds it counted. `SeqCst`: pairs with `leave`.
    pub(super) fn request(&self) {
        self.owed.fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back a request counted but not sent.
    pub(super) fn unrequest(&self) {
        self.answered();
    }

    /// An answer came (a worker that answers more than it was asked only
    /// blinds its own watchdog: the count stops at 0, as it does after a
    /// new incarnation's [`Watch::forget`]).
    pub(super) fn answered(&self) {
        let _ = self
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Requests not answered yet.
    pub(super) fn owed(&self) -> u64 {
        self.owed.load(Ordering::Relaxed)
    }

    /// A new incarnation owes nothing.
    pub(super) fn forget(&self) {
        self.owed.store(0, Ordering::Relaxed);
    }

    /// After a request is sent: `true` when the caller must [`Watch::take`]
    /// the duty to arm (no reader reads, and the last one left without
    /// arming).
    pub(super) fn sent(&self) -> bool {
        self.unwatched.load(Ordering::SeqCst) && self.helpers.load(Ordering::SeqCst) == 0
    }

    /// Claims the duty to arm the doorbell and look at the ring once more;
    /// `true` for exactly one claimant per mark.
    pub(super) fn take(&self) -> bool {
        self.unwatched.swap(false, Ordering::SeqCst)
    }
}
