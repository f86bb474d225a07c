//! What the master and its clients say to each other beyond plain QGA:
//! a request's `id` swapped for one unique in the master and back, the
//! master's own commands, and a failure to reach the agent carried to
//! the client that asked, so that it fails as it would have alone.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use virtomate_protocol::{Error, Phase};

/// Makes sure the master holds a synchronised connection to the agent,
/// within `timeout_ms`; answered `{}` or with a [`LinkFailure`].
pub const ATTACH: &str = "x-virtomate-attach";
/// Runs a program whole, as the session engine does: the arguments are
/// [`RunArguments`]. Answered first as [`ATTACH`] is (so that it takes
/// no exchange of its own), then, once ready, with the run's relayed
/// replies (`virtomate_protocol::session::relay`); the client may send a
/// refusal of output ([`REFUSE`]) and a give-up line ([`GIVE_UP`]), and
/// nothing else.
pub const RUN: &str = "x-virtomate-run";
/// The line a client of a whole run sends when it cannot take the run's
/// output (its reader went away): the engine stops the program, as it
/// does when its own caller refuses output, and replies its end.
pub const REFUSE: &[u8] = b"{\"refuse\": {}}\n";
/// The line a client of a whole run sends on a signal: the master gives
/// the run up (as the session engine does) and answers with what it left.
pub const GIVE_UP: &[u8] = b"{\"give_up\": {}}\n";

/// What a whole run is started with: how long the attach may take, how
/// long the agent is waited for later, and the run's relayed request line.
#[derive(Serialize, Deserialize)]
pub struct RunArguments {
    pub timeout_ms: u64,
    pub handshake_ms: u64,
    pub reply_ms: u64,
    pub request: Box<RawValue>,
}

/// What the master is: [`MasterInfo`].
pub const INFO: &str = "x-virtomate-master-info";
/// Ends the master once it has answered.
pub const EXIT: &str = "x-virtomate-master-exit";
/// The error class of a [`LinkFailure`] reply.
pub const LINK_FAILURE_CLASS: &str = "x-virtomate-link";

/// A request line as a client sends it, its parts left unparsed.
#[derive(Deserialize)]
pub struct ClientRequest<'a> {
    pub execute: String,
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
}

impl ClientRequest<'_> {
    /// The request with `id` in place of the client's.
    pub fn with_id(&self, id: u64) -> Vec<u8> {
        let mut line = format!("{{\"execute\":{}", serde_json::Value::from(self.execute.as_str()));
        if let Some(arguments) = self.arguments {
            line.push_str(",\"arguments\":");
            line.push_str(arguments.get());
        }
        line.push_str(&format!(",\"id\":{id}}}\n"));
        line.into_bytes()
    }

    /// `guest-sync-delimited`'s or `guest-sync`'s number, which the master
    /// echoes itself.
    pub fn sync_id(&self) -> Option<u64> {
        #[derive(Deserialize)]
        struct SyncArguments {
            id: u64,
        }
        let arguments = self.arguments?;
        serde_json::from_str::<SyncArguments>(arguments.get())
            .ok()
            .map(|a| a.id)
    }
}

/// An agent's reply line, read only as far as routing it to its client
/// needs: the agent ends a reply with its id (`…, "id": 7}`), so a reply
/// of megabytes (a file's data) is neither parsed nor copied here, only
/// its id put back as the client's; the client parses it, as it would
/// have without the master. A line that does not end so is parsed
/// ([`AgentReply`]), and one that is no reply is none.
pub struct AgentLine {
    line: Vec<u8>,
    /// The master's id it answers.
    id: Option<u64>,
    /// Where its own id begins (the comma before it), when it ends it.
    id_at: Option<usize>,
}

impl AgentLine {
    pub fn read(line: Vec<u8>) -> Option<AgentLine> {
        if let Some((id, at)) = id_at_end(&line) {
            return Some(AgentLine {
                line,
                id: Some(id),
                id_at: Some(at),
            });
        }
        let id = serde_json::from_slice::<AgentReply>(&line).ok()?.id;
        Some(AgentLine {
            line,
            id,
            id_at: None,
        })
    }

