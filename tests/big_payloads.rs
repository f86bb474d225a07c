//! Data up to the agent's own limits: 16 MiB per output stream, and one
//! 64 MiB request for standard input, with bounded memory on the host.

use virtomate_protocol::qga::GuestExec;
use virtomate_protocol::MAX_REQUEST_LEN;

use crate::support::host_agent::HostAgent;
use crate::support::test_vm::TestVm;
use crate::support::{guest_run_with, run, run_measured};

const MIB: usize = 1 << 20;

/// What `sha256sum -b` prints for `input` read from stdin, computed here.
fn sha256sum(input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .arg("-b")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn produce(len: usize) -> String {
    format!("yes 0123456789abcdef | head -c {len}")
}

#[test]
#[ignore = "needs qemu-ga on the host and GNU time"]
fn sixteen_mib_of_output_in_bounded_memory_and_the_channel_stays_in_sync() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    let (out, rss_kib) = run_measured(&["guest-run", socket, "--", "sh", "-c", &produce(16 * MIB)], None);
    let json = out.json();
    assert_eq!(json["stdout"].as_str().unwrap().len(), 16 * MIB);
    assert_eq!(json["stdout_truncated"], false);
    assert!(
        rss_kib as usize * 1024 <= 4 * 16 * MIB,
        "peak RSS {rss_kib} KiB is more than 4x the output"
    );

    // The same run again, then a small one: nothing of the first is left
    // in the channel.
    let again = run(&["guest-run", socket, "--", "sh", "-c", &produce(16 * MIB)], None);
    assert_eq!(again.json(), json);
    let out = run(&["guest-run", socket, "--", "echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again");
}

#[test]
#[ignore = "needs qemu-ga on the host"]
fn output_beyond_the_agents_cap_is_flagged_truncated_on_both_streams() {
    let agent = HostAgent::start();
    let script = format!("{} ; {} >&2", produce(17 * MIB), produce(16 * MIB + 1));
    let socket = agent.socket();
    let out = guest_run_with(&["--encode"], &socket, &["sh", "-c", &script], None);
    let json = out.json();
    assert_eq!(
        (
            json["stdout_truncated"].as_bool(),
            json["stderr_truncated"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let base64_len = |n: usize| n.div_ceil(3) * 4;
    assert_eq!(json["stdout"].as_str().unwrap().len(), base64_len(16 * MIB));
    assert_eq!(json["stderr"].as_str().unwrap().len(), base64_len(16 * MIB));
}

#[test]
#[ignore = "needs qemu-ga on the host and GNU time"]
fn stdin_up_to_the_agents_request_limit_and_a_clear_error_beyond() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // The request, with the input in Base64, must stay within 64 MiB: the
    // largest input is what leaves room for the rest of the request.
    let request_len = |input: Vec<u8>| {
        GuestExec::new("sha256sum", ["-b"])
            .with_input(input)
            .request_len()
    };
    let overhead = request_len(Vec::new());
    let largest = (MAX_REQUEST_LEN - overhead) / 4 * 3;
    let mut input: Vec<u8> = (0..largest + 1).map(|i| (i * 7919 % 251) as u8).collect();
    let one_more = request_len(input.clone());
    assert!(one_more > MAX_REQUEST_LEN, "{one_more}");
    let out = run(
        &["guest-run", "--stdin", socket, "--", "sha256sum", "-b"],
        Some(&input),
    );
    out.error("InputTooLarge");
    input.pop();
    let (out, rss_kib) = run_measured(
        &["guest-run", "--stdin", socket, "--", "sha256sum", "-b"],
        Some(&input),
    );
    // Every byte arrived, in order.
    assert_eq!(out.json()["stdout"], sha256sum(&input), "{out:?}");
    // The input is encoded while it is sent: no second, bigger copy.
    let rss = rss_kib as usize * 1024;
    assert!(
        rss < largest * 3 / 2,
        "peak RSS {rss_kib} KiB for {largest} bytes of input"
    );

    for too_much in [48 * MIB, 64 * MIB] {
        let input = vec![b'z'; too_much];
        let out = run(&["guest-run", "--stdin", socket, "--", "wc", "-c"], Some(&input));
        let message = out.error("InputTooLarge");
        assert!(
            message.contains("at most 64 MiB") && message.contains("nothing was sent"),
            "{message}"
        );
    }

    // Nothing half-sent is left for the agent to choke on.
    let out = run(&["guest-run", socket, "--", "echo", "-n", "still fine"], None);
    assert_eq!(out.json()["stdout"], "still fine");
}

#[test]
#[ignore = "needs the test VM"]
fn sixteen_mib_out_of_a_real_vm_then_a_second_run() {
    let vm = TestVm::boot("big-output");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let out = run(
        &["guest-run", socket, "--", "sh", "-c", &produce(16 * MIB + 5)],
        None,
    );
    let json = out.json();
    let stdout = json["stdout"].as_str().unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(stdout.len(), 16 * MIB, "{}", out.stderr);
    assert_eq!(json["stdout_truncated"], true);

    let out = run(&["guest-run", socket, "--", "echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again");
}
