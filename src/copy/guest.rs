//! What `copy` asks of the guest: its files through `guest-file-*`, and
//! the few programs (`test`, `mkdir`, `chmod`, `mv`, `rm`, `sha256sum`,
//! `gzip`) it runs there through `guest-exec`.

use virtomate_protocol::qga::{
    GuestExec, GuestFileClose, GuestFileOpen, GuestFileRead, GuestFileSeek, GuestFileWrite, Whence,
};
use virtomate_protocol::{Connector, Error as AgentError, Phase};

use super::agent::FileAgent;
use crate::error::{CliError, ErrorKind};

/// How a program run in the guest ended.
pub struct Ran {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// `program` failed: its exit status and what it said.
    pub fn failure(&self, program: &str) -> String {
        let status = match self.exit_code {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        };
        let said = self.stderr.trim();
        if said.is_empty() {
            format!("{program} {status} in the guest")
        } else {
            format!("{program} {status} in the guest: {said}")
        }
    }
}

/// Runs `program` with `args` in the guest and waits for it to end. A
/// program the guest lacks, or `guest-exec` being disabled, is an error
/// that says what `copy` needed it for (`purpose`).
pub async fn run(
    agent: &mut impl FileAgent,
    program: &str,
    args: &[&str],
    purpose: &str,
) -> Result<Ran, CliError> {
    let exec = GuestExec::new(program, args.iter().copied());
    let pid = match agent.execute_raw(&exec).await {
        Ok(started) => started.pid,
        Err(error) if broken_request(&error) => return Err(file_error(agent, error)),
        Err(error @ AgentError::Agent { .. }) => {
            return Err(agent
                .error(error)
                .with_hint(format!("copy runs {program} in the guest {purpose}")))
        }
        Err(other) => return Err(file_error(agent, other)),
    };
    let finished = agent.wait_for_exit(pid).await?;
    let status = finished.status;
    Ok(Ran {
        exit_code: status.exitcode,
        stdout: status.out_data.unwrap_or_default(),
        stderr: String::from_utf8_lossy(&status.err_data.unwrap_or_default()).into_owned(),
    })
}

/// Whether `path` is a directory in the guest (`test -d`, which follows
/// symbolic links), and if so whether it is a symbolic link to one.
pub async fn directory_kind(agent: &mut impl FileAgent, path: &str) -> Result<DirKind, CliError> {
    let purpose = "to tell whether the destination is a directory";
    if !run(agent, "test", &["-d", path], purpose).await?.ok() {
        return Ok(DirKind::NotADirectory);
    }
    if run(agent, "test", &["-h", path], purpose).await?.ok() {
        Ok(DirKind::LinkToDirectory)
    } else {
        Ok(DirKind::Directory)
    }
}

/// The mode (`st_mode`: type and permission bits) of the guest file
/// `path`, links followed, as `stat -L -c %f` prints it; `None` where the
/// guest cannot say (`guest-exec` disabled, no `stat`, or `stat` failed:
/// opening the file then says why).
pub async fn file_mode(agent: &mut impl FileAgent, path: &str) -> Result<Option<u32>, CliError> {
    let purpose = "to tell whether the source is a regular file, and its mode";
    match run(agent, "stat", &["-L", "-c", "%f", path], purpose).await {
        Ok(ran) if ran.ok() => {
            let said = String::from_utf8_lossy(&ran.stdout);
            Ok(u32::from_str_radix(said.trim(), 16).ok())
        }
        Ok(_) => Ok(None),
        Err(error) if error.kind() == ErrorKind::AgentCommand => Ok(None),
        Err(error) => Err(error),
    }
}