    /// The master's id it answers.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The line with the client's own `id` (raw JSON) in place of the
    /// master's, or none where the client gave none.
    pub fn for_client(self, client_id: Option<&str>) -> Vec<u8> {
        let Some(at) = self.id_at else {
            let reply = serde_json::from_slice::<AgentReply>(&self.line);
            return reply.expect("read as a reply").for_client(client_id);
        };
        let mut line = self.line;
        line.truncate(at);
        // Spelled as the agent spells its replies.
        if let Some(id) = client_id {
            line.extend_from_slice(b", \"id\": ");
            line.extend_from_slice(id.as_bytes());
        }
        line.extend_from_slice(b"}\n");
        line
    }
}

/// The id that ends a reply line (`…, "id": 7}`), and where the comma
/// before it is. In a line that is one JSON object, as the agent's are,
/// only a member of the object itself can end so.
fn id_at_end(line: &[u8]) -> Option<(u64, usize)> {
    let trim_end = |s: &[u8]| s.len() - s.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let rest = &line[..trim_end(line)];
    let rest = &rest[..trim_end(rest.strip_suffix(b"}")?)];
    let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let id = std::str::from_utf8(&rest[rest.len() - digits..])
        .ok()?
        .parse()
        .ok()?;
    let rest = &rest[..trim_end(&rest[..rest.len() - digits])];
    let rest = &rest[..trim_end(rest.strip_suffix(b":")?)];
    let rest = &rest[..trim_end(rest.strip_suffix(b"\"id\"")?)];
    let rest = rest.strip_suffix(b",")?;
    Some((id, rest.len()))
}

/// An agent's reply line, its parts left unparsed.
#[derive(Deserialize)]
struct AgentReply<'a> {
    #[serde(borrow, rename = "return", default)]
    pub ret: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    #[serde(default)]
    pub id: Option<u64>,
}

impl AgentReply<'_> {
    /// The reply with the client's own `id` (raw JSON) in place of the
    /// master's, or none where the client gave none.
    pub fn for_client(&self, client_id: Option<&str>) -> Vec<u8> {
        let mut line = match (self.ret, self.error) {
            (Some(ret), _) => format!("{{\"return\": {}", ret.get()),
            (None, Some(error)) => format!("{{\"error\": {}", error.get()),
            (None, None) => "{\"return\": {}".to_owned(),
        };
        // Spelled as the agent spells its replies.
        if let Some(id) = client_id {
            line.push_str(&format!(", \"id\": {id}"));
        }
        line.push_str("}\n");
        line.into_bytes()
    }
}

/// A reply line of the master's own, to `client_id` (raw JSON).
pub fn own_reply(body: serde_json::Value, client_id: Option<&str>) -> Vec<u8> {
    let mut line = serde_json::to_string(&body).expect("a JSON value always serializes");
    if let Some(id) = client_id {
        line.pop();
        line.push_str(&format!(",\"id\":{id}}}"));
    }
    line.push('\n');
    line.into_bytes()
}

/// An error reply of the master's own.
pub fn own_error(class: &str, desc: &str, client_id: Option<&str>) -> Vec<u8> {
    own_reply(
        serde_json::json!({ "error": { "class": class, "desc": desc } }),
        client_id,
    )
}

/// What the master's answer to an attach says: ready, or why not.
pub fn attach_outcome(answer: &[u8]) -> Result<(), LinkFailure> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "return", default)]
        ret: Option<serde_json::Value>,
        #[serde(default)]
        error: Option<ErrorBody>,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        class: String,
        desc: String,
    }
    let other = |message: String| LinkFailure::Other { message };
    let answer: Answer =
        serde_json::from_slice(answer).map_err(|e| other(format!("the master's answer is not JSON: {e}")))?;
    match (answer.ret, answer.error) {
        (Some(_), _) => Ok(()),
        (None, Some(error)) if error.class == LINK_FAILURE_CLASS => {
            Err(serde_json::from_str(&error.desc).unwrap_or_else(|_| other(error.desc)))
        }
        (None, Some(error)) => Err(other(format!("the master: {}: {}", error.class, error.desc))),
        (None, None) => Err(other("the master's answer says nothing".to_owned())),
    }
}

