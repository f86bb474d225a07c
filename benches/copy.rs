//! How close a whole `virtomate copy` process comes to the agent's own
//! floor (an in-process loop of `guest-file-write`/`-read` on one held
//! connection, the same chunk size), in and out, on the host agent and the
//! test VM; then big copies, checked byte for byte, with peak RSS. Prints
//! figures; asserts only that the bytes arrived (see README.md).
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench copy` once the test
//! VM is built). Sizes in MiB: `BENCH_COPY_HOST_MIB` (default 64) and
//! `BENCH_COPY_VM_MIB` (16) for the ratios, best of `BENCH_COPY_RUNS` (3), `BENCH_COPY_VM_BIG_MIB` (100)
//! and `BENCH_COPY_HOST_BIG_MIB` (1024) for the big copies.
//!
//! Then `--compress` against a plain copy of a log-like text file on the
//! test VM, in and out (`BENCH_COPY_LOG_MIB`, 16); `BENCH_COPY_ONLY=compress`
//! runs that comparison alone.
//!
//! Then `copy -r` of a tree against `copy` of one file of the same size,
//! in and out, on both agents, with the tree copies' peak RSS
//! (`BENCH_COPY_TREE_HOST_MIB`, 100, and `BENCH_COPY_TREE_VM_MIB`, 32: the
//! VM holds the file, the tree and, on the way out, tar's output in its
//! memory);
//! `BENCH_COPY_ONLY=tree` runs that comparison alone.
//!
//! Then `copy` through a control master (`--persist`) against a copy that
//! connects itself, in and out, on both agents (`BENCH_COPY_MASTER_HOST_MIB`,
//! 256, and `BENCH_COPY_MASTER_VM_MIB`, 16); `BENCH_COPY_ONLY=master` runs
//! that comparison alone.

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use support::data::{log_lines, noise, sha256_hex};
use support::host_agent::HostAgent;
use support::test_vm::TestVm;
use virtomate_protocol::qga::{GuestFileClose, GuestFileOpen, GuestFileRead, GuestFileWrite};
use virtomate_protocol::{ClientOptions, QgaClient};

const MIB: usize = 1 << 20;
const CHUNK: usize = 1 << 20;

fn mib(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vm = TestVm::boot_with("bench-copy", &[("VM_MEMORY", "512")]);
    let work = tempfile::tempdir().unwrap();
    let host = HostAgent::start();
    if std::env::var("BENCH_COPY_ONLY").as_deref() == Ok("compress") {
        compress_comparisons(&vm, &host, work.path());
        return;
    }
    if std::env::var("BENCH_COPY_ONLY").as_deref() == Ok("tree") {
        tree_comparisons(&vm, &host, work.path());
        return;
    }
    if std::env::var("BENCH_COPY_ONLY").as_deref() == Ok("master") {
        master_comparisons(&vm, &host, work.path());
        return;
    }

    println!(
        "virtomate copy against the in-process floor, {} KiB chunks (MB/s)",
        CHUNK >> 10
    );
    println!(
        "{:<11} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6}",
        "agent", "MiB", "in cli", "in floor", "ratio", "out cli", "out floor", "ratio"
    );
    for (label, socket, size) in [
        ("host agent", host.socket(), mib("BENCH_COPY_HOST_MIB", 64) * MIB),
        ("test VM", vm.socket(), mib("BENCH_COPY_VM_MIB", 16) * MIB),
    ] {
        let data = noise(size, 1);
        let local = work.path().join("source");
        std::fs::write(&local, &data).unwrap();
        // The guest file: in the VM, /tmp; the host agent's guest is here.
        let inside = match label {
            "test VM" => "/tmp/bench".to_owned(),
            _ => work.path().join("inside").display().to_string(),
        };
        // Best of RUNS, the CLI and the floor taking turns, so that a burst
        // of load from elsewhere on the machine (or the host's writeback of
        // the last big file) does not count against one of them alone.
        let runs = mib("BENCH_COPY_RUNS", 3);
        let guest_side = format!("{}:{inside}", socket.display());
        let back = work.path().join("back");
        let (mut cli_in, mut floor_in, mut cli_out, mut floor_out) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..runs {
            floor_in =
                floor_in.min(runtime.block_on(floor_write(&socket, &format!("{inside}.floor"), &data)));
            cli_in = cli_in.min(time_cli(&["copy", local.to_str().unwrap(), &guest_side]));
            floor_out = floor_out.min(runtime.block_on(floor_read(&socket, &inside, size)));
            cli_out = cli_out.min(time_cli(&["copy", &guest_side, back.to_str().unwrap()]));
        }
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{label}: the copy back differs"
        );
        let rate = |secs: f64| size as f64 / 1e6 / secs;
        println!(
            "{label:<11} {:>6} {:>9.2} {:>9.2} {:>6.2} {:>9.2} {:>9.2} {:>6.2}",
            size / MIB,
            rate(cli_in),
            rate(floor_in),
            floor_in / cli_in,
            rate(cli_out),
            rate(floor_out),
            floor_out / cli_out,
        );
    }
    println!("ratio: cli throughput / floor throughput (goal: at least 0.9)");

    println!();
    compress_comparisons(&vm, &host, work.path());

    println!();
    tree_comparisons(&vm, &host, work.path());

    println!();
    master_comparisons(&vm, &host, work.path());

    println!();
    println!("big copies, whole process, SHA-256 compared on both sides (--verify)");
    let big = |label: &str, socket: &Path, inside: &str, size: usize| {
        let local = work.path().join("big");
        let data = noise(size, 1);
        std::fs::write(&local, &data).unwrap();
        let sum = sha256_hex(&data);
        drop(data);
        let guest = format!("{}:{inside}", socket.display());
        let started = Instant::now();
        let (out, rss_in) =
            support::run_measured(&["copy", "--verify", local.to_str().unwrap(), &guest], None);
        let took_in = started.elapsed().as_secs_f64();
        assert_eq!(out.json()["sha256"], sum, "{label} in: {out:?}");
        let back = work.path().join("big-back");
        let started = Instant::now();
        let (out, rss_out) =
            support::run_measured(&["copy", "--verify", &guest, back.to_str().unwrap()], None);
        let took_out = started.elapsed().as_secs_f64();
        assert_eq!(out.json()["sha256"], sum, "{label} out: {out:?}");
        println!(
            "{label}, {} MiB: in {took_in:.1} s ({:.2} MB/s, peak RSS {rss_in} KiB), out {took_out:.1} s \
             ({:.2} MB/s, peak RSS {rss_out} KiB), sha256 {}",
            size / MIB,
            size as f64 / 1e6 / took_in,
            size as f64 / 1e6 / took_out,
            &sum[..16]
        );
        std::fs::remove_file(&back).unwrap();
    };
    big(
        "test VM",
        &vm.socket(),
        "/tmp/big",
        mib("BENCH_COPY_VM_BIG_MIB", 100) * MIB,
    );
    drop(vm);
    let inside = work.path().join("big-inside").display().to_string();
    big(
        "host agent",
        &host.socket(),
        &inside,
        mib("BENCH_COPY_HOST_BIG_MIB", 1024) * MIB,
    );
}

/// `--compress` against plain copies on the test VM and the host agent.
fn compress_comparisons(vm: &TestVm, host: &HostAgent, work: &Path) {
    compress_comparison("test VM", &vm.socket(), "/tmp/app.log", work);
    // What bounds a copy out: the guest's own gzip, with no transfer.
    let gzip_alone = time_cli(&[
        "guest-run",
        vm.socket().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "gzip -1 -c < /tmp/app.log > /dev/null",
    ]);
    println!("the test VM's gzip -1 of it alone, in a guest-run: {gzip_alone:.2} s");
    let inside = work.join("app-inside.log");
    compress_comparison("host agent", &host.socket(), inside.to_str().unwrap(), work);
}

/// `virtomate copy` with and without `--compress`, in and out of the guest
/// of `socket` (its file `inside`), of a log-like file: best of
/// `BENCH_COPY_RUNS`.
fn compress_comparison(label: &str, socket: &Path, inside: &str, work: &Path) {
    let size = mib("BENCH_COPY_LOG_MIB", 16) * MIB;
    let data = log_lines(size);
    let local = work.join("app.log");
    std::fs::write(&local, &data).unwrap();
    let packed = {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&data).unwrap();
        encoder.finish().unwrap().len()
    };
    let guest = format!("{}:{inside}", socket.display());
    let back = work.join("app-back.log");
    let (local, back) = (local.to_str().unwrap(), back.to_str().unwrap());
    let runs = mib("BENCH_COPY_RUNS", 3);
    let (mut plain_in, mut packed_in, mut plain_out, mut packed_out) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..runs {
        plain_in = plain_in.min(time_cli(&["copy", local, &guest]));
        packed_in = packed_in.min(time_cli(&["copy", "--compress", local, &guest]));
        plain_out = plain_out.min(time_cli(&["copy", &guest, back]));
        packed_out = packed_out.min(time_cli(&["copy", "--compress", &guest, back]));
    }
    assert!(
        std::fs::read(back).unwrap() == data,
        "the compressed copy back differs"
    );
    println!(
        "--compress, {label}, {} MiB of log lines (gzip: {:.1}x smaller), seconds (best of {runs})",
        size / MIB,
        size as f64 / packed as f64
    );
    println!("{:<5} {:>9} {:>11} {:>8}", "", "plain", "--compress", "speedup");
    for (label, plain, packed) in [("in", plain_in, packed_in), ("out", plain_out, packed_out)] {
        println!("{label:<5} {plain:>9.2} {packed:>11.2} {:>7.1}x", plain / packed);
    }
    println!("speedup: plain time / --compress time (goal: at least 3)");
}

/// Files in the tree of [`tree_comparisons`]: at 100 MiB, about 1 MiB each.
const TREE_FILES: usize = 100;

/// `copy -r` of a tree against `copy` of one file as big, on both agents.
fn tree_comparisons(vm: &TestVm, host: &HostAgent, work: &Path) {
    println!(
        "copy -r of a tree ({TREE_FILES} files in 4 directories) against copy of one file as big, seconds"
    );
    println!(
        "{:<11} {:>5} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8} {:>6} {:>9}",
        "agent", "MiB", "file in", "tree in", "ratio", "RSS KiB", "file out", "tree out", "ratio", "RSS KiB"
    );
    let inside = work.join("tree-inside").display().to_string();
    tree_comparison(
        "host agent",
        &host.socket(),
        &inside,
        work,
        mib("BENCH_COPY_TREE_HOST_MIB", 100),
    );
    tree_comparison(
        "test VM",
        &vm.socket(),
        "/tmp/tree",
        work,
        mib("BENCH_COPY_TREE_VM_MIB", 32),
    );
    println!("ratio: tree time / file time (goal: at most 1.2); RSS: the tree copy's peak");
}

/// One agent's line of [`tree_comparisons`]: best of `BENCH_COPY_RUNS`,
/// the tree checked file by file after.
fn tree_comparison(label: &str, socket: &Path, inside: &str, work: &Path, size_mib: usize) {
    let tree = work.join("tree");
    let file = work.join("tree-file");
    let _ = std::fs::remove_dir_all(&tree);
    let mut all = std::fs::File::create(&file).unwrap();
    for n in 0..TREE_FILES {
        let dir = tree.join(format!("d{}", n % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let data = noise(size_mib * MIB / TREE_FILES, n as u64);
        std::fs::write(dir.join(format!("f{n}")), &data).unwrap();
        all.write_all(&data).unwrap();
    }
    drop(all);
    let guest_file = format!("{}:{inside}-file", socket.display());
    let guest_tree = format!("{}:{inside}-tree", socket.display());
    let remove_guest_tree = || {
        let out = support::run(
            &[
                "guest-run",
                socket.to_str().unwrap(),
                "--",
                "rm",
                "-rf",
                &format!("{inside}-tree"),
            ],
            None,
        );
        assert_eq!(out.status, 0, "{out:?}");
    };
    let back_file = work.join("tree-file-back");
    let back_tree = work.join("tree-back");
    let (file_s, tree_s, back_file_s, back_tree_s) = (
        file.to_str().unwrap(),
        tree.to_str().unwrap(),
        back_file.to_str().unwrap(),
        back_tree.to_str().unwrap(),
    );
    let timed_tree = |args: &[&str]| {
        let started = Instant::now();
        let (out, rss) = support::run_measured(args, None);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(out.status, 0, "{out:?}");
        (took, rss)
    };
    let runs = mib("BENCH_COPY_RUNS", 3);
    let (mut file_in, mut tree_in, mut file_out, mut tree_out) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut rss_in, mut rss_out) = (0, 0);
    for _ in 0..runs {
        file_in = file_in.min(time_cli(&["copy", file_s, &guest_file]));
        remove_guest_tree();
        let (took, rss) = timed_tree(&["copy", "-r", tree_s, &guest_tree]);
        (tree_in, rss_in) = (tree_in.min(took), rss_in.max(rss));
        file_out = file_out.min(time_cli(&["copy", &guest_file, back_file_s]));
        let _ = std::fs::remove_dir_all(&back_tree);
        let (took, rss) = timed_tree(&["copy", "-r", &guest_tree, back_tree_s]);
        (tree_out, rss_out) = (tree_out.min(took), rss_out.max(rss));
    }
    for n in 0..64 {
        let name = format!("d{}/f{n}", n % 4);
        assert!(
            std::fs::read(back_tree.join(&name)).unwrap() == std::fs::read(tree.join(&name)).unwrap(),
            "{label}: {name} differs after the round trip"
        );
    }
    remove_guest_tree();
    println!(
        "{label:<11} {size_mib:>5} {file_in:>8.2} {tree_in:>8.2} {:>6.2} {rss_in:>9} \
         {file_out:>8.2} {tree_out:>8.2} {:>6.2} {rss_out:>9}",
        tree_in / file_in,
        tree_out / file_out,
    );
}

/// `copy` through a control master against `copy` alone, on both agents:
/// the master takes each chunk whole before it passes it on, one more hop
/// for every chunk.
fn master_comparisons(vm: &TestVm, host: &HostAgent, work: &Path) {
    println!(
        "copy through a control master (--persist) against copy alone, {} KiB chunks (MB/s)",
        CHUNK >> 10
    );
    println!(
        "{:<11} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6}",
        "agent", "MiB", "in alone", "in master", "ratio", "out alone", "out master", "ratio"
    );
    for (label, socket, size, inside) in [
        (
            "host agent",
            host.socket(),
            mib("BENCH_COPY_MASTER_HOST_MIB", 256) * MIB,
            work.join("master-inside").display().to_string(),
        ),
        (
            "test VM",
            vm.socket(),
            mib("BENCH_COPY_MASTER_VM_MIB", 16) * MIB,
            "/tmp/master".to_owned(),
        ),
    ] {
        let data = noise(size, 3);
        let local = work.join("master-source");
        std::fs::write(&local, &data).unwrap();
        let (local, back) = (local.to_str().unwrap(), work.join("master-back"));
        let back = back.to_str().unwrap();
        let guest = format!("{}:{inside}", socket.display());
        // Started before the first timing, as a script's earlier command would.
        let started = support::run(&through_master(&["guest-ping", socket.to_str().unwrap()]), None);
        assert_eq!(started.status, 0, "{started:?}");
        let runs = mib("BENCH_COPY_RUNS", 3);
        let (mut alone_in, mut master_in, mut alone_out, mut master_out) =
            (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..runs {
            alone_in = alone_in.min(time_cli(&["copy", local, &guest]));
            master_in = master_in.min(time_cli(&through_master(&["copy", local, &guest])));
            alone_out = alone_out.min(time_cli(&["copy", &guest, back]));
            master_out = master_out.min(time_cli(&through_master(&["copy", &guest, back])));
        }
        assert!(
            std::fs::read(back).unwrap() == data,
            "{label}: the copy back through the master differs"
        );
        let _ = support::run(
            &through_master(&["control", "exit", socket.to_str().unwrap()]),
            None,
        );
        let rate = |secs: f64| size as f64 / 1e6 / secs;
        println!(
            "{label:<11} {:>6} {:>9.2} {:>9.2} {:>6.2} {:>9.2} {:>9.2} {:>6.2}",
            size / MIB,
            rate(alone_in),
            rate(master_in),
            alone_in / master_in,
            rate(alone_out),
            rate(master_out),
            alone_out / master_out,
        );
    }
    println!("ratio: throughput through the master / alone (1.00: the master costs nothing)");
}

/// `virtomate --persist 60 ARGS`: through the agent's control master.
fn through_master<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--persist", "60"], args].concat()
}

/// Seconds for one whole `virtomate ARGS`.
fn time_cli(args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = support::run(args, None);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(out.status, 0, "{out:?}");
    took
}

/// Seconds to write `data` to `path` in `CHUNK`s on one held connection.
async fn floor_write(socket: &Path, path: &str, data: &[u8]) -> f64 {
    let mut agent = QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let handle = agent.execute(&GuestFileOpen::new(path, "w")).await.unwrap();
    for chunk in data.chunks(CHUNK) {
        let write = GuestFileWrite {
            handle,
            buf: chunk.to_vec(),
        };
        agent.execute(&write).await.unwrap();
    }
    agent.execute(&GuestFileClose { handle }).await.unwrap();
    started.elapsed().as_secs_f64()
}

/// Seconds to read `path` (`size` bytes) in `CHUNK`s on one held connection.
async fn floor_read(socket: &Path, path: &str, size: usize) -> f64 {
    let mut agent = QgaClient::connect(socket, ClientOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let handle = agent.execute(&GuestFileOpen::new(path, "r")).await.unwrap();
    let mut got = 0;
    let mut sink = std::io::sink();
    loop {
        let read = GuestFileRead {
            handle,
            count: Some(CHUNK as u64),
        };
        let reply = agent.execute(&read).await.unwrap();
        let eof = reply.eof;
        let data = reply.into_data(CHUNK as u64).unwrap();
        got += data.len();
        sink.write_all(&data).unwrap();
        if eof || data.is_empty() {
            break;
        }
    }
    agent.execute(&GuestFileClose { handle }).await.unwrap();
    assert_eq!(got, size);
    started.elapsed().as_secs_f64()
}
