//! `virtomate copy SRC DEST`: one file into or out of a guest, with a
//! one-line JSON summary (unless standard output is the data); `copy -r`
//! a directory tree. The copy itself is `crate::copy`'s.

use std::future::Future;

use virtomate_protocol::Settling;

use super::{Answer, Context};
use crate::agent::{cut_short, DomainAgent, Settled, Signals, Silence};
use crate::cli::CopyArgs;
use crate::copy::location::{self, Direction, Location};
use crate::copy::progress::Show;
use crate::copy::{Copy, Options, Source, Summary, Target, CLEAN_UP_TIME};
use crate::error::{CliError, ErrorKind};

pub async fn run(args: CopyArgs, context: &Context) -> Result<Answer, CliError> {
    let direction = location::direction(&args.source, &args.dest)?;
    let options = Options {
        chunk_size: args.chunk_size,
        mode: args.mode,
        verify: args.verify,
        compress: args.compress,
        progress: match (args.progress, args.no_progress) {
            (true, _) => Show::Always,
            (_, true) => Show::Never,
            _ => Show::Auto,
        },
    };
    if args.recursive {
        return run_tree(direction, options, context).await;
    }
    let mut signals = Signals::install()?;
    let (domain, data_on_stdout) = match &direction {
        Direction::In { domain, .. } => (domain.clone(), false),
        Direction::Out { domain, dest, .. } => (domain.clone(), *dest == Location::Stdio),
    };
    // The local source is opened first: a missing file needs no agent.
    let source = match &direction {
        Direction::In {
            source: Location::Local(path),
            ..
        } => Some(Source::open(path).await?),
        Direction::In { .. } => Some(Source::stdin()),
        Direction::Out { .. } => None,
    };
    let mut agent = tokio::select! {
        agent = DomainAgent::connect(&domain, context) => agent?,
        _ = signals.arrival() => return Err(interrupted("while connecting to the agent; nothing was copied")),
    };
    let summary = copy(&mut agent, direction, source, &options, &mut signals).await;
    agent.close().await;
    let summary = summary?;
    if data_on_stdout {
        return Ok(Answer::Nothing);
    }
    let json = serde_json::to_value(&summary).expect("a summary always serializes");
    Ok(Answer::Json(json))
}

/// Runs the copy unless a signal comes first; after a failure or a signal,
/// cleans up (a second signal cuts that short) and says what is left.
async fn copy(
    agent: &mut DomainAgent,
    direction: Direction,
    source: Option<Source>,
    options: &Options,
    signals: &mut Signals,
) -> Result<Summary, CliError> {
    let silence = agent.silence();
    let through_libvirtd = agent.through_libvirtd();
    let mut copy = Copy::new(agent);
    let settling = copy.settling();
    let work = async {
        match direction {
            Direction::In { path, .. } => {
                let source = source.expect("a source for a copy in");
                copy.push(source, &path, options).await
            }
            Direction::Out { path, dest, .. } => {
                let target = match dest {
                    Location::Local(path) => Target::Path(path),
                    _ => Target::Stream(Box::new(tokio::io::stdout())),
                };
                copy.pull(&path, target, options).await
            }
        }
    };
    let outcome = unless_signalled(work, &settling, signals).await;
    match outcome {
        Ok(summary) => Ok(summary),
        Err(error) => Err(failed(&mut copy, error, &silence, through_libvirtd, signals).await),
    }
}

/// Runs the copy `work` unless a signal comes first. A signal while a
/// step of the copy awaits a reply naming what the agent keeps (a guest
/// file being opened, its private directory being made) lets the step end
/// first (see [`Signals::settle`]), so that the clean-up closes the handle
/// or removes the directory; a second signal cuts that short, and the
/// error says what may stay.
async fn unless_signalled<T>(
    work: impl Future<Output = Result<T, CliError>>,
    settling: &Settling,
    signals: &mut Signals,
) -> Result<T, CliError> {
    tokio::pin!(work);
    tokio::select! {
        outcome = &mut work => return outcome,
        _ = signals.arrival() => {}
    }
    match signals.settle(settling, &mut work).await {
        Settled::Ended(outcome) => outcome,
        Settled::Idle => Err(interrupted("during the copy")),
        Settled::CutShort(step) => Err(interrupted(&format!("during the copy; {}", cut_short(step)))),
    }
}

/// The error of a copy that failed with `error`, once cleaned up (a
/// signal cuts that short), saying what is left where. A VM that stopped
/// under it is said as a run cut off so says it (see
/// [`Silence::run_failure`]); an agent that went silent comes with QEMU's
/// run state.
async fn failed(
    copy: &mut Copy<'_, DomainAgent>,
    error: CliError,
    silence: &Silence,
    through_libvirtd: bool,
    signals: &mut Signals,
) -> CliError {
    if let Some(stopped) = silence.stopped_during(&error, through_libvirtd).await {
        let left = copy.clean_up_after_stop().await;
        return stopped
            .error("its agent went with it, and the copy was cut short")
            .with_hint(left);
    }
    if matches!(
        error.kind(),
        ErrorKind::AgentTimeout | ErrorKind::AgentDisconnected
    ) {
        copy.start_afresh().await;
    }
    let left = tokio::select! {
        left = tokio::time::timeout(CLEAN_UP_TIME, copy.clean_up()) => left.ok(),
        _ = signals.arrival() => None,
    };
    let left = left.unwrap_or_else(|| copy.pending());
    silence.explain(error).await.with_hint(left)
}

/// `copy -r`: between a local directory and a guest one, never `-`.
async fn run_tree(direction: Direction, options: Options, context: &Context) -> Result<Answer, CliError> {
    let (domain, local) = match &direction {
        Direction::In {
            source: Location::Local(path),
            domain,
            ..
        } => (domain.clone(), path),
        Direction::Out {
            dest: Location::Local(path),
            domain,
            ..
        } => (domain.clone(), path),
        _ => {
            return Err(CliError::usage(
                "copy -r copies between directories: - is no directory",
            ))
        }
    };
    // A missing local source needs no agent.
    if matches!(direction, Direction::In { .. }) && !local.is_dir() {
        return Err(CliError::new(
            ErrorKind::Path,
            format!(
                "{} is not a directory; copy -r takes a directory",
                local.display()
            ),
        )
        .with_hint("copy one file without -r"));
    }
    let mut signals = Signals::install()?;
    let mut agent = tokio::select! {
        agent = DomainAgent::connect(&domain, context) => agent?,
        _ = signals.arrival() => return Err(interrupted("while connecting to the agent; nothing was copied")),
    };
    let silence = agent.silence();
    let through_libvirtd = agent.through_libvirtd();
    let mut copy = Copy::new(&mut agent);
    let settling = copy.settling();
    let work = async {
        match &direction {
            Direction::In {
                source: Location::Local(source),
                path,
                ..
            } => copy.push_tree(source, path, &options).await,
            Direction::Out {
                path,
                dest: Location::Local(dest),
                ..
            } => copy.pull_tree(path, dest, &options).await,
            _ => unreachable!("checked above"),
        }
    };
    let outcome = unless_signalled(work, &settling, &mut signals).await;
    let outcome = match outcome {
        Ok(summary) => Ok(summary),
        Err(error) => Err(failed(&mut copy, error, &silence, through_libvirtd, &mut signals).await),
    };
    agent.close().await;
    let json = serde_json::to_value(outcome?).expect("a summary always serializes");
    Ok(Answer::Json(json))
}

fn interrupted(when: &str) -> CliError {
    CliError::new(ErrorKind::Interrupted, format!("interrupted {when}"))
}
