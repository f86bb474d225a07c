//! The examples of the specification (`virtomate-guest-run.rst`), run on
//! a domain of the test VM, however it is reached.

use super::run;

/// One example of `virtomate-guest-run.rst`: stdin, options of guest-run,
/// expected stdout, program. The guest is busybox, whose `cat` words its
/// error differently from GNU cat.
type Example = (
    Option<&'static [u8]>,
    Vec<&'static str>,
    &'static str,
    Vec<&'static str>,
);

fn examples() -> Vec<Example> {
    vec![
        (
            None,
            vec![],
            r#"{
  "exit_code": 0,
  "signal": null,
  "stderr": null,
  "stderr_truncated": false,
  "stdout": "Hello World",
  "stdout_truncated": false
}
"#,
            vec!["echo", "-n", "Hello World"],
        ),
        (
            None,
            vec!["--encode"],
            r#"{
  "exit_code": 0,
  "signal": null,
  "stderr": null,
  "stderr_truncated": false,
  "stdout": "SGVsbG8gV29ybGQ=",
  "stdout_truncated": false
}
"#,
            vec!["echo", "-n", "Hello World"],
        ),
        (
            None,
            vec![],
            r#"{
  "exit_code": 1,
  "signal": null,
  "stderr": "cat: can't open '/does/not/exist': No such file or directory\n",
  "stderr_truncated": false,
  "stdout": null,
  "stdout_truncated": false
}
"#,
            vec!["cat", "/does/not/exist"],
        ),
        (
            None,
            vec![],
            r#"{
  "exit_code": 0,
  "signal": null,
  "stderr": null,
  "stderr_truncated": false,
  "stdout": "11\n",
  "stdout_truncated": false
}
"#,
            vec!["/usr/bin/env", "bash", "-c", "printf \"Hello World\" | wc -m"],
        ),
        (
            Some(b"Hello World"),
            vec!["--stdin"],
            r#"{
  "exit_code": 0,
  "signal": null,
  "stderr": null,
  "stderr_truncated": false,
  "stdout": "11\n",
  "stdout_truncated": false
}
"#,
            vec!["wc", "-m"],
        ),
    ]
}

pub fn check_examples(domain: &str) {
    for (stdin, options, expected, program) in examples() {
        let mut args = vec!["-p", "guest-run"];
        args.extend(options);
        args.push(domain);
        args.push("--");
        args.extend(program);
        let out = run(&args, stdin);
        assert_eq!(out.status, 0, "{args:?}: {out:?}");
        assert_eq!(out.stdout, expected, "{args:?}");
    }

    let out = run(&["-p", "guest-run", domain, "--", "/does/not/exist"], None);
    assert_eq!(
        out.stdout,
        concat!(
            r#"{
  "message": "unable to execute QEMU agent command 'guest-exec': Guest agent command failed, "#,
            r#"error was 'Failed to execute child process \u201c/does/not/exist\u201d "#,
            r#"(No such file or directory)'",
  "type": "AgentCommandError"
}
"#
        )
    );
    assert_eq!(out.status, 1);
}
