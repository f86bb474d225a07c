//! Many commands on one VM: through one `virtomate session` against fresh
//! `guest-run` processes and an in-process loop on one held connection;
//! concurrent runs; a quick run beside a long one; whole processes against
//! fair in-process floors. Prints figures and ratios measured in this one
//! run; asserts nothing about time.
//!
//! `cargo bench --bench parallel` (scripts/bench.sh runs it);
//! `BENCH_RUNS` sets the commands per figure (default 100), `BENCH_PARTS`
//! the figures to print (`BENCH_PARTS=13`: the first and the third).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::host_agent::HostAgent;
use support::test_vm::TestVm;
use virtomate_protocol::qga::{GuestExec, GuestPing};
use virtomate_protocol::session::{Outcome, Reply, Request, RunRequest, Session, SessionOptions};
use virtomate_protocol::{ClientOptions, PollSchedule, QgaClient, SocketConnector};

/// Rounds the quick-command figures are interleaved in.
const ROUNDS: usize = 5;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vm = TestVm::boot("bench-parallel");
    let host = HostAgent::start();
    let socket = vm.socket();
    println!("{runs} commands per figure; times in milliseconds");
    println!("binary: {}", support::virtomate_path().display());

    // 1. Many quick commands, in interleaved rounds so that a change in
    // the machine's load falls on every figure alike. The loops on one
    // connection are timed once connected: whether a fresh connection
    // meets the agent awake or asleep (up to 100 ms) depends on what ran
    // just before, and is not what a command costs.
    if part('1') {
        let rounds = ROUNDS.min(runs);
        let per_round = runs / rounds;
        let mut figures = [Duration::ZERO; 4];
        let mut session_over_held = Vec::new();
        for _ in 0..rounds {
            let round = [
                session_loop(&vm.name, per_round) / per_round as u32,
                per_command(per_round, || (0..per_round).for_each(|_| cli_true(&vm.name))),
                fresh_runtime().block_on(held_loop(&socket, per_round)) / per_round as u32,
                fresh_runtime().block_on(engine_loop(&socket, per_round)) / per_round as u32,
            ];
            session_over_held.push(ratio(round[0], round[2]));
            for (total, figure) in figures.iter_mut().zip(round) {
                *total += figure / rounds as u32;
            }
        }
        let [session, fresh, held, engine] = figures;
        session_over_held.sort_by(f64::total_cmp);
        println!();
        println!("{runs} sequential /bin/true on the test VM in {rounds} interleaved rounds, per command:");
        println!("  one session          {:>8.2}", ms(session));
        println!(
            "  fresh guest-run      {:>8.2}   ({:.2}x the session; goal >= 3)",
            ms(fresh),
            ratio(fresh, session)
        );
        println!(
            "  held connection loop {:>8.2}   (session is {:.2}x this; goal <= 1.2; rounds {:.2} to {:.2})",
            ms(held),
            ratio(session, held),
            session_over_held[0],
            session_over_held[rounds - 1]
        );
        println!(
            "  session engine alone {:>8.2}   (in this process, no CLI: {:.2}x the held loop)",
            ms(engine),
            ratio(engine, held)
        );
    }

    // 2. Concurrent long runs by name.
    if part('2') {
        let single = timed(|| wait_ok(spawn_cli(&vm.name, &["sleep", "3"])));
        let eight = timed(|| {
            let children: Vec<Child> = (0..8).map(|_| spawn_cli(&vm.name, &["sleep", "3"])).collect();
            children.into_iter().for_each(wait_ok);
        });
        println!();
        println!(
            "guest-run VM -- sleep 3 by name: one alone {:.0}, 8 at once {:.0} in all ({:.2}x; goal <= 1.5)",
            ms(single),
            ms(eight),
            ratio(eight, single)
        );
    }

    // 3. Quick runs beside a long one.
    if part('3') {
        let alone: Vec<Duration> = (0..20).map(|_| timed(|| cli_true(&vm.name))).collect();
        let long = spawn_cli(&vm.name, &["sleep", "30"]);
        // Past the time a young program keeps the channel: the run has
        // taken its turn, and let go of it between polls.
        let pid = long.id();
        support::wait_until(30, "the long run to take its turn", || support::holds_a_lock(pid));
        support::wait_until(30, "the long run to let go between polls", || {
            !support::holds_a_lock(pid)
        });
        let beside: Vec<Duration> = (0..20).map(|_| timed(|| cli_true(&vm.name))).collect();
        wait_ok(long);
        let worst = beside.iter().max().copied().unwrap_or_default();
        let (alone, beside) = (median(alone), median(beside));
        println!(
            "20 quick runs: median alone {:.1}, beside a sleep 30 {:.1} ({:.2}x; goal <= 2; \
             slowest beside {:.1})",
            ms(alone),
            ms(beside),
            ratio(beside, alone),
            ms(worst)
        );
    }

    // 4. Whole process against in-process floors.
    if part('4') {
        let startup = startup_of(&support::virtomate_path());
        println!();
        println!("process start-up (virtomate --version): {:.2}", ms(startup));
        let cargos = Path::new(env!("CARGO_BIN_EXE_virtomate"));
        if support::virtomate_path() != cargos {
            // What the static build saves beside cargo's dynamic one.
            println!("  cargo's dynamic build: {:.2}", ms(startup_of(cargos)));
        }
        for (label, socket) in [("host agent", host.socket()), ("test VM", vm.socket())] {
            // Taking turns, run by run, so that a change in the machine's
            // load falls on both alike. The floor: a fresh connection each
            // time, closed properly, the same schedule as the CLI, and as
            // long between runs as a process takes to start.
            let (mut cli, mut floor) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                cli.push(timed(|| cli_true(socket.to_str().unwrap())));
                std::thread::sleep(startup);
                floor.push(timed(|| runtime.block_on(fresh_connection(&socket))));
            }
            let (cli, floor) = (median(cli), median(floor));
            let (_, rss) =
                support::run_measured(&["guest-run", socket.to_str().unwrap(), "--", "/bin/true"], None);
            println!(
                "{label:<10}: guest-run process {:.2}, fresh-connection floor {:.2} (+{:.2} start-up gap), \
                 ratio {:.2}; peak RSS {} KiB",
                ms(cli),
                ms(floor),
                ms(startup),
                ratio(cli, floor),
                rss
            );
        }
        println!("goals: host agent ratio <= 1.5, test VM ratio <= 1.3, RSS < 8192 KiB");
    }
}

