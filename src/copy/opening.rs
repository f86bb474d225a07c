//! A `guest-file-open` awaiting its reply when the copy is given up (a
//! signal): the agent opens the file whether or not its reply is read,
//! and keeps the handle (it holds a fixed number of them) until it is
//! closed. So the reply is awaited, within the reply timeout, before the
//! copy's future is dropped: the handle is then the clean-up's to close.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Whether a copy's `guest-file-open` is awaiting its reply; shared
/// between the copy and whoever may give it up.
#[derive(Clone, Default)]
pub struct Opening(Arc<State>);

#[derive(Default)]
struct State {
    in_flight: AtomicBool,
    /// Whoever gives the copy up has begun to: an open that ends goes no
    /// further (see [`Opening::hold_if_given_up`]).
    given_up: AtomicBool,
    ended: Notify,
}

/// An open in flight, until dropped (replied to, failed, or cancelled).
pub(super) struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.store(false, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Opening {
    /// An open is sent: in flight until the returned guard is dropped,
    /// once its handle is kept for the clean-up.
    pub(super) fn begin(&self) -> InFlight {
        self.0.in_flight.store(true, Ordering::SeqCst);
        InFlight(self.0.clone())
    }

    /// After an open has ended: never goes on where the copy is being given
    /// up. Its next request would otherwise be sent in the same step as
    /// the open's reply is taken, before the copy is dropped.
    pub(super) async fn hold_if_given_up(&self) {
        if self.0.given_up.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Whether an open is awaiting its reply.
    pub fn in_flight(&self) -> bool {
        self.0.in_flight.load(Ordering::SeqCst)
    }

    /// Drives `work` (the copy) on until no open of its awaits a reply:
    /// `None` then, or its outcome if it ends first.
    pub async fn settle<W: Future + Unpin>(&self, work: &mut W) -> Option<W::Output> {
        self.0.given_up.store(true, Ordering::SeqCst);
        if self.in_flight() {
            tracing::info!("given up while a guest file is being opened: awaiting its handle, to close it");
        }
        loop {
            let ended = self.0.ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so that no end goes unseen.
            ended.as_mut().enable();
            if !self.in_flight() {
                return None;
            }
            tokio::select! {
                outcome = &mut *work => return Some(outcome),
                () = &mut ended => {}
            }
        }
    }
}