/// Whether `answer` says the master does not know the command asked
/// (an older virtomate's master, which passed it on to the agent).
pub fn not_known(answer: &[u8]) -> bool {
    // Every member optional: a reply without an error parses too. A failed
    // parse works out its error's line with a search whose first use in a
    // process asks the CPU for its features (protocol/src/wire/scan.rs).
    #[derive(Deserialize)]
    struct Answer {
        error: Option<ErrorClass>,
    }
    #[derive(Deserialize)]
    struct ErrorClass {
        class: String,
    }
    let answer = serde_json::from_slice::<Answer>(answer);
    answer.is_ok_and(|a| a.error.is_some_and(|error| error.class == "CommandNotFound"))
}

/// What `control check` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct MasterInfo {
    pub pid: u32,
    /// Seconds since the epoch when it started.
    pub since: u64,
    /// Requests passed on to the agent.
    pub requests: u64,
    /// Clients' whole runs begun ([`RUN`]); none from an older master.
    #[serde(default)]
    pub runs: u64,
    pub clients: usize,
    pub agent_socket: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Whether it holds a connection to the agent now.
    pub connected: bool,
    pub persist_seconds: f64,
}

/// Why the master could not reach the agent, as the [`Error`] a client
/// that connected itself would have got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LinkFailure {
    Connect {
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    HandshakeTimeout {
        after_ms: u64,
    },
    /// Unanswered while the agent most likely still reads a big request
    /// that another client sent and left.
    BusyWithEarlierRequest {
        path: PathBuf,
        after_ms: u64,
        request: virtomate_protocol::RequestInFlight,
    },
    NotAnAgent {
        found: String,
    },
    Busy {
        path: PathBuf,
        waited_ms: u64,
        holder: Option<String>,
    },
    Disconnected,
    Other {
        message: String,
    },
}

impl LinkFailure {
    pub fn from_error(error: &Error) -> LinkFailure {
        match error {
            Error::Connect { path, source } => LinkFailure::Connect {
                path: path.clone(),
                errno: source.raw_os_error(),
                message: source.to_string(),
            },
            Error::Timeout {
                phase: Phase::Handshake | Phase::Connecting,
                after,
            } => LinkFailure::HandshakeTimeout {
                after_ms: after.as_millis() as u64,
            },
            Error::BusyWithEarlierRequest { path, after, request } => LinkFailure::BusyWithEarlierRequest {
                path: path.clone(),
                after_ms: after.as_millis() as u64,
                request: request.clone(),
            },
            Error::NotAnAgent { found } => LinkFailure::NotAnAgent { found: found.clone() },
            Error::Busy { path, waited, holder } => LinkFailure::Busy {
                path: path.clone(),
                waited_ms: waited.as_millis() as u64,
                holder: holder.clone(),
            },
            Error::Disconnected => LinkFailure::Disconnected,
            other => LinkFailure::Other {
                message: other.to_string(),
            },
        }
    }

