//! What guest-run's script options cost: `--max-time` (the program started
//! as it is; a stop walks its process tree) against the same runs without it, side by side in one
//! run, and how soon `--max-time` stops a program that would run on.
//! Prints figures; asserts nothing about time (see README.md).
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench run_options` once
//! the test VM is built). `BENCH_RUNS` sets the runs (default 50).

// The tests' helpers for agents and the VM; the bench uses a few of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::host_agent::HostAgent;
use support::test_vm::TestVm;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let vm = TestVm::boot("bench-options");
    let host = HostAgent::start();

    println!("guest-run DOMAIN -- sleep 0.01, {runs} runs each, alternating (total seconds)");
    println!(
        "{:<11} {:>14} {:>17} {:>7}",
        "agent", "plain", "--max-time 5", "ratio"
    );
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let (mut plain, mut limited) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..runs {
            plain += time_run(&socket, &[]);
            limited += time_run(&socket, &["--max-time", "5"]);
        }
        println!(
            "{label:<11} {:>14.3} {:>17.3} {:>7.3}",
            plain.as_secs_f64(),
            limited.as_secs_f64(),
            limited.as_secs_f64() / plain.as_secs_f64()
        );
    }
    println!("ratio: with --max-time over without (goal: at most 1.05)");

    println!();
    println!("guest-run --max-time 2 DOMAIN -- sleep 60 (grace 5 s; the program ends on SIGTERM)");
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let started = Instant::now();
        let status = support::virtomate()
            .args([
                "guest-run",
                "--max-time",
                "2",
                socket.to_str().unwrap(),
                "--",
                "sleep",
                "60",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(124));
        println!(
            "{label:<11} returned after {:.3} s (limit 2 s: {:.3} s to stop it)",
            started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64() - 2.0
        );
    }
}

/// Wall time of one whole `virtomate guest-run OPTIONS SOCKET -- sleep 0.01`.
fn time_run(socket: &Path, options: &[&str]) -> Duration {
    let started = Instant::now();
    let status = support::virtomate()
        .arg("guest-run")
        .args(options)
        .args([socket.to_str().unwrap(), "--", "sleep", "0.01"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}
