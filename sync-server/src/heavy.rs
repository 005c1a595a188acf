//! Bounds how much Automerge work on outside bytes runs at once.
//!
//! Applying a sync message runs on a tokio worker; three 9.5 MB Text
//! documents applied together took 3 × 1.1 GB and aborted a relay capped at
//! 3 GB (issue 11). budget.rs bounds one message; this bounds how many are
//! applied in parallel, so the peak is at most `PERMITS` budgets.

use tokio::sync::{Semaphore, SemaphorePermit};

/// One per core of the 2-core relay hosts measured.
const PERMITS: usize = 2;

static HEAVY: Semaphore = Semaphore::const_new(PERMITS);

/// Waits for a turn to apply a peer's Automerge changes.
pub(crate) async fn permit() -> SemaphorePermit<'static> {
    // The semaphore is never closed, so acquire cannot fail; if it ever did,
    // waiting for nothing would be worse than running unbounded once.
    match HEAVY.acquire().await {
        Ok(p) => p,
        Err(_) => unreachable!("the heavy-work semaphore is never closed"),
    }
}
