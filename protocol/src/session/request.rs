//! The requests of a session, as JSON lines: parsed strictly, so that a
//! key this version does not know is refused rather than ignored (a
//! `max_time` silently dropped would run a program without its limit).
//! Later versions add keys; a request that uses none of them keeps its
//! meaning.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::fields;
use crate::qga::{self, base64_data, CaptureOutput, GuestExec};

/// One request: its `id`, echoed in the reply, and what to do.
///
/// ```
/// use virtomate_protocol::session::{Action, Request};
///
/// let request = Request::parse(br#"{"id": 7, "run": ["uname", "-r"]}"#).unwrap();
/// assert_eq!(request.id, 7);
/// let Action::Run(run) = request.action else { panic!() };
/// assert_eq!((run.program.as_str(), run.args.as_slice()), ("uname", &["-r".to_owned()][..]));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// Any JSON value the client chose; `null` when it gave none.
    pub id: Value,
    /// What to do.
    pub action: Action,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// `{"run": [PROGRAM, ARG...], "stdin": BASE64, "encode": BOOL}`.
    Run(RunRequest),
    /// `{"ping": {}}`: does the agent answer?
    Ping,
    /// `{"stdin": BASE64, "eof": BOOL}`: input for the running program
    /// whose request had the same id and `"interactive": true`, and
    /// whether it is the last. Input for a program that has ended, or was
    /// not started interactive, is dropped.
    Input {
        /// The bytes, in order after those given before.
        bytes: Vec<u8>,
        /// The input ends here: the program's standard input is closed
        /// once it has been written.
        end: bool,
    },
}

/// A program to run, as `guest-run` runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunRequest {
    /// The program; the guest's `PATH` is searched.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Bytes for its standard input, which is then closed.
    pub stdin: Option<Vec<u8>>,
    /// Whether the client wants the output as Base64 rather than text.
    pub encode: bool,
    /// `KEY=VALUE` for the program's environment (`"env": {"KEY":
    /// "VALUE"}`), over a standard `PATH` unless `env_clear`; see
    /// [`environment`](crate::qga::environment).
    pub env: Vec<String>,
    /// Start from an empty environment (`"env_clear": true`).
    pub env_clear: bool,
    /// Stop the program, and what it started, after this long
    /// (`"max_time": SECONDS`); see [`stop_group`](crate::stop_group).
    pub max_time: Option<Duration>,
    /// Between SIGTERM and SIGKILL when stopping it (`"grace": SECONDS`,
    /// default 5).
    pub grace: Duration,
    /// Standard output and standard error as one stream
    /// (`"merge_output": true`; qemu-ga 8.1 or newer).
    pub merge_output: bool,
    /// Stream the output as reply lines while the program runs
    /// (`"follow": true`), as `guest-run --follow` does; the result then
    /// has no output of its own. Not with `merge_output`.
    pub follow: bool,
    /// Stream the program's standard input too (`"interactive": true`),
    /// as `guest-run --interactive` does: it comes in [`Action::Input`]
    /// requests with this request's id, and is fed through a named pipe
    /// (see [`feed`](crate::feed)). Implies `follow`; not with `stdin`.
    pub interactive: bool,
}

/// The time between SIGTERM and SIGKILL when a request does not say.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl RunRequest {
    /// `program` with `args`, no input, output as text.
    pub fn new<A: Into<String>>(program: impl Into<String>, args: impl IntoIterator<Item = A>) -> RunRequest {
        RunRequest {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            encode: false,
            env: Vec::new(),
            env_clear: false,
            max_time: None,
            grace: DEFAULT_GRACE,
            merge_output: false,
            follow: false,
            interactive: false,
        }
    }

    /// The same, with `stdin` for the program's standard input.
    pub fn with_stdin(mut self, stdin: Vec<u8>) -> RunRequest {
        self.stdin = Some(stdin);
        self
    }

    /// The `guest-exec` that starts it, before any redirection of its
    /// output; the input moves, not copied.
    pub fn into_guest_exec(self) -> GuestExec {
        let mut exec = GuestExec::new(self.program, self.args);
        exec.input_data = self.stdin;
        exec.env = qga::environment(&self.env, self.env_clear);
        if self.merge_output {
            exec.capture_output = CaptureOutput::Merged;
        }
        exec
    }

    /// The length of the `guest-exec` request that starts it (see
    /// [`GuestExec::request_len`]), to refuse one the agent would not take
    /// before anything is sent.
    pub fn request_len(&self) -> usize {
        // The input goes as Base64, 4 bytes for every 3, in its place.
        let mut exec = self.clone_without_input().into_guest_exec();
        exec.input_data = self.stdin.as_ref().map(|_| Vec::new());
        let input = self.stdin.as_ref().map_or(0, |stdin| stdin.len().div_ceil(3) * 4);
        exec.request_len() + input
    }

    fn clone_without_input(&self) -> RunRequest {
        RunRequest {
            program: self.program.clone(),
            args: self.args.clone(),
            stdin: None,
            env: self.env.clone(),
            ..*self
        }
    }
}

