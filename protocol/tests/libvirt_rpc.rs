//! `LibvirtClient` against a real libvirtd: the one of
//! `scripts/libvirt-test-env.sh`, with a domain booting the test VM whose
//! agent channel (and monitor) libvirtd holds.
//!
//! Skipped (with the reason printed) where that libvirtd cannot run, e.g.
//! not as root or without QEMU. One test function: a domain takes seconds
//! to boot under TCG.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant as StdInstant};

use serde_json::{json, Value};
use virtomate_protocol::libvirt::{
    LibvirtClient, LibvirtMonitor, RemoteDomain, AGENT_RESPONSE_MAX, ERR_AGENT_UNRESPONSIVE,
    ERR_INTERNAL_ERROR, ERR_NO_DOMAIN, ERR_RPC, STRING_MAX,
};
use virtomate_protocol::qmp::QueryStatus;
use virtomate_protocol::{ClientOptions, Deadline, Error};

const SOCKET: &str = "/run/libvirt/libvirt-sock";
const URI: &str = "qemu:///system";

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirt-test-env.sh")
}

/// Runs the test environment script; on failure, what it said.
fn env_script(args: &[&str]) -> Result<String, String> {
    let run = || Command::new(script()).args(args).output();
    let mut output = run().map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if output.status.code() == Some(2) {
        // bash reads a script as it runs: one edited meanwhile can fail
        // with a syntax error once; the next run reads it whole.
        std::thread::sleep(Duration::from_secs(1));
        output = run().map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    }
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`libvirt-test-env.sh {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            match String::from_utf8_lossy(&output.stdout).trim() {
                "" => String::new(),
                stdout => format!("\nstdout: {stdout}"),
            }
        ))
    }
}

/// The pid of the libvirtd the script started, if it runs.
fn daemon_pid() -> Option<u32> {
    let status = env_script(&["status"]).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("libvirtd: ")?.parse().ok())
}

/// Taken for the whole test: test runs of other checkouts share the one
/// system libvirtd, and a run that started it stops it at the end.
fn host_wide_libvirt_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::create("/run/lock/virtomate-libvirt-tests.lock")
        .or_else(|_| std::fs::File::create(std::env::temp_dir().join("virtomate-libvirt-tests.lock")))
        .expect("a lock file for the libvirt tests");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("the libvirt tests' lock")
}

/// Undefines the domain and, if this test started libvirtd, stops it
/// again, also when an assertion fails.
struct Cleanup {
    domain: Option<String>,
    /// The libvirtd this test started.
    started: Option<u32>,
    /// Released after the clean-up of `drop`.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(name) = &self.domain {
            if let Err(e) = env_script(&["undefine", name]) {
                eprintln!("{e}");
            }
        }
        let Some(pid) = self.started else { return };
        // Other tests share the daemon: leave it to them while it has
        // domains of theirs, or once it is not the one started here.
        let others = Command::new("virsh")
            .args(["-q", "-c", URI, "list", "--all", "--name"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if daemon_pid() != Some(pid) || !others.is_empty() {
            eprintln!("leaving libvirtd running: it is not ours any more or has domains: {others}");
        } else if let Err(e) = env_script(&["stop"]) {
            eprintln!("{e}");
        }
    }
}

fn agent_json(reply: Option<String>) -> Value {
    serde_json::from_str(&reply.expect("an agent reply")).unwrap()
}

async fn agent(libvirt: &mut LibvirtClient, domain: &RemoteDomain, command: &Value) -> Result<Value, Error> {
    // libvirtd's own wait for the agent, generous: a reply of megabytes
    // crosses the TCG guest's virtio port at a few MB/s, slower on a busy
    // machine, and libvirt's default (5 s) would then report an agent that
    // does not respond instead of the size limit a test looks for.
    const LIBVIRT_WAIT_SECONDS: i32 = 50;
    let deadline = Deadline::after(Duration::from_secs(60));
    libvirt
        .agent_command(domain, &command.to_string(), LIBVIRT_WAIT_SECONDS, deadline)
        .await
        .map(agent_json)
}

/// Runs `path args` in the guest and waits for it to exit; returns
/// `guest-exec-status`'s reply (or libvirt's refusal of it).
async fn guest_run(
    libvirt: &mut LibvirtClient,
    domain: &RemoteDomain,
    path: &str,
    args: &[&str],
) -> Result<Value, Error> {
    let started = agent(
        libvirt,
        domain,
        &json!({"execute": "guest-exec", "arguments": {"path": path, "arg": args, "capture-output": true}}),
    )
    .await?;
    let pid = started["return"]["pid"].as_i64().expect("a pid");
    let deadline = StdInstant::now() + Duration::from_secs(60);
    loop {
        let status = agent(
            libvirt,
            domain,
            &json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
        )
        .await?;
        if status["return"]["exited"] == json!(true) {
            return Ok(status);
        }
        assert!(StdInstant::now() < deadline, "{path} did not exit: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
#[ignore = "needs libvirtd and the test VM"]
fn libvirt_rpc_against_a_real_libvirtd() {
    let lock = host_wide_libvirt_lock();
    let was_running = StdUnixStream::connect(SOCKET).is_ok();
    let t = StdInstant::now();
    if let Err(e) = env_script(&["start"]) {
        panic!("libvirtd cannot run here, so nothing was checked: {e}");
    }
    let mut cleanup = Cleanup {
        domain: None,
        started: if was_running { None } else { daemon_pid() },
        _lock: lock,
    };
    eprintln!("libvirtd up after {:?} (was running: {was_running})", t.elapsed());

    let name = format!("virtomate-rpc-{}", std::process::id());
    let t = StdInstant::now();
    cleanup.domain = Some(name.clone());
    // A domain that does not come up (a broken image, a changed script, an
    // agent libvirt never sees) is a failure like libvirtd that does not
    // start. `cleanup` still undefines the domain and stops libvirtd as the
    // panic unwinds.
    if let Err(e) = env_script(&["define", &name]) {
        panic!("libvirtd runs, but no domain with a guest agent came up under it: {e}");
    }
    eprintln!(
        "domain {name} running with its agent connected after {:?}",
        t.elapsed()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = StdInstant::now();
        let mut libvirt = LibvirtClient::connect(Path::new(SOCKET), URI, &ClientOptions::default())
            .await
            .unwrap();
        eprintln!("connected (auth-list, connect-open) in {:?}", t.elapsed());
        let version = libvirt.lib_version().await.unwrap();
        eprintln!("libvirt {version}");
        assert!(version >= 1_000_000, "{version}");

        let t = StdInstant::now();
        let domain = libvirt.lookup_domain_by_name(&name).await.unwrap();
        eprintln!("looked up {domain} (id {}) in {:?}", domain.id, t.elapsed());
        assert_eq!(domain.name, name);
        assert!(domain.is_running());
        assert_eq!(libvirt.lookup_domain_by_uuid(&domain.uuid).await.unwrap(), domain);

        let t = StdInstant::now();
        let pong = agent(&mut libvirt, &domain, &json!({"execute": "guest-ping"}))
            .await
            .unwrap();
        eprintln!("guest-ping answered in {:?}", t.elapsed());
        assert_eq!(pong, json!({"return": {}}));

        // QEMU's monitor, which libvirtd holds too: its replies come back
        // whole, with libvirt's ids, errors included.
        let t = StdInstant::now();
        let deadline = Deadline::after(Duration::from_secs(60));
        let reply = libvirt
            .monitor_command(&domain, r#"{"execute":"query-status"}"#, deadline)
            .await
            .unwrap();
        eprintln!("query-status through libvirtd in {:?}: {reply}", t.elapsed());
        let status: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(status["return"]["running"], json!(true), "{reply}");
        assert_eq!(status["return"]["status"], json!("running"), "{reply}");
        assert!(
            status["id"].as_str().is_some_and(|id| id.starts_with("libvirt-")),
            "{reply}"
        );
        let reply = libvirt
            .monitor_command(&domain, r#"{"execute":"no-such-command"}"#, deadline)
            .await
            .unwrap();
        eprintln!("unknown monitor command: {reply}");
        let error: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(error["error"]["class"], json!("CommandNotFound"), "{reply}");
        let err = libvirt
            .monitor_command(&domain, r#"{"execute":"query-status","id":1}"#, deadline)
            .await
            .unwrap_err();
        eprintln!("monitor command with an id: {err}");
        assert!(
            matches!(
                &err,
                Error::Libvirt { code: ERR_INTERNAL_ERROR, message, .. } if message.contains("'id'")
            ),
            "{err:?}"
        );
        let mut qemu = LibvirtMonitor::connect(Path::new(SOCKET), URI, &name, &ClientOptions::default())
            .await
            .unwrap();
        assert!(qemu.execute(&QueryStatus {}).await.unwrap().running);
        let err = qemu.execute_json("no-such-command", None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Agent { class, .. } if class == "CommandNotFound"),
            "{err:?}"
        );
        drop(qemu);

        let t = StdInstant::now();
        let status = guest_run(&mut libvirt, &domain, "echo", &["-n", "hi"])
            .await
            .unwrap();
        eprintln!("guest-exec of echo and its status in {:?}: {status}", t.elapsed());
        assert_eq!(status["return"]["exitcode"], json!(0));
        assert_eq!(status["return"]["out-data"], json!("aGk="));

        let err = libvirt
            .lookup_domain_by_name("virtomate-no-such-domain")
            .await
            .unwrap_err();
        eprintln!("unknown domain: {err}");
        assert!(
            matches!(
                &err,
                Error::Libvirt { code: ERR_NO_DOMAIN, message, .. }
                    if message.contains("virtomate-no-such-domain")
            ),
            "{err:?}"
        );

        let err = agent(&mut libvirt, &domain, &json!({"execute": "guest-nosuch"}))
            .await
            .unwrap_err();
        eprintln!("unknown agent command: {err}");
        assert!(
            matches!(
                &err,
                Error::Libvirt { code: ERR_INTERNAL_ERROR, message, .. } if message.contains("guest-nosuch")
            ),
            "{err:?}"
        );

        // libvirt's limits on agent replies. Output in Base64 over
        // STRING_MAX fails to reach us; the agent keeps working.
        let bytes = (STRING_MAX / 4 * 3 + 1024).to_string();
        let t = StdInstant::now();
        let err = guest_run(&mut libvirt, &domain, "head", &["-c", &bytes, "/dev/zero"])
            .await
            .unwrap_err();
        eprintln!("{bytes} bytes of output: {err} after {:?}", t.elapsed());
        assert!(
            matches!(
                &err,
                Error::Libvirt { code: ERR_RPC, message, .. } if message == "Unable to encode message payload"
            ),
            "{err:?}"
        );
        assert_eq!(
            agent(&mut libvirt, &domain, &json!({"execute": "guest-ping"}))
                .await
                .unwrap(),
            json!({"return": {}})
        );
        // A reply over AGENT_RESPONSE_MAX breaks libvirtd's agent channel
        // for good, so it comes last.
        let bytes = (AGENT_RESPONSE_MAX / 4 * 3 + 1024).to_string();
        let t = StdInstant::now();
        let err = guest_run(&mut libvirt, &domain, "head", &["-c", &bytes, "/dev/zero"])
            .await
            .unwrap_err();
        eprintln!("{bytes} bytes of output: {err} after {:?}", t.elapsed());
        assert!(
            matches!(
                &err,
                Error::Libvirt { message, .. } if message.contains(&AGENT_RESPONSE_MAX.to_string())
            ),
            "{err:?}"
        );
        let err = agent(&mut libvirt, &domain, &json!({"execute": "guest-ping"}))
            .await
            .unwrap_err();
        eprintln!("then guest-ping: {err}");
        assert!(
            matches!(
                err,
                Error::Libvirt {
                    code: ERR_AGENT_UNRESPONSIVE,
                    ..
                }
            ),
            "{err:?}"
        );

        let t = StdInstant::now();
        libvirt.close().await.unwrap();
        eprintln!("closed in {:?}", t.elapsed());
    });
    drop(cleanup);
}

/// Runs [`connect_as_this_user`] as uid 65534, to whom libvirtd offers
/// only polkit.
fn check_refused_to_nobody() {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "libvirt_rpc::connect_as_this_user",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output();
    match output {
        Ok(output) if output.status.success() => {
            let said = String::from_utf8_lossy(&output.stdout);
            eprintln!(
                "as uid 65534: {}",
                said.lines().find(|l| l.starts_with("connect:")).unwrap_or("?")
            );
            assert!(
                said.contains(&format!(
                    "connect: cannot connect to {SOCKET}: libvirtd asks for polkit authentication"
                )),
                "{said}"
            );
        }
        Ok(output) => panic!(
            "could not run the check as uid 65534: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("could not run the check as uid 65534: setpriv: {e}"),
    }
}

/// Set for [`connect_as_this_user`] when [`check_refused_to_nobody`] runs it.
const CHILD: &str = "VIRTOMATE_TEST_CONNECT_AS_CHILD";

/// Run directly, the check: libvirtd (started if it does not run) refuses
/// uid 65534, who is offered only polkit; [`check_refused_to_nobody`] runs
/// this same test as that user, where it connects and prints the outcome,
/// which the check asserts. Whichever way it is run, it fails when the
/// check fails.
#[test]
#[ignore = "needs libvirtd"]
fn connect_as_this_user() {
    if std::env::var_os(CHILD).is_none() {
        let lock = host_wide_libvirt_lock();
        let was_running = StdUnixStream::connect(SOCKET).is_ok();
        if let Err(e) = env_script(&["start"]) {
            panic!("libvirtd cannot run here, so nothing was checked: {e}");
        }
        let cleanup = Cleanup {
            domain: None,
            started: if was_running { None } else { daemon_pid() },
            _lock: lock,
        };
        check_refused_to_nobody();
        drop(cleanup);
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(LibvirtClient::connect(
        Path::new(SOCKET),
        URI,
        &ClientOptions::default(),
    ));
    match outcome {
        Ok(_) => println!("connect: ok"),
        Err(e) => println!("connect: {e}"),
    }
}
