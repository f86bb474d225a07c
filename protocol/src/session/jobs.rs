//! Work a session's caller does on the session's own connection: a file
//! copy, say, which the caller knows and the session does not. The
//! session runs each job between its own exchanges, with the channel to
//! the job alone until it ends.

use std::convert::Infallible;
use std::future::Future;

use tokio::sync::mpsc::Receiver;

use super::Request;
use crate::{Channel, Connector};

/// What a session is given to do: a request it serves itself, or a job
/// of the caller's (see [`Session::serve_jobs`](super::Session::serve_jobs)).
#[derive(Debug)]
pub enum Work<J> {
    /// A run or a ping, served as [`Session::serve`](super::Session::serve) serves it.
    Request(Request),
    /// A job for the caller's [`Jobs`].
    Job(J),
}

/// Runs the caller's jobs on the session's channel (an example is at
/// [`Session::serve_jobs`](super::Session::serve_jobs)).
pub trait Jobs<C: Connector> {
    /// What one job is.
    type Job;

    /// Does `job`, with `channel` to itself meanwhile: the programs the
    /// session runs are polled again once it returns. Its replies are
    /// the job's own business.
    fn run(&mut self, job: Self::Job, channel: &mut Channel<C>) -> impl Future<Output = ()>;
}

/// No jobs at all: what [`Session::serve`](super::Session::serve) runs with.
pub(super) struct NoJobs;

impl<C: Connector> Jobs<C> for NoJobs {
    type Job = Infallible;

    async fn run(&mut self, job: Infallible, _: &mut Channel<C>) {
        match job {}
    }
}

/// Where a session takes its work from.
pub(super) trait Incoming<J> {
    fn next(&mut self) -> impl Future<Output = Option<Work<J>>>;
}

impl Incoming<Infallible> for Receiver<Request> {
    async fn next(&mut self) -> Option<Work<Infallible>> {
        self.recv().await.map(Work::Request)
    }
}

impl<J> Incoming<J> for Receiver<Work<J>> {
    async fn next(&mut self) -> Option<Work<J>> {
        self.recv().await
    }
}