/// A line that is no request this version understands, with the id to
/// answer it under (`null` when the line has none).
///
/// ```
/// use virtomate_protocol::session::Request;
///
/// let bad = Request::parse(br#"{"id": 3, "run": []}"#).unwrap_err();
/// assert_eq!(bad.id, 3);
/// assert_eq!(bad.message, "\"run\" must be a list of strings, the program first");
/// assert!(Request::parse(b"not json").unwrap_err().id.is_null());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BadRequest {
    /// The request's id, or `null`.
    pub id: Value,
    /// What is wrong with it.
    pub message: String,
}

impl Request {
    /// A request to run `run`.
    pub fn run(id: Value, run: RunRequest) -> Request {
        Request {
            id,
            action: Action::Run(run),
        }
    }

    /// Input for the interactive run `id`; `end` closes its standard
    /// input after it.
    pub fn input(id: Value, bytes: Vec<u8>, end: bool) -> Request {
        Request {
            id,
            action: Action::Input { bytes, end },
        }
    }

    /// A request to ping the agent.
    pub fn ping(id: Value) -> Request {
        Request {
            id,
            action: Action::Ping,
        }
    }

    /// Parses one line of JSON.
    ///
    /// ```
    /// use virtomate_protocol::session::Request;
    ///
    /// let bad = Request::parse(br#"{"id": 1, "run": ["ls"], "stdout": true}"#).unwrap_err();
    /// assert_eq!(bad.message, "unknown key \"stdout\" in a run request");
    /// ```
    pub fn parse(line: &[u8]) -> Result<Request, BadRequest> {
        let value: Value = serde_json::from_slice(line).map_err(|e| BadRequest {
            id: Value::Null,
            message: format!("not JSON: {e}"),
        })?;
        let Value::Object(object) = value else {
            return Err(BadRequest {
                id: Value::Null,
                message: "a request is a JSON object".to_owned(),
            });
        };
        Request::from_object(object)
    }

    /// The request a JSON object (a line already parsed) asks for: for a
    /// caller that looks at its keys first, for requests of its own.
    ///
    /// ```
    /// use serde_json::{json, Value};
    /// use virtomate_protocol::session::{Action, Request};
    ///
    /// let Value::Object(object) = json!({"id": 1, "ping": {}}) else { unreachable!() };
    /// assert_eq!(Request::from_object(object).unwrap().action, Action::Ping);
    /// ```
    pub fn from_object(mut object: Map<String, Value>) -> Result<Request, BadRequest> {
        let id = object.remove("id").unwrap_or(Value::Null);
        let action = if object.contains_key("run") {
            fields::parse::<RunFields>(object, "a run request").and_then(RunFields::into_run)
        } else if object.contains_key("ping") {
            fields::parse::<PingFields>(object, "a ping request").map(|_| Action::Ping)
        } else if object.contains_key("stdin") || object.contains_key("eof") {
            fields::parse::<InputFields>(object, "an input line").map(InputFields::into_input)
        } else {
            Err("a request needs \"run\" or \"ping\"".to_owned())
        };
        match action {
            Ok(action) => Ok(Request { id, action }),
            Err(message) => Err(BadRequest { id, message }),
        }
    }
}

/// The keys of a run request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFields {
    #[serde(deserialize_with = "command")]
    run: (String, Vec<String>),
    #[serde(default, deserialize_with = "base64_data::deserialize")]
    stdin: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "fields::flag")]
    encode: bool,
    #[serde(default, deserialize_with = "environment")]
    env: Vec<String>,
    #[serde(default, deserialize_with = "fields::flag")]
    env_clear: bool,
    #[serde(default, deserialize_with = "seconds")]
    max_time: Option<Duration>,
    #[serde(default, deserialize_with = "seconds")]
    grace: Option<Duration>,
    #[serde(default, deserialize_with = "fields::flag")]
    merge_output: bool,
    #[serde(default, deserialize_with = "fields::flag")]
    follow: bool,
    #[serde(default, deserialize_with = "fields::flag")]
    interactive: bool,
}

