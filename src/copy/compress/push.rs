//! `--compress` into the guest: gzip streams in parts, each unpacked in
//! the guest while the next is sent (see the [module](super) docs).

use std::io::Write;
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use virtomate_protocol::qga::{GuestExec, GuestExecStatus};

use crate::copy::agent::FileAgent;
use crate::copy::guest::{self, Handle};
use crate::copy::local::Source;
use crate::copy::location::guest_parent;
use crate::copy::progress::Progress;
use crate::copy::{chunks, size_mismatch, Copy, Options, Summary, STDIN_MODE};
use crate::error::{CliError, ErrorKind};

/// Compressed bytes per part: small enough that the guest unpacks the
/// first while the rest is still on its way and the last is done soon
/// after it arrives, large enough that the few exchanges a part costs
/// (open, size, close, a `gzip -d`) stay small beside its transfer.
const PART_BYTES: usize = 256 << 10;

/// Raw chunks read and not yet compressed, and compressed chunks made and
/// not yet written: the memory a copy holds beyond them is bounded.
const QUEUED_RAW: usize = 4;
const QUEUED_PACKED: usize = 4;

/// What the compressing thread hands over.
enum Packed {
    /// The next bytes of the part being written.
    Bytes(Vec<u8>),
    /// The part's gzip stream has ended: it can be closed and unpacked.
    PartEnd,
}

/// The compressing thread: `raw` chunks in, gzip streams of about
/// [`PART_BYTES`] each out, in `chunk`-sized pieces. It ends with its
/// input, or when nobody takes its output any more (a copy that failed).
fn compress(mut raw: mpsc::Receiver<Vec<u8>>, packed: mpsc::Sender<Packed>, chunk: usize) {
    let emit = |made: Packed| packed.blocking_send(made).is_ok();
    let mut member = GzEncoder::new(Vec::with_capacity(2 * chunk), Compression::default());
    let mut in_part = 0;
    loop {
        let next = raw.blocking_recv();
        if let Some(data) = &next {
            // Writing into a Vec cannot fail.
            member.write_all(data).expect("compressing into memory");
            while member.get_ref().len() >= chunk {
                in_part += chunk;
                if !emit(Packed::Bytes(member.get_mut().drain(..chunk).collect())) {
                    return;
                }
            }
            if in_part < PART_BYTES {
                continue;
            }
        }
        // The part ends with its gzip stream: unpacked alone.
        let mut rest = member.finish().expect("compressing into memory");
        for out in rest.chunks(chunk) {
            if !emit(Packed::Bytes(out.to_vec())) {
                return;
            }
        }
        rest.clear();
        if !emit(Packed::PartEnd) || next.is_none() {
            return;
        }
        member = GzEncoder::new(rest, Compression::default());
        in_part = 0;
    }
}

/// Unpacks the parts named after `$1` (the directory), in order, onto the
/// end of `$1/data`, removing each once unpacked.
const UNPACK_SCRIPT: &str = r#"d=$1; shift
for p in "$@"; do gzip -d -c "$d/$p" >> "$d/data" && rm -f "$d/$p" || exit 1; done"#;

/// The parts of one copy: the one being written, those complete and not
/// yet unpacking, and the `gzip -d` running.
struct Parts {
    dir: String,
    next: usize,
    /// The part being written: its handle, name and bytes sent.
    open: Option<(Handle, String, u64)>,
    complete: Vec<String>,
    unpacking: Option<i64>,
}