/// The file type bits of a mode, and what is not a regular file is.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// Refuses a `mode` (as [`file_mode`]'s) that is not a regular file's.
pub fn regular_file(path: &str, mode: u32) -> Result<(), CliError> {
    let what = match mode & S_IFMT {
        S_IFREG => return Ok(()),
        0o040000 => {
            return Err(CliError::new(
                ErrorKind::Path,
                format!("{path} is a directory in the guest; copy takes one file"),
            ))
        }
        0o010000 => "a FIFO",
        0o020000 => "a character device",
        0o060000 => "a block device",
        0o140000 => "a socket",
        _ => "an unknown type",
    };
    Err(CliError::new(
        ErrorKind::Path,
        format!("{path} is not a regular file in the guest ({what}); copy takes one regular file"),
    ))
}

pub enum DirKind {
    NotADirectory,
    Directory,
    LinkToDirectory,
}

/// An open file in the guest, known by its handle.
#[derive(Debug, Clone, Copy)]
pub struct Handle(pub i64);

/// `guest-file-open`; the agent's own description of a failure, as a
/// [`ErrorKind::Path`] error, unless the command is disabled.
pub async fn open(agent: &mut impl FileAgent, path: &str, mode: &str) -> Result<Handle, CliError> {
    match agent.execute_raw(&GuestFileOpen::new(path, mode)).await {
        Ok(handle) => Ok(Handle(handle)),
        Err(AgentError::Agent {
            ref class, ref desc, ..
        }) if class != "CommandNotFound" => Err(CliError::new(
            ErrorKind::Path,
            format!("cannot open {path} in the guest: {desc}"),
        )),
        Err(other) => Err(file_error(agent, other)),
    }
}

/// Writes `buf` at `at`, the handle's position. Where the connection
/// drops under it and the agent outlives that (libvirtd went away: see
/// `Connector::outlives_disconnect`), whether the agent wrote it is not
/// known: it is written again at `at` on a new connection, the same bytes
/// where they were or not.
pub async fn write(
    agent: &mut impl FileAgent,
    handle: Handle,
    buf: Vec<u8>,
    at: u64,
) -> Result<Vec<u8>, CliError> {
    let mut request = GuestFileWrite {
        handle: handle.0,
        buf,
    };
    let mut reply = agent.execute_raw(&request).await;
    if again_at(agent, handle, at, &reply).await? {
        reply = agent.execute_raw(&request).await;
    }
    let reply = reply.map_err(|e| file_error(agent, e))?;
    let sent = request.buf.len() as u64;
    if reply.count != sent {
        return Err(CliError::new(
            ErrorKind::AgentCommand,
            format!(
                "the agent on {} wrote {} of {sent} bytes to the file",
                agent.socket().display(),
                reply.count
            ),
        ));
    }
    request.buf.clear();
    Ok(request.buf)
}

/// Up to `count` bytes from `at`, the handle's position, and whether the
/// end was reached; read again from `at` on a new connection where the
/// connection drops under it as under a [`write`].
pub async fn read(
    agent: &mut impl FileAgent,
    handle: Handle,
    count: u64,
    at: u64,
) -> Result<(Vec<u8>, bool), CliError> {
    let request = GuestFileRead {
        handle: handle.0,
        count: Some(count),
    };
    let mut reply = agent.execute_raw(&request).await;
    if again_at(agent, handle, at, &reply).await? {
        reply = agent.execute_raw(&request).await;
    }
    let reply = reply.map_err(|e| file_error(agent, e))?;
    let eof = reply.eof;
    let data = reply.into_data(count).map_err(|e| agent.error(e))?;
    Ok((data, eof))
}

/// Whether `reply` is a connection dropped under a request that the
/// agent outlives: the handle is then put back at `at`, over a new
/// connection, for the request to be made again.
async fn again_at<T>(
    agent: &mut impl FileAgent,
    handle: Handle,
    at: u64,
    reply: &Result<T, AgentError>,
) -> Result<bool, CliError> {
    if !matches!(reply, Err(AgentError::Disconnected)) || !agent.channel().connector().outlives_disconnect() {
        return Ok(false);
    }
    tracing::info!(
        at,
        "the connection dropped under a file's request: again from there on a new one"
    );
    let seek = GuestFileSeek {
        handle: handle.0,
        offset: at as i64,
        whence: Whence::Set,
    };
    agent.execute_raw(&seek).await.map_err(|e| file_error(agent, e))?;
    Ok(true)
}

