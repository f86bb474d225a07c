//! Data up to the agent's own limits: 16 MiB per output stream, and one
//! 64 MiB request for standard input, with bounded memory on the host.

mod support;

use support::host_agent::HostAgent;
use support::test_vm::TestVm;
use support::{guest_run_with, run, run_measured};

const MIB: usize = 1 << 20;

fn produce(len: usize) -> String {
    format!("yes 0123456789abcdef | head -c {len}")
}

#[test]
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

    let out = run(&["guest-run", socket, "--", "echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again");
}

#[test]
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
fn stdin_up_to_the_agents_request_limit_and_a_clear_error_beyond() {
    let agent = HostAgent::start();
    let socket = agent.socket();
    let socket = socket.to_str().unwrap();
    // The request, with the input in Base64, must stay within 64 MiB.
    let largest = 48 * MIB - 1024;
    let input = vec![b'z'; largest];
    let (out, rss_kib) = run_measured(&["guest-run", "--stdin", socket, "--", "wc", "-c"], Some(&input));
    assert_eq!(out.json()["stdout"], format!("{largest}\n"), "{out:?}");
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
fn sixteen_mib_out_of_a_real_vm_then_a_second_run() {
    let vm = TestVm::boot("big-output");
    let socket = vm.socket();
    let socket = socket.to_str().unwrap();
    let out = run(
        &["guest-run", socket, "--", "sh", "-c", &produce(16 * MIB + 5)],
        None,
    );
    let json = out.json();
    assert_eq!(json["stdout"].as_str().unwrap().len(), 16 * MIB, "{}", out.stderr);
    assert_eq!(json["stdout_truncated"], true);

    let out = run(&["guest-run", socket, "--", "echo", "-n", "again"], None);
    assert_eq!(out.json()["stdout"], "again");
}