impl RunFields {
    fn into_run(self) -> Result<Action, String> {
        if (self.follow || self.interactive) && self.merge_output {
            let key = if self.interactive { "interactive" } else { "follow" };
            return Err(format!(
                "\"{key}\" streams stdout and stderr apart: it cannot go with \"merge_output\""
            ));
        }
        if self.interactive && self.stdin.is_some() {
            return Err(
                "\"interactive\" takes its input in lines {\"id\": ID, \"stdin\": BASE64}: it cannot go \
                 with \"stdin\""
                    .to_owned(),
            );
        }
        let (program, args) = self.run;
        Ok(Action::Run(RunRequest {
            program,
            args,
            stdin: self.stdin,
            encode: self.encode,
            env: self.env,
            env_clear: self.env_clear,
            max_time: self.max_time,
            grace: self.grace.unwrap_or(DEFAULT_GRACE),
            merge_output: self.merge_output,
            follow: self.follow || self.interactive,
            interactive: self.interactive,
        }))
    }
}

/// The keys of an input line: `"stdin"`, `"eof"` or both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFields {
    #[serde(default, deserialize_with = "base64_data::deserialize")]
    stdin: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "fields::flag")]
    eof: bool,
}

impl InputFields {
    fn into_input(self) -> Action {
        Action::Input {
            bytes: self.stdin.unwrap_or_default(),
            end: self.eof,
        }
    }
}

/// The keys of a ping request: `"ping"` alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingFields {
    #[serde(rename = "ping", deserialize_with = "empty_object")]
    _ping: (),
}

/// `"run": [PROGRAM, ARG...]`.
fn command<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(String, Vec<String>), D::Error> {
    let wrong = || D::Error::custom("must be a list of strings, the program first");
    let mut command = Vec::<String>::deserialize(deserializer).map_err(|_| wrong())?;
    if command.is_empty() {
        return Err(wrong());
    }
    if command.iter().any(|word| word.contains('\0')) {
        return Err(D::Error::custom(NO_NUL));
    }
    let program = command.remove(0);
    Ok((program, command))
}

/// `"max_time"` or `"grace"`: seconds, more than 0; `null` is none.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let wrong = || D::Error::custom("must be a number of seconds greater than 0");
    let Some(seconds) = Option::<f64>::deserialize(deserializer).map_err(|_| wrong())? else {
        return Ok(None);
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(time) if !time.is_zero() && time.as_secs_f64() <= 1e9 => Ok(Some(time)),
        _ => Err(wrong()),
    }
}

/// `"env": {"KEY": "VALUE"}` as `KEY=VALUE`; `null` is none.
fn environment<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let wrong = || D::Error::custom("must be an object of strings, its keys without '='");
    let pairs = Option::<BTreeMap<String, String>>::deserialize(deserializer).map_err(|_| wrong())?;
    pairs
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| match !key.is_empty() && !key.contains('=') {
            true if key.contains('\0') || value.contains('\0') => Err(D::Error::custom(NO_NUL)),
            true => Ok(format!("{key}={value}")),
            false => Err(wrong()),
        })
        .collect()
}

/// The agent passes the command and environment as C strings: a NUL
/// would cut them short, or fail the run once the program has run.
const NO_NUL: &str = "cannot hold a NUL byte: a command line cannot pass one";