/// The size of the open file: its position after a seek to the end (the
/// seek also flushes what the agent buffers, so a full disk shows here).
pub async fn size(agent: &mut impl FileAgent, handle: Handle) -> Result<u64, CliError> {
    seek(agent, handle, Whence::End).await
}

pub async fn rewind(agent: &mut impl FileAgent, handle: Handle) -> Result<(), CliError> {
    seek(agent, handle, Whence::Set).await.map(drop)
}

async fn seek(agent: &mut impl FileAgent, handle: Handle, whence: Whence) -> Result<u64, CliError> {
    let seek = GuestFileSeek {
        handle: handle.0,
        offset: 0,
        whence,
    };
    let reply = agent.execute_raw(&seek).await.map_err(|e| file_error(agent, e))?;
    Ok(reply.position)
}

pub async fn close(agent: &mut impl FileAgent, handle: Handle) -> Result<(), CliError> {
    agent
        .execute_raw(&GuestFileClose { handle: handle.0 })
        .await
        .map(drop)
        .map_err(|e| file_error(agent, e))
}

/// A failure of a `guest-file-*` command on an open handle. An agent that
/// no longer knows the handle has restarted; one that does not answer may
/// have too, as a run says; a disabled command is named, as the agent
/// names it.
pub fn file_error(agent: &impl FileAgent, error: AgentError) -> CliError {
    let shown = agent.socket().display().to_string();
    match &error {
        AgentError::Agent { desc, .. } if broken_request(&error) => CliError::new(
            ErrorKind::AgentDisconnected,
            format!("the agent on {shown} could not read virtomate's request ({desc})"),
        )
        .with_hint("it has probably restarted in the guest while reading one, and read the rest of it anew"),
        AgentError::Timeout {
            phase: Phase::Reply(_),
            ..
        } if !agent.through_libvirtd() => agent.error(error).with_hint_instead(
            "it may have stopped or restarted in the guest, or the guest is very slow (raise \
             --reply-timeout)",
        ),
        AgentError::Agent { desc, .. } if desc.contains("has not been found") && desc.contains("handle") => {
            CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} no longer knows the open file ({desc})"),
            )
            .with_hint("it has probably restarted in the guest")
        }
        // The pid of a helper of the copy's (a `guest-run -i` chunk's
        // stager or mover) that the agent forgot: only a new agent does.
        AgentError::Agent { command, class, desc }
            if command == "guest-exec-status" && class != "CommandNotFound" =>
        {
            CliError::new(
                ErrorKind::AgentDisconnected,
                format!("the agent on {shown} no longer knows a program of the copy's ({desc})"),
            )
            .with_hint("it has probably restarted in the guest")
        }
        AgentError::Agent { class, .. } if class == "CommandNotFound" => agent.error(error).with_hint(
            "copy needs guest-file-open, -read, -write, -seek and -close (and guest-exec to copy into the \
             guest): check the agent's --block-rpcs/--allow-rpcs",
        ),
        _ => agent.error(error),
    }
}

/// Whether the agent refused a request as no JSON, as a new agent does
/// that reads the rest of a request the old one had begun to read.
fn broken_request(error: &AgentError) -> bool {
    matches!(error, AgentError::Agent { desc, .. }
        if desc.contains("JSON parse error") || desc.contains("QMP input must be a JSON object"))
}

/// 128 random bits, in hex: a name nobody in the guest can guess.
pub fn random_name() -> Result<String, CliError> {
    virtomate_protocol::random_name()
        .map_err(|e| CliError::io("cannot get random bytes for a temporary name", e))
}