    pub fn into_error(self) -> Error {
        match self {
            LinkFailure::Connect { path, errno, message } => Error::Connect {
                path,
                source: match errno {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::other(message),
                },
            },
            LinkFailure::HandshakeTimeout { after_ms } => Error::Timeout {
                phase: Phase::Handshake,
                after: Duration::from_millis(after_ms),
            },
            LinkFailure::BusyWithEarlierRequest {
                path,
                after_ms,
                request,
            } => Error::BusyWithEarlierRequest {
                path,
                after: Duration::from_millis(after_ms),
                request,
            },
            LinkFailure::NotAnAgent { found } => Error::NotAnAgent { found },
            LinkFailure::Busy {
                path,
                waited_ms,
                holder,
            } => Error::Busy {
                path,
                waited: Duration::from_millis(waited_ms),
                holder,
            },
            LinkFailure::Disconnected => Error::Disconnected,
            LinkFailure::Other { message } => Error::Io(io::Error::other(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_its_arguments_and_takes_the_masters_id() {
        let line = br#"{"execute": "guest-exec-status", "arguments": {"pid": 12}, "id": "c-1"}"#;
        let request: ClientRequest = serde_json::from_slice(line).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&request.with_id(7)).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": 12}, "id": 7})
        );
        assert_eq!(request.id.map(RawValue::get), Some("\"c-1\""));
    }

    #[test]
    fn a_reply_ending_with_its_id_goes_back_as_it_came_with_the_clients_id() {
        let line = br#"{"return": {"count": 3, "buf-b64": "YWJj", "eof": false}, "id": 7}"#.to_vec();
        let reply = AgentLine::read(line).unwrap();
        assert_eq!(reply.id(), Some(7));
        assert_eq!(
            reply.for_client(Some("\"c-1\"")),
            &b"{\"return\": {\"count\": 3, \"buf-b64\": \"YWJj\", \"eof\": false}, \"id\": \"c-1\"}\n"[..]
        );
        let reply = AgentLine::read(br#"{"error": {"class": "X", "desc": "d"},"id":12 }"#.to_vec()).unwrap();
        assert_eq!(reply.id(), Some(12));
        assert_eq!(
            reply.for_client(None),
            &b"{\"error\": {\"class\": \"X\", \"desc\": \"d\"}}\n"[..]
        );
    }

    #[test]
    fn a_reply_not_ending_with_its_id_is_parsed_and_one_that_is_no_reply_is_none() {
        for (line, id) in [
            (&br#"{"id": 7, "return": {}}"#[..], Some(7)),
            (br#"{"return": {"id": 7}}"#, None),
            (br#"{"return": {"x": 1, "id": 7}}"#, None),
            (br#"{"return": {}, "k\"id": 7}"#, None),
        ] {
            let reply = AgentLine::read(line.to_vec()).unwrap();
            assert_eq!(reply.id(), id, "{}", String::from_utf8_lossy(line));
            let back: serde_json::Value = serde_json::from_slice(&reply.for_client(Some("3"))).unwrap();
            assert_eq!(back["id"], 3);
        }
        for garbage in [
            &b"garbage"[..],
            b"",
            b"[1, \"id\": 7}",
            b"{\"return\": {}, \"id\": }",
        ] {
            assert!(AgentLine::read(garbage.to_vec()).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn a_reply_goes_back_with_the_clients_id() {
        let reply: AgentReply = serde_json::from_slice(br#"{"return": {"pid": 3}, "id": 7}"#).unwrap();
        assert_eq!(reply.id, Some(7));
        let back: serde_json::Value = serde_json::from_slice(&reply.for_client(Some("\"c-1\""))).unwrap();
        assert_eq!(back, serde_json::json!({"return": {"pid": 3}, "id": "c-1"}));
        let error: AgentReply = serde_json::from_slice(br#"{"error": {"class": "X", "desc": "d"}}"#).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&error.for_client(None)).unwrap();
        assert_eq!(back, serde_json::json!({"error": {"class": "X", "desc": "d"}}));
    }

    #[test]
    fn a_link_failure_becomes_the_error_a_lone_client_gets() {
        let refused = Error::Connect {
            path: "/run/qga.sock".into(),
            source: io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
        };
        let carried: LinkFailure =
            serde_json::from_str(&serde_json::to_string(&LinkFailure::from_error(&refused)).unwrap())
                .unwrap();
        match carried.into_error() {
            Error::Connect { path, source } => {
                assert_eq!(path, PathBuf::from("/run/qga.sock"));
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
        let busy = Error::BusyWithEarlierRequest {
            path: "/run/qga.sock".into(),
            after: Duration::from_secs(2),
            request: virtomate_protocol::RequestInFlight {
                bytes: 22 << 20,
                pid: 4711,
                started: Some(99),
                sent_ms: 1_700_000_000_000,
            },
        };
        let carried: LinkFailure =
            serde_json::from_str(&serde_json::to_string(&LinkFailure::from_error(&busy)).unwrap()).unwrap();
        assert_eq!(carried.into_error().to_string(), busy.to_string());
    }
}