impl<A: FileAgent> Copy<'_, A> {
    pub(in crate::copy) async fn push_compressed(
        &mut self,
        mut source: Source,
        path: &str,
        options: &Options,
    ) -> Result<Summary, CliError> {
        let started = Instant::now();
        let target = self.guest_target(path, source.name.as_deref()).await?;
        self.check_gzip().await?;
        let mode = options.mode.or(source.mode).unwrap_or(STDIN_MODE);
        let dir = self.private_dir(guest_parent(&target)).await?;
        let chunk = chunks::for_writes(options.chunk_size, self.agent.through_libvirtd()).min(PART_BYTES);
        let progress = Progress::new(options.progress, source.len);
        let mut hasher = options.verify.then(Sha256::new);
        let mut parts = Parts {
            dir: dir.clone(),
            next: 0,
            open: None,
            complete: Vec::new(),
            unpacking: None,
        };
        // Compressing runs on a thread of its own, while the agent takes
        // what it made: the host's gzip and the transfer overlap.
        let (raw, raw_in) = mpsc::channel::<Vec<u8>>(QUEUED_RAW);
        let (packed_out, mut packed) = mpsc::channel(QUEUED_PACKED);
        std::thread::spawn(move || compress(raw_in, packed_out, chunk));
        let mut raw = Some(raw);
        let mut buf = Vec::with_capacity(chunk);
        let mut read = 0u64;
        let copied = async {
            loop {
                // Owned: the sender may be dropped (at the end of the
                // input) while the permit is in hand.
                let room = async {
                    match raw.clone() {
                        Some(raw) => raw.reserve_owned().await.ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    made = packed.recv() => match made {
                        Some(Packed::Bytes(out)) => self.write_part(&mut parts, out).await?,
                        Some(Packed::PartEnd) => {
                            self.close_part(&mut parts).await?;
                            self.unpack_complete(&mut parts, false).await?;
                        }
                        // The thread is done: all is written.
                        None => return self.unpack_complete(&mut parts, true).await,
                    },
                    permit = room => {
                        let Some(permit) = permit else {
                            return Err(CliError::new(ErrorKind::Io, "the compressing thread stopped"));
                        };
                        source.read_chunk(&mut buf, chunk).await?;
                        if buf.is_empty() {
                            // No more: the thread finishes the last stream.
                            raw = None;
                            continue;
                        }
                        if let Some(hasher) = &mut hasher {
                            hasher.update(&buf);
                        }
                        read += buf.len() as u64;
                        progress.advance(buf.len() as u64);
                        permit.send(std::mem::replace(&mut buf, Vec::with_capacity(chunk)));
                    }
                }
            }
        }
        .await;
        if let Err(error) = copied {
            progress.abandon();
            return Err(error);
        }

        let temp = format!("{dir}/data");
        self.left.guest_temp = Some(temp.clone());
        self.set_mode(&temp, mode).await?;
        let size = self.guest_size(&temp).await?;
        if size != read {
            return Err(size_mismatch(&temp, size, read));
        }
        let sha256 = self.put_in_place(hasher, &temp, &target, &dir).await?;
        progress.finish();
        Ok(Summary {
            bytes: read,
            seconds: started.elapsed().as_secs_f64(),
            sha256,
        })
    }

    /// Writes `out` to the part being written, opening the next if none is
    /// (every gzip stream has a few bytes at least: no part is empty).
    async fn write_part(&mut self, parts: &mut Parts, out: Vec<u8>) -> Result<(), CliError> {
        if parts.open.is_none() {
            let name = format!("part.{}", parts.next);
            parts.next += 1;
            let file = format!("{}/{name}", parts.dir);
            let handle = self.open(&file, "w").await?;
            self.left.guest_temp = Some(file);
            parts.open = Some((handle, name, 0));
        }
        let (handle, _, sent) = parts.open.as_mut().expect("opened above");
        let len = out.len() as u64;
        guest::write(self.agent, *handle, out, *sent).await?;
        *sent += len;
        Ok(())
    }

    /// Closes the part being written, its size checked, for unpacking.
    async fn close_part(&mut self, parts: &mut Parts) -> Result<(), CliError> {
        let Some((handle, name, sent)) = parts.open.take() else {
            return Ok(());
        };
        let size = self.size_and_close(handle).await?;
        if size != sent {
            return Err(size_mismatch(&format!("{}/{name}", parts.dir), size, sent));
        }
        parts.complete.push(name);
        Ok(())
    }

    /// Starts unpacking the complete parts once the last `gzip -d` has
    /// ended (one look at it); with `all`, waits until everything is
    /// unpacked.
    async fn unpack_complete(&mut self, parts: &mut Parts, all: bool) -> Result<(), CliError> {
        loop {
            if let Some(pid) = parts.unpacking {
                let status = match all {
                    true => self.agent.wait_for_exit(pid).await?.status,
                    false => {
                        let status = self.agent.execute_raw(&GuestExecStatus { pid }).await;
                        let status = status.map_err(|e| self.agent.error_while_running(e, pid))?;
                        if !status.exited {
                            return Ok(());
                        }
                        status
                    }
                };
                parts.unpacking = None;
                self.left.program = None;
                if status.exitcode != Some(0) {
                    let ran = guest::Ran {
                        exit_code: status.exitcode,
                        stdout: Vec::new(),
                        stderr: String::from_utf8_lossy(status.err_data.as_deref().unwrap_or_default())
                            .into_owned(),
                    };
                    return Err(CliError::new(ErrorKind::AgentCommand, ran.failure("gzip -d")));
                }
            }
            if parts.complete.is_empty() {
                return Ok(());
            }
            let mut args = vec!["-c", UNPACK_SCRIPT, "sh", &parts.dir];
            args.extend(parts.complete.iter().map(String::as_str));
            let exec = GuestExec::new("/bin/sh", args);
            let started = self.agent.execute_raw(&exec).await;
            let pid = started.map_err(|e| self.agent.error(e))?.pid;
            parts.complete.clear();
            parts.unpacking = Some(pid);
            self.left.program = Some(pid);
            if !all {
                return Ok(());
            }
        }
    }

    /// The size of the guest file `path`, opened for it.
    async fn guest_size(&mut self, path: &str) -> Result<u64, CliError> {
        let handle = self.open(path, "r").await?;
        self.size_and_close(handle).await
    }
}
