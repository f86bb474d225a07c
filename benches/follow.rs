//! What `guest-run --follow` costs: how soon a line the program writes
//! reaches virtomate's stdout, and how fast output flows, on the test VM
//! and on the host's qemu-ga. Prints figures; asserts nothing about time
//! (see README.md).
//!
//! Latency: the program prints the guest's `/proc/uptime` after pauses of
//! 0.05 to 2 s (so that following has backed off as far as it goes);
//! each line's arrival is set against it, the guest's uptime being tied to
//! the host's clock by runs of `cat /proc/uptime` timed on the host (the
//! uncertainty of that tie is printed: the latencies shown are upper
//! bounds by it). Throughput: 15 MB of output with `--follow`, against
//! the same through `guest-run --raw` (below the agent's 16 MiB cap).
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench follow` once the
//! test VM is built). `BENCH_RUNS` sets the lines per figure (default 20).

// The tests' helpers for agents and the VM; the bench uses a few of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use support::host_agent::HostAgent;
use support::test_vm::TestVm;

fn main() {
    let lines: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let vm = TestVm::boot("bench-follow");
    let host = HostAgent::start();
    let clock = Instant::now();

    println!(
        "guest-run --follow: a line's way from the program to virtomate's stdout ({lines} lines, \
         pauses 0.05-2 s)"
    );
    println!(
        "{:<11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "agent", "min ms", "median", "p90", "max", "mean", "tie ± ms"
    );
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let (low, high) = tie(&socket, &clock);
        let mut latencies: Vec<f64> = follow_uptimes(&socket, lines, &clock)
            .into_iter()
            .map(|(arrived, uptime)| (arrived - (uptime + low)) * 1000.0)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        println!(
            "{label:<11} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>12.0}",
            at(0.0),
            at(0.5),
            at(0.9),
            at(1.0),
            mean,
            (high - low) * 1000.0 / 2.0
        );
    }

    println!();
    println!("15 MB of output (head -c 15000000 /dev/zero), whole run, MB/s");
    println!("{:<11} {:>10} {:>14}", "agent", "--follow", "--raw (no follow)");
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let follow = throughput(&socket, "--follow");
        let raw = throughput(&socket, "--raw");
        println!("{label:<11} {follow:>10.2} {raw:>14.2}");
    }
}

/// Seconds since `clock`.
fn now(clock: &Instant) -> f64 {
    clock.elapsed().as_secs_f64()
}

/// Bounds on host time minus guest uptime, from runs of `cat /proc/uptime`
/// timed on the host: the cat ran after the run started and before it
/// ended, and uptime counts in hundredths.
fn tie(socket: &Path, clock: &Instant) -> (f64, f64) {
    let (mut low, mut high) = (f64::MIN, f64::MAX);
    for _ in 0..10 {
        let before = now(clock);
        let out = support::virtomate()
            .args([
                "guest-run",
                "--raw",
                socket.to_str().unwrap(),
                "--",
                "cat",
                "/proc/uptime",
            ])
            .output()
            .unwrap();
        let after = now(clock);
        let uptime = first_field(&String::from_utf8_lossy(&out.stdout));
        low = low.max(before - uptime - 0.01);
        high = high.min(after - uptime);
    }
    (low, high)
}

fn first_field(line: &str) -> f64 {
    line.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("not /proc/uptime: {line:?}"))
}

/// Runs a program that prints its uptime after each of `lines` pauses;
/// returns each line's arrival and the uptime it holds.
fn follow_uptimes(socket: &Path, lines: usize, clock: &Instant) -> Vec<(f64, f64)> {
    let script = format!(
        "i=0; while [ $i -lt {lines} ]; do case $((i % 4)) in 0) sleep 0.05;; 1) sleep 0.3;; 2) sleep 1;; \
         3) sleep 2;; esac; cat /proc/uptime; i=$((i + 1)); done"
    );
    let mut child = support::virtomate()
        .args([
            "guest-run",
            "--follow",
            socket.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push((now(clock), first_field(&line)));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(seen.len(), lines);
    seen
}

/// MB/s of a whole run that writes 15 MB with `mode`.
fn throughput(socket: &Path, mode: &str) -> f64 {
    let started = Instant::now();
    let out = support::virtomate()
        .args([
            "guest-run",
            mode,
            socket.to_str().unwrap(),
            "--",
            "head",
            "-c",
            "15000000",
            "/dev/zero",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 15_000_000);
    15.0 / started.elapsed().as_secs_f64()
}
