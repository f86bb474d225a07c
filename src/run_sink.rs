//! Where the run engine's replies for one streamed run go, for the
//! commands that pass a guest program's output on as it comes (`guest-run
//! --follow` and `-i`, `shell`): output chunks to stdout and stderr at
//! once, the run's end kept for the command to report.

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use virtomate_protocol::follow::Stream;
use virtomate_protocol::session::{Failure, Outcome, Reply};

use crate::std_streams::write_all_waiting;

/// One run's replies: after a failure to write, nothing more is written
/// (the engine then stops the program).
#[derive(Default)]
pub struct RunSink {
    /// The run's end, once it came.
    pub outcome: Option<Result<Outcome, Failure>>,
    /// Told when the outcome comes.
    pub ended: Rc<Notify>,
    /// Set when the outcome comes, for the thread that reads stdin.
    pub program_ended: Arc<AtomicBool>,
    /// Why the output could not be written.
    pub failed: Option<io::Error>,
}

impl RunSink {
    /// Takes one reply of the engine: writes a chunk, or keeps the end.
    pub fn take(&mut self, reply: Reply) -> io::Result<()> {
        match reply.outcome {
            Ok(Outcome::Chunk { stream, bytes }) => self.write(stream, &bytes),
            outcome => {
                self.outcome = Some(outcome);
                self.program_ended.store(true, Ordering::Release);
                self.ended.notify_one();
                Ok(())
            }
        }
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        if self.failed.is_some() {
            return Err(io::Error::other("the output failed before"));
        }
        let written = match stream {
            Stream::Stdout => write_all_waiting(&mut io::stdout().lock(), bytes),
            Stream::Stderr => write_all_waiting(&mut io::stderr().lock(), bytes),
        };
        written.inspect_err(|error| self.failed = Some(io::Error::new(error.kind(), error.to_string())))
    }
}