/// Whether to run figure `n`: all, unless `BENCH_PARTS` lists some
/// (`BENCH_PARTS=13`).
fn part(n: char) -> bool {
    std::env::var("BENCH_PARTS").map_or(true, |parts| parts.contains(n))
}

/// The median time of `BINARY --version`, a process's start and end.
fn startup_of(binary: &Path) -> Duration {
    let runs = (0..20).map(|_| {
        timed(|| {
            let status = std::process::Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        })
    });
    median(runs.collect())
}

/// A runtime of its own, dropped with everything it still holds.
fn fresh_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn per_command(runs: usize, work: impl FnOnce()) -> Duration {
    timed(work) / runs as u32
}

fn timed(work: impl FnOnce()) -> Duration {
    let started = Instant::now();
    work();
    started.elapsed()
}

fn spawn_cli(domain: &str, program: &[&str]) -> Child {
    support::virtomate()
        .args(["--timeout", "60", "guest-run", domain, "--"])
        .args(program)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"exit_code\":0"),
        "{out:?}"
    );
}

fn cli_true(domain: &str) {
    wait_ok(spawn_cli(domain, &["/bin/true"]));
}

/// `runs` requests through one session, each sent once the last is
/// answered; how long they took once a first ping was answered.
fn session_loop(domain: &str, runs: usize) -> Duration {
    let mut child = support::virtomate()
        .args(["session", domain])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, r#"{{"id": "warm-up", "ping": {{}}}}"#).unwrap();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("result"), "{line}");
    let started = Instant::now();
    for id in 0..runs {
        writeln!(stdin, r#"{{"id": {id}, "run": ["/bin/true"]}}"#).unwrap();
        stdin.flush().unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("\"exit_code\":0"), "{line}");
    }
    let took = started.elapsed();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    took
}

/// The protocol crate's session in this process: the CLI's engine without
/// its pipes and processes.
async fn engine_loop(socket: &Path, runs: usize) -> Duration {
    let connector = SocketConnector::new(socket, ClientOptions::default());
    let mut session = Session::new(connector, SessionOptions::default());
    let (requests, mut incoming) = tokio::sync::mpsc::channel(1);
    let (replies, mut answered) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    let drive = async move {
        requests.send(Request::ping("warm-up".into())).await.unwrap();
        answered.recv().await.unwrap().outcome.unwrap();
        let started = Instant::now();
        for id in 0..runs {
            let run = RunRequest::new("/bin/true", [""; 0]);
            requests.send(Request::run(id.into(), run)).await.unwrap();
            let reply = answered.recv().await.unwrap();
            assert!(matches!(reply.outcome, Ok(Outcome::Exited { .. })), "{reply:?}");
        }
        started.elapsed()
    };
    let serve = session.serve(&mut incoming, |reply| {
        replies.send(reply).unwrap();
        Ok(())
    });
    let ((), took) = tokio::join!(serve, drive);
    session.close().await;
    took
}

/// The same exchanges back to back on one connection, in this process.
async fn held_loop(socket: &Path, runs: usize) -> Duration {
    let mut agent = QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap();
    agent.execute(&GuestPing {}).await.unwrap();
    let started = Instant::now();
    for _ in 0..runs {
        run_true(&mut agent).await;
    }
    started.elapsed()
}

/// One `/bin/true` on a connection of its own, closed after.
async fn fresh_connection(socket: &Path) {
    let mut agent = QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap();
    run_true(&mut agent).await;
}

/// `/bin/true` started and polled to its end, as `guest-run` does.
async fn run_true(agent: &mut QgaClient) {
    let pid = agent
        .execute(&GuestExec::new("/bin/true", [""; 0]))
        .await
        .unwrap()
        .pid;
    agent.wait_for_exit(pid, PollSchedule::default()).await.unwrap();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