/// `"ping": {}`.
fn empty_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    match Map::<String, Value>::deserialize(deserializer) {
        Ok(object) if object.is_empty() => Ok(()),
        _ => Err(D::Error::custom("takes an empty object: {}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(line: &str) -> (Value, String) {
        let bad = Request::parse(line.as_bytes()).unwrap_err();
        (bad.id, bad.message)
    }

    #[test]
    fn a_run_request_with_every_key() {
        let request =
            Request::parse(br#"{"id": [1], "run": ["cat", "-"], "stdin": "aGk=", "encode": true}"#).unwrap();
        let mut expected = RunRequest::new("cat", ["-"]).with_stdin(b"hi".to_vec());
        expected.encode = true;
        assert_eq!(request, Request::run(serde_json::json!([1]), expected));
        let request = Request::parse(br#"{"run": ["true"]}"#).unwrap();
        assert_eq!(request.id, Value::Null);
    }

    #[test]
    fn guest_runs_options_are_keys_of_a_run_request() {
        let line = br#"{"id": 1, "run": ["env"], "env": {"A": "x=y z"}, "env_clear": true,
            "max_time": 2.5, "grace": 1, "merge_output": true}"#;
        let Action::Run(run) = Request::parse(line).unwrap().action else {
            panic!("a run")
        };
        assert_eq!(run.env, ["A=x=y z"]);
        assert!(run.env_clear && run.merge_output);
        assert_eq!(run.max_time, Some(Duration::from_millis(2500)));
        assert_eq!(run.grace, Duration::from_secs(1));
        for (bad, says) in [
            (
                r#"{"run": ["a"], "max_time": 0}"#,
                "\"max_time\" must be a number of seconds greater than 0",
            ),
            (
                r#"{"run": ["a"], "max_time": -1}"#,
                "\"max_time\" must be a number of seconds greater than 0",
            ),
            (
                r#"{"run": ["a"], "env": {"A=B": "c"}}"#,
                "\"env\" must be an object of strings, its keys without '='",
            ),
            (
                r#"{"run": ["a"], "env": ["A=1"]}"#,
                "\"env\" must be an object of strings, its keys without '='",
            ),
            (
                r#"{"run": ["a"], "merge_output": "yes"}"#,
                "\"merge_output\" must be true or false",
            ),
        ] {
            assert_eq!(message(bad).1, says, "{bad}");
        }
    }

    #[test]
    fn follow_is_a_flag_of_a_run_request_apart_from_merge_output() {
        let line = br#"{"id": 1, "run": ["make"], "follow": true, "max_time": 60}"#;
        let Action::Run(run) = Request::parse(line).unwrap().action else {
            panic!("a run")
        };
        assert!(run.follow && !run.merge_output);
        let Action::Run(run) = Request::parse(br#"{"run": ["ls"]}"#).unwrap().action else {
            panic!("a run")
        };
        assert!(!run.follow);
        assert_eq!(
            message(r#"{"run": ["a"], "follow": "yes"}"#).1,
            "\"follow\" must be true or false"
        );
        assert!(message(r#"{"run": ["a"], "follow": true, "merge_output": true}"#)
            .1
            .contains("cannot go with \"merge_output\""));
        assert_eq!(
            message(r#"{"ping": {}, "follow": true}"#).1,
            "unknown key \"follow\" in a ping request"
        );
    }

    #[test]
    fn interactive_implies_follow_and_input_lines_carry_the_runs_id() {
        let line = br#"{"id": 1, "run": ["cat"], "interactive": true}"#;
        let Action::Run(run) = Request::parse(line).unwrap().action else {
            panic!("a run")
        };
        assert!(run.interactive && run.follow);
        assert_eq!(
            Request::parse(br#"{"id": 1, "stdin": "aGk="}"#).unwrap(),
            Request::input(1.into(), b"hi".to_vec(), false)
        );
        assert_eq!(
            Request::parse(br#"{"id": 1, "eof": true}"#).unwrap(),
            Request::input(1.into(), Vec::new(), true)
        );
        assert_eq!(
            message(r#"{"id": 1, "eof": true, "x": 1}"#).1,
            "unknown key \"x\" in an input line"
        );
        assert!(message(r#"{"run": ["cat"], "interactive": true, "stdin": ""}"#)
            .1
            .contains("cannot go with \"stdin\""));
        assert!(
            message(r#"{"run": ["cat"], "interactive": true, "merge_output": true}"#)
                .1
                .starts_with("\"interactive\" streams")
        );
    }

    #[test]
    fn a_bad_request_keeps_its_id_and_says_what_is_wrong() {
        assert_eq!(message(r#"{"id": 2}"#).1, "a request needs \"run\" or \"ping\"");
        assert_eq!(message(r#"[1]"#).0, Value::Null);
        assert_eq!(message(r#"{"id": "x", "run": ["a", 1]}"#).0, "x");
        assert!(message(r#"{"id": 1, "run": ["a"], "stdin": "@@"}"#)
            .1
            .contains("not Base64"));
        assert_eq!(
            message(r#"{"id": 1, "run": ["a"], "encode": 1}"#).1,
            "\"encode\" must be true or false"
        );
        assert_eq!(
            message(r#"{"id": 1, "ping": {"x": 1}}"#).1,
            "\"ping\" takes an empty object: {}"
        );
        assert_eq!(
            message(r#"{"id": 1, "ping": {}, "run": ["a"]}"#).1,
            "unknown key \"ping\" in a run request"
        );
    }

    #[test]
    fn a_nul_byte_in_the_command_or_environment_is_refused_before_anything_runs() {
        for (bad, key) in [
            (r#"{"id": 1, "run": ["echo", "a\u0000b"]}"#, "run"),
            (r#"{"id": 1, "run": ["ec\u0000ho"]}"#, "run"),
            (r#"{"id": 1, "run": ["env"], "env": {"A": "x\u0000"}}"#, "env"),
            (r#"{"id": 1, "run": ["env"], "env": {"A\u0000": "x"}}"#, "env"),
        ] {
            let (id, says) = message(bad);
            assert_eq!(id, 1, "{bad}");
            assert_eq!(
                says,
                format!("\"{key}\" cannot hold a NUL byte: a command line cannot pass one"),
                "{bad}"
            );
        }
        // Input is bytes: a NUL there is fine.
        assert!(Request::parse(br#"{"run": ["cat"], "stdin": "AA=="}"#).is_ok());
    }
}
