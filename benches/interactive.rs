//! What `guest-run -i` costs: how soon a line written to `cat` in the
//! guest comes back, and how fast bytes flow through `cat` both ways at
//! once against `copy` of the same file into the guest (the slower way)
//! and against `copy` in and then out (the same bytes through the same
//! agent, which serves one request at a time), on the test VM and on the
//! host's qemu-ga. Prints figures; asserts nothing about time (see
//! README.md).
//!
//! Round trip: one `guest-run -i … -- cat` the whole time; a line is
//! written after pauses of 0.05 to 2 s (so that the polls have backed off
//! as far as they go) and timed until it is read back. Bulk: random bytes
//! through `cat`, stdin from a file and stdout to one, compared byte for
//! byte, with virtomate's peak RSS (GNU time); then `copy` of the same
//! file into the guest and back out.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench interactive` once
//! the test VM is built). `BENCH_RUNS` sets the lines per figure (default
//! 20); `BENCH_INTERACTIVE_VM_MIB` and `BENCH_INTERACTIVE_HOST_MIB` the
//! bulk sizes (default 16 and 100: 100 MiB takes minutes under TCG).

// The tests' helpers for agents and the VM; the bench uses a few of them.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::data::noise;
use support::host_agent::HostAgent;
use support::test_vm::TestVm;

const MIB: usize = 1 << 20;

fn main() {
    let lines = env_number("BENCH_RUNS", 20);
    let vm = TestVm::boot("bench-interactive");
    let host = HostAgent::start();
    println!("binary: {}", support::virtomate_path().display());

    println!("guest-run -i -- cat: a line written comes back ({lines} lines, pauses 0.05-2 s before each)");
    println!(
        "{:<11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "agent", "min ms", "median", "p90", "max", "mean"
    );
    for (label, socket) in [("test VM", vm.socket()), ("host agent", host.socket())] {
        let mut trips = round_trips(&socket, lines);
        trips.sort_by(f64::total_cmp);
        let at = |q: f64| trips[((trips.len() - 1) as f64 * q).round() as usize];
        let mean = trips.iter().sum::<f64>() / trips.len() as f64;
        println!(
            "{label:<11} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            at(0.0),
            at(0.5),
            at(0.9),
            at(1.0),
            mean
        );
    }

    println!();
    println!("bulk: random bytes through guest-run -i -- cat (both ways at once) against copy in and out");
    println!(
        "{:<11} {:>5} {:>9} {:>10} {:>11} {:>8} {:>10} {:>8} {:>11}",
        "agent", "MiB", "-i cat s", "copy in s", "copy out s", "/ in", "/ in+out", "-i MB/s", "peak RSS"
    );
    let work = tempfile::tempdir().unwrap();
    let host_inside = work.path().join("inside").display().to_string();
    let sizes = [
        (
            "test VM",
            vm.socket(),
            "/tmp/bench-in",
            env_number("BENCH_INTERACTIVE_VM_MIB", 16),
        ),
        (
            "host agent",
            host.socket(),
            host_inside.as_str(),
            env_number("BENCH_INTERACTIVE_HOST_MIB", 100),
        ),
    ];
    for (label, socket, inside, mib) in sizes {
        let local = work.path().join("data");
        std::fs::write(&local, noise(mib * MIB, 11)).unwrap();
        let back = work.path().join("back");
        let (piped, rss) = through_cat(&socket, &local, &back);
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&local).unwrap(),
            "{label}: {mib} MiB through cat differ"
        );
        let copied = copy(local.to_str().unwrap(), &guest_path(&socket, inside));
        let out = work.path().join("out");
        let copied_out = copy(&guest_path(&socket, inside), out.to_str().unwrap());
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&local).unwrap(),
            "{label}: {mib} MiB copied in and out differ"
        );
        print!("{label:<11} {mib:>5} {piped:>9.2} {copied:>10.2} {copied_out:>11.2} ");
        println!(
            "{:>8.2} {:>10.2} {:>8.2} {:>7} KiB",
            piped / copied,
            piped / (copied + copied_out),
            (mib * MIB) as f64 / 1e6 / piped,
            rss
        );
    }
    println!(
        "/ in: the -i run's time / copy in's (goal: at most 1.2); / in+out: / (copy in + copy out), \
         the floor of one agent carrying the bytes both ways; peak RSS of the -i run (goal: < 64 MiB)"
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Milliseconds from writing each line to reading it back, one `cat` for
/// all.
fn round_trips(socket: &Path, lines: usize) -> Vec<f64> {
    let mut child = support::virtomate()
        .args(["guest-run", "-i", socket.to_str().unwrap(), "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The first line also waits for the program to start: not counted.
    writeln!(stdin, "warm up").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let pauses = [0.05, 0.3, 1.0, 2.0];
    let mut trips = Vec::new();
    for i in 0..lines {
        std::thread::sleep(Duration::from_secs_f64(pauses[i % pauses.len()]));
        let sent = format!("line {i}\n");
        let started = Instant::now();
        stdin.write_all(sent.as_bytes()).unwrap();
        stdin.flush().unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        trips.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(line, sent);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    trips
}

/// Seconds and peak RSS (KiB) of `guest-run -i -- cat < local > back`.
fn through_cat(socket: &Path, local: &Path, back: &Path) -> (f64, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(support::virtomate_path())
        .args(["guest-run", "-i", socket.to_str().unwrap(), "--", "cat"])
        .stdin(File::open(local).unwrap())
        .stdout(File::create(back).unwrap())
        .status()
        .expect("GNU time (scripts/install-deps.sh installs it)");
    let took = started.elapsed().as_secs_f64();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(report.path()).unwrap();
    let rss = text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap();
    (took, rss)
}

/// `DOMAIN:inside` for `copy`.
fn guest_path(socket: &Path, inside: &str) -> String {
    format!("{}:{inside}", socket.display())
}

/// Seconds of `copy from to`.
fn copy(from: &str, to: &str) -> f64 {
    let started = Instant::now();
    let out = support::virtomate().args(["copy", from, to]).output().unwrap();
    let took = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    took
}
