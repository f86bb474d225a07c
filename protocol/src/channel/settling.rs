//! Exchanges whose reply tells what the agent now keeps for the client: a
//! `guest-file-open` (a handle, of which the agent holds a fixed number)
//! or a `guest-exec` that makes something in the guest. The agent acts on
//! the request whether or not its reply is read, so a caller that gives
//! its work up (a signal) while one is in flight would leave behind what
//! only the reply names. Instead it [settles](Settling::settle): drives the
//! work on until the step in flight has ended (within the reply timeout),
//! its outcome kept where the clean-up finds it (or undone by the step
//! itself), and drops the work only then.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Whether a step whose reply must be awaited is in flight on a channel;
/// shared between the work on the channel and whoever may give it up.
/// Each [`Channel`](crate::Channel) has one
/// ([`Channel::settling`](crate::Channel::settling)).
///
/// ```
/// use virtomate_protocol::Settling;
///
/// # async fn demo() {
/// let settling = Settling::default();
/// let steps = settling.clone();
/// let mut work = Box::pin(async move {
///     let step = steps.begin("a guest file is being opened: awaiting its handle, to close it");
///     // ... the open's exchange, its handle kept for the clean-up ...
///     drop(step);
///     steps.hold_if_given_up().await;
///     // ... more work, never reached once given up ...
/// });
/// // A signal: the open ends first, then the work is dropped.
/// let _ = settling.settle(&mut work).await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Settling(Arc<State>);

#[derive(Default)]
struct State {
    in_flight: AtomicBool,
    /// What the step in flight is, for the log of a caller that waits.
    what: Mutex<&'static str>,
    /// Whoever gives the work up has begun to: a step that ends goes no
    /// further (see [`Settling::hold_if_given_up`]).
    given_up: AtomicBool,
    ended: Notify,
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settling")
            .field("in_flight", &self.in_flight())
            .field("given_up", &self.0.given_up.load(Ordering::SeqCst))
            .finish()
    }
}

/// A step in flight, until dropped (replied to, failed, or cancelled).
#[must_use = "the step counts as in flight until this is dropped"]
pub struct Step(Arc<State>);

impl Drop for Step {
    fn drop(&mut self) {
        self.0.in_flight.store(false, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Settling {
    /// A step begins: in flight until the returned guard is dropped, once
    /// its outcome is kept for the clean-up (or undone). `what` says, for
    /// the log, what it is and why a caller giving up waits for it: `STEP:
    /// WHY` ("a guest file is being opened: awaiting its handle, to close
    /// it"; see [`step_in_flight`](Self::step_in_flight)). A new
    /// step is nobody's to hold: whoever gave up earlier work has dropped
    /// it by now.
    pub fn begin(&self, what: &'static str) -> Step {
        *self.0.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.0.given_up.store(false, Ordering::SeqCst);
        self.0.in_flight.store(true, Ordering::SeqCst);
        Step(self.0.clone())
    }

    /// After a step has ended: never goes on where the work is being given
    /// up. Its next request would otherwise be sent in the same step as
    /// the last one's reply is taken, before the work is dropped.
    pub async fn hold_if_given_up(&self) {
        if self.given_up() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether whoever drives the work has begun to give it up: a step
    /// that ends then undoes what it made, if it can, rather than keep it
    /// in a state the work's dropping loses.
    pub fn given_up(&self) -> bool {
        self.0.given_up.load(Ordering::SeqCst)
    }

    /// Whether a step awaits its reply.
    pub fn in_flight(&self) -> bool {
        self.0.in_flight.load(Ordering::SeqCst)
    }

    /// What the step in flight is and why it is awaited, as
    /// [`begin`](Self::begin) was told.
    fn what(&self) -> Option<&'static str> {
        let what = *self.0.what.lock().unwrap_or_else(|e| e.into_inner());
        self.in_flight().then_some(what)
    }

    /// The step in flight, without the why ("a guest file is being
    /// opened"): for a caller that stops waiting for it (a second signal)
    /// to say what may be left.
    pub fn step_in_flight(&self) -> Option<&'static str> {
        self.what()
            .map(|what| what.split_once(": ").map_or(what, |(step, _)| step))
    }

    /// Drives `work` on until no step of its is in flight: `None` then, or
    /// its outcome if it ends first. From here on, a step of `work` that
    /// ends goes no further.
    pub async fn settle<W: Future + Unpin>(&self, work: &mut W) -> Option<W::Output> {
        self.0.given_up.store(true, Ordering::SeqCst);
        if let Some(what) = self.what() {
            tracing::info!("given up while {what}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_in_flight_ends_before_the_work_is_given_up_and_goes_no_further() {
        let settling = Settling::default();
        let (reply, replied) = tokio::sync::oneshot::channel::<u32>();
        let steps = settling.clone();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let record = kept.clone();
        let mut work = Box::pin(async move {
            let step = steps.begin("a test step: to see it end");
            let handle = replied.await.unwrap();
            record.lock().unwrap().push(handle);
            drop(step);
            steps.hold_if_given_up().await;
            record.lock().unwrap().push(0);
        });
        // Started, the step in flight.
        assert!(futures_poll_once(&mut work).await);
        assert_eq!(settling.what(), Some("a test step: to see it end"));
        assert_eq!(settling.step_in_flight(), Some("a test step"));
        reply.send(7).unwrap();
        assert_eq!(settling.settle(&mut work).await, None);
        assert_eq!(*kept.lock().unwrap(), vec![7]);
        assert_eq!(settling.what(), None);
        // A later step is nobody's to hold.
        drop(settling.begin("another"));
        assert!(!settling.given_up());
    }

    /// Polls `work` once: true if it is still pending.
    async fn futures_poll_once<W: Future + Unpin>(work: &mut W) -> bool {
        tokio::select! {
            biased;
            _ = work => false,
            () = std::future::ready(()) => true,
        }
    }
}
