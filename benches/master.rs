//! The control master (`VIRTOMATE_PERSIST`): fresh `guest-run /bin/true`
//! processes through a master against one session's per-command time and
//! against fresh processes without a master, on the test VM and the host
//! agent, in interleaved rounds; how soon a raw client queued behind an
//! idle master is answered; the master's peak RSS. Prints figures and
//! ratios measured in this one run; asserts nothing about time.
//!
//! `cargo bench --bench master` (scripts/bench.sh runs it); `BENCH_RUNS`
//! sets the commands per figure (default 100), `BENCH_MASTER_HOST_ONLY=1`
//! leaves the test VM out, `VIRTOMATE_BIN` names the binary (scripts/bench.sh:
//! the static one virtomate ships).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::host_agent::HostAgent;
use support::test_vm::TestVm;

/// Rounds the figures are interleaved in.
const ROUNDS: usize = 5;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // BENCH_MASTER_HOST_ONLY=1: the host agent's figures alone, while
    // working on the master (no VM to boot, no TCG noise).
    let host_only = std::env::var_os("BENCH_MASTER_HOST_ONLY").is_some();
    let vm = (!host_only).then(|| TestVm::boot("bench-master"));
    let host = HostAgent::start();
    println!("{runs} sequential guest-run DOMAIN -- /bin/true per figure, in {ROUNDS} interleaved rounds");
    println!("binary: {}", support::virtomate_path().display());
    println!(
        "{:<11} {:>11} {:>11} {:>11} {:>9} {:>16} {:>16} {:>11}",
        "agent", "session ms", "master ms", "fresh ms", "start ms", "master/session", "fresh/master", "floor"
    );
    let mut rss = Vec::new();
    let mut agents = vec![("host agent", host.socket(), 1.5)];
    if let Some(vm) = &vm {
        agents.insert(0, ("test VM", vm.socket(), 1.3));
    }
    for (label, socket, goal) in agents {
        let rounds = ROUNDS.min(runs);
        let per_round = runs / rounds;
        let mut figures = [Duration::ZERO; 4];
        for _ in 0..rounds {
            let round = [
                session_loop(&socket, per_round) / per_round as u32,
                master_loop(&socket, per_round) / per_round as u32,
                timed(|| (0..per_round).for_each(|_| cli_true(&socket, false))) / per_round as u32,
                timed(|| (0..per_round).for_each(|_| cli_version())) / per_round as u32,
            ];
            for (total, figure) in figures.iter_mut().zip(round) {
                *total += figure / rounds as u32;
            }
        }
        let [session, master, fresh, start] = figures;
        println!(
            "{label:<11} {:>11.2} {:>11.2} {:>11.2} {:>9.2} {:>9.2} (<= {goal}) {:>10.2} (>= 3) {:>11.2}",
            ms(session),
            ms(master),
            ms(fresh),
            ms(start),
            ratio(master, session),
            ratio(fresh, master),
            ratio(session + start, session)
        );
        rss.push((label, master_rss_kib(&socket)));
    }
    println!(
        "the fresh/master goal is the test VM's, whose agent sleeps 100 ms between looks at a closed port;"
    );
    println!("the host agent has no such sleep, so there a master saves little more than the handshake.");
    println!(
        "start: a fresh `virtomate --version` (spawned, loaded, arguments parsed, exited), which every fresh"
    );
    println!("process pays; floor: master/session if the master added nothing but that start.");
    for (label, kib) in rss {
        println!("master peak RSS ({label}): {kib} KiB (goal < 16384)");
    }

    let Some(vm) = vm else {
        let _ = support::virtomate()
            .args(["control", "exit", host.socket().to_str().unwrap()])
            .stdout(Stdio::null())
            .status();
        return;
    };
    let socket = vm.socket();
    let answered: Vec<Duration> = (0..5).map(|_| raw_client_behind_idle_master(&socket)).collect();
    let worst = answered.iter().max().copied().unwrap_or_default();
    println!(
        "a raw client queued behind an idle master on the test VM, answered after: median {:.0} ms, \
         worst {:.0} ms of 5 (goal <= 1000)",
        ms(median(answered)),
        ms(worst)
    );
    for socket in [vm.socket(), host.socket()] {
        let _ = support::virtomate()
            .args(["control", "exit", socket.to_str().unwrap()])
            .stdout(Stdio::null())
            .status();
    }
}

/// `runs` fresh processes through the master, once a first one (not
/// timed) has found it connected: the session's figure, too, starts once
/// its connection is made. Between rounds the master has let go of the
/// channel for the session and the fresh processes, as it must, and its
/// next request connects anew (on the test VM, the agent's wake-up).
fn master_loop(socket: &Path, runs: usize) -> Duration {
    cli_true(socket, true);
    timed(|| (0..runs).for_each(|_| cli_true(socket, true)))
}

fn cli_true(socket: &Path, through_master: bool) {
    let mut command = support::virtomate();
    if through_master {
        command.env("VIRTOMATE_PERSIST", "120");
    } else {
        command.env_remove("VIRTOMATE_PERSIST");
    }
    let out = command
        .args([
            "--timeout",
            "60",
            "guest-run",
            socket.to_str().unwrap(),
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A fresh virtomate that does nothing but start and end.
fn cli_version() {
    let out = support::virtomate().arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `runs` requests through one session (no master), each sent once the
/// last is answered; how long they took once a first ping was answered.
fn session_loop(socket: &Path, runs: usize) -> Duration {
    let mut child = support::virtomate()
        .env_remove("VIRTOMATE_PERSIST")
        .args(["session", socket.to_str().unwrap()])
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

/// The master's own high-water mark of resident memory.
fn master_rss_kib(socket: &Path) -> u64 {
    let out = support::virtomate()
        .args(["control", "check", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A client that knows nothing of virtomate connects to the agent's
/// socket while a master holds it idle: how long until its answer.
fn raw_client_behind_idle_master(socket: &Path) -> Duration {
    cli_true(socket, true);
    let started = Instant::now();
    let mut raw = std::os::unix::net::UnixStream::connect(socket).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    raw.write_all(b"\xff{\"execute\": \"guest-sync-delimited\", \"arguments\": {\"id\": 4711}}\n")
        .unwrap();
    let mut reader = BufReader::new(raw);
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"4711") {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).unwrap();
        assert!(!line.is_empty(), "the channel closed");
        seen.extend(line);
    }
    started.elapsed()
}

fn timed(work: impl FnOnce()) -> Duration {
    let started = Instant::now();
    work();
    started.elapsed()
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
