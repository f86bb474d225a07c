//! How close a whole `virtomate guest-run` process comes to the protocol's
//! floor, on the test VM and on the host agent, and how fast big payloads
//! move. Prints figures; asserts nothing about time (see README.md).
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench guest_run` once the
//! test VM is built). `BENCH_RUNS` sets the number of runs (default 30).

// The tests' helpers for agents and the VM; the bench uses a few of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::host_agent::HostAgent;
use support::test_vm::TestVm;
use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::{ClientOptions, PollSchedule, QgaClient};

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Room for the agent to hold a 40 MiB --stdin request several times over.
    let vm = TestVm::boot_with("bench", &[("VM_MEMORY", "1024")]);
    let host = HostAgent::start();

    // qemu-ga in a guest sleeps 100 ms at a time while no host client is
    // connected (qga/main.c, channel_event_cb), so a fresh connection waits
    // 0-100 ms for it to wake up. Every sample below, CLI and floor alike,
    // connects after the same pseudo-random pause since the last
    // disconnect, so both meet the agent at the same points of that cycle.
    let pauses: Vec<Duration> = pseudo_random_pauses(runs + 3, Duration::from_millis(150));
    println!("virtomate guest-run DOMAIN -- /bin/true, {runs} runs each (milliseconds)");
    println!("binary: {}", support::virtomate_path().display());
    println!(
        "{:<11} {:>10} {:>9} {:>10} {:>10} {:>6} {:>11} {:>10} {:>11} {:>8}",
        "agent",
        "cli median",
        "cli p90",
        "floor med",
        "floor p90",
        "ratio",
        "warm floor",
        "polls/run",
        "floor polls",
        "rss KiB"
    );
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let cli = Stats::of(pauses.iter().map(|&p| time_cli(&socket, p)).skip(3).collect());
        let floor_runs: Vec<(Duration, u32)> = pauses
            .iter()
            .map(|&pause| {
                std::thread::sleep(pause);
                runtime.block_on(in_process(&socket, PollSchedule::BACK_TO_BACK))
            })
            .skip(3)
            .collect();
        let floor = Stats::of(floor_runs.iter().map(|r| r.0).collect());
        let floor_polls = mean(floor_runs.iter().map(|r| r.1));
        let warm = Stats::of(
            (0..runs)
                .map(|_| {
                    runtime
                        .block_on(in_process(&socket, PollSchedule::BACK_TO_BACK))
                        .0
                })
                .collect(),
        );
        let polls = mean((0..runs).map(|_| runtime.block_on(in_process(&socket, PollSchedule::default())).1));
        let (_, rss) =
            support::run_measured(&["guest-run", socket.to_str().unwrap(), "--", "/bin/true"], None);
        println!(
            "{label:<11} {:>10.2} {:>9.2} {:>10.2} {:>10.2} {:>6.2} {:>11.2} {:>10.1} {:>11.1} {:>8}",
            ms(cli.median),
            ms(cli.p90),
            ms(floor.median),
            ms(floor.p90),
            cli.median.as_secs_f64() / floor.median.as_secs_f64(),
            ms(warm.median),
            polls,
            floor_polls,
            rss
        );
    }
    println!(
        "ratio: cli median / floor median. warm floor: reconnecting at once, before the agent notices the"
    );
    println!(
        "disconnect, which a fresh process cannot do. polls/run: the default schedule, as the CLI uses it."
    );

    println!();
    println!("big payloads on the test VM (whole guest-run process)");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let out_len = 16 << 20;
    let produce = format!("yes 0123456789abcdef | head -c {out_len}");
    let started = Instant::now();
    let (out, rss) = support::run_measured(&["guest-run", socket, "--", "sh", "-c", &produce], None);
    let took = started.elapsed();
    let json = out.json();
    assert_eq!(
        json["stdout"].as_str().map(str::len),
        Some(out_len),
        "{}",
        out.stderr
    );
    println!(
        "16 MiB out: {:.2} s, {:.1} MB/s, peak RSS {} KiB ({:.2}x the output)",
        took.as_secs_f64(),
        out_len as f64 / 1e6 / took.as_secs_f64(),
        rss,
        (rss * 1024) as f64 / out_len as f64
    );

    let in_len = 40 << 20;
    let input = vec![b'x'; in_len];
    let started = Instant::now();
    let (out, rss) = support::run_measured(&["guest-run", "--stdin", socket, "--", "wc", "-c"], Some(&input));
    let took = started.elapsed();
    assert_eq!(out.json()["stdout"], format!("{in_len}\n"), "{out:?}");
    println!(
        "40 MiB in:  {:.2} s, {:.1} MB/s, peak RSS {} KiB ({:.2}x the input)",
        took.as_secs_f64(),
        in_len as f64 / 1e6 / took.as_secs_f64(),
        rss,
        (rss * 1024) as f64 / in_len as f64
    );
}

/// Wall time of one whole `virtomate guest-run SOCKET -- /bin/true`,
/// started `pause` after the previous run ended.
fn time_cli(socket: &Path, pause: Duration) -> Duration {
    std::thread::sleep(pause);
    let started = Instant::now();
    let status = support::virtomate()
        .args(["guest-run", socket.to_str().unwrap(), "--", "/bin/true"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let took = started.elapsed();
    assert!(status.success());
    took
}

/// Connect, sync, guest-exec and poll until exited, inside this process.
async fn in_process(socket: &Path, schedule: PollSchedule) -> (Duration, u32) {
    let started = Instant::now();
    let mut agent = QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap();
    let pid = agent
        .execute(&GuestExec::new("/bin/true", [""; 0]))
        .await
        .unwrap()
        .pid;
    let finished = agent.wait_for_exit(pid, schedule).await.unwrap();
    (started.elapsed(), finished.polls)
}

/// A fixed sequence of pauses spread over `0..max` (a linear congruential
/// generator: the same pauses on every run of the benchmark).
fn pseudo_random_pauses(count: usize, max: Duration) -> Vec<Duration> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            max.mul_f64((state >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

struct Stats {
    median: Duration,
    p90: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p90: at(0.9),
        }
    }
}

fn mean(values: impl Iterator<Item = u32>) -> f64 {
    let values: Vec<u32> = values.collect();
    values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
