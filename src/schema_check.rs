//! A request for the agent checked against QEMU's schema before it is
//! sent: an unknown command or member, a missing argument or a value of
//! the wrong type is a usage error that names the closest valid choice.

use serde_json::{Map, Value};
use virtomate_protocol::qga::schema::{
    argument_type, command_spec, CommandSpec, MemberSpec, Shape, COMMANDS,
};

use crate::error::CliError;

/// The schema's entry for `name`, or a usage error naming the closest
/// command.
pub fn known_command(name: &str) -> Result<&'static CommandSpec, CliError> {
    command_spec(name).ok_or_else(|| {
        let closest = closest(name, COMMANDS.iter().map(|c| c.name)).unwrap_or("guest-info");
        CliError::usage(format!(
            "the agent has no command '{name}' in QEMU's schema; the closest: '{closest}'"
        ))
        .with_hint("guest-info lists what the agent has; --unchecked sends a request as it is")
    })
}

/// Checks `arguments` (a JSON object, or none) against what the schema
/// says of the command `name`.
pub fn check_request(name: &str, arguments: Option<&Value>) -> Result<&'static CommandSpec, CliError> {
    let spec = known_command(name)?;
    let empty = Map::new();
    let object = arguments.and_then(Value::as_object).unwrap_or(&empty);
    check_members(spec.arguments, object, &format!("the arguments of {name}"))
        .map_err(|problem| CliError::usage(problem).with_hint("--unchecked sends a request as it is"))?;
    Ok(spec)
}

/// The member of `candidates` nearest to `word`: one that contains it
/// (`get-osinfo` in `guest-get-osinfo`), else the one fewest edits away.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(containing) = candidates
        .iter()
        .filter(|c| !word.is_empty() && c.contains(word))
        .min_by_key(|c| c.len())
    {
        return Some(containing);
    }
    candidates
        .into_iter()
        .min_by_key(|candidate| strsim::damerau_levenshtein(word, candidate))
}

fn check_members(members: &[MemberSpec], object: &Map<String, Value>, place: &str) -> Result<(), String> {
    for key in object.keys() {
        if !members.iter().any(|member| member.name == key) {
            let names: Vec<&str> = members.iter().map(|member| member.name).collect();
            return Err(match closest(key, names.iter().copied()) {
                Some(near) => format!(
                    "no member '{key}' in {place}; the closest: '{near}' (all: {})",
                    names.join(", ")
                ),
                None => format!("no member '{key}' in {place}: there are none"),
            });
        }
    }
    for member in members {
        match object.get(member.name) {
            Some(value) => check_value(member.ty, value, &format!("'{}' of {place}", member.name))?,
            None if member.optional => {}
            None => {
                return Err(format!(
                    "'{}' ({}) is missing from {place}",
                    member.name,
                    expected(member.ty)
                ))
            }
        }
    }
    Ok(())
}

fn check_value(ty: &str, value: &Value, place: &str) -> Result<(), String> {
    let wrong = || format!("{place} must be {}, not {}", expected(ty), found(value));
    if let Some(item) = ty.strip_prefix('[').and_then(|ty| ty.strip_suffix(']')) {
        let items = value.as_array().ok_or_else(wrong)?;
        return items
            .iter()
            .enumerate()
            .try_for_each(|(index, value)| check_value(item, value, &format!("item {index} of {place}")));
    }
    let fits = match ty {
        "str" => value.is_string(),
        "int" | "int8" | "int16" | "int32" | "int64" => value.is_i64(),
        "uint8" | "uint16" | "uint32" | "uint64" | "size" => value.is_u64(),
        "number" => value.is_number(),
        "bool" => value.is_boolean(),
        "any" => true,
        _ => return check_named(ty, value, place),
    };
    fits.then_some(()).ok_or_else(wrong)
}

fn check_named(ty: &str, value: &Value, place: &str) -> Result<(), String> {
    let Some(spec) = argument_type(ty) else {
        return Ok(());
    };
    match spec.shape {
        Shape::Struct(members) => match value.as_object() {
            Some(object) => check_members(members, object, place),
            None => Err(format!("{place} must be {}, not {}", expected(ty), found(value))),
        },
        Shape::Enum(values) => match value.as_str() {
            Some(text) if values.contains(&text) => Ok(()),
            Some(text) => Err(format!(
                "{place} has no value '{text}'; the closest: '{}' (all: {})",
                closest(text, values.iter().copied()).unwrap_or(values[0]),
                values.join(", ")
            )),
            None => Err(format!("{place} must be {}, not {}", expected(ty), found(value))),
        },
        Shape::Alternate(branches) => {
            if branches
                .iter()
                .any(|branch| check_value(branch, value, place).is_ok())
            {
                return Ok(());
            }
            let all: Vec<String> = branches.iter().map(|branch| expected(branch)).collect();
            Err(format!(
                "{place} must be {}, not {}",
                all.join(" or "),
                found(value)
            ))
        }
    }
}

/// What a value of `ty` is, in words.
fn expected(ty: &str) -> String {
    if let Some(item) = ty.strip_prefix('[').and_then(|ty| ty.strip_suffix(']')) {
        return format!(
            "a list of {}",
            expected(item).trim_start_matches("a ").trim_start_matches("an ")
        );
    }
    match ty {
        "str" => "a string".to_owned(),
        "int" | "int8" | "int16" | "int32" | "int64" => "an integer".to_owned(),
        "uint8" | "uint16" | "uint32" | "uint64" | "size" => "an integer of 0 or more".to_owned(),
        "number" => "a number".to_owned(),
        "bool" => "true or false".to_owned(),
        "any" => "any value".to_owned(),
        named => match argument_type(named).map(|spec| spec.shape) {
            Some(Shape::Enum(values)) => format!("one of {}", values.join(", ")),
            Some(Shape::Struct(_)) => format!("an object ({named})"),
            _ => named.to_owned(),
        },
    }
}

/// What a JSON value is, in words.
fn found(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(value) => value.to_string(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {value}", value = Value::String(text.clone())),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problem(name: &str, arguments: Value) -> String {
        check_request(name, Some(&arguments)).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_request_passes() {
        assert!(check_request("guest-ping", None).is_ok());
        let exec = json!({"path": "ls", "arg": ["-l"], "capture-output": "merged"});
        assert!(check_request("guest-exec", Some(&exec)).is_ok());
        assert!(check_request("guest-exec", Some(&json!({"path": "ls", "capture-output": true}))).is_ok());
        let vcpus = json!({"vcpus": [{"logical-id": 1, "online": false}]});
        assert!(check_request("guest-set-vcpus", Some(&vcpus)).is_ok());
    }

    #[test]
    fn an_unknown_command_names_the_closest() {
        let error = known_command("guest-get-osinf").unwrap_err();
        assert!(
            error.to_string().contains("the closest: 'guest-get-osinfo'"),
            "{error}"
        );
        assert!(known_command("get-osinfo")
            .unwrap_err()
            .to_string()
            .contains("'guest-get-osinfo'"));
    }

    #[test]
    fn unknown_missing_and_mistyped_arguments_are_named() {
        let unknown = problem("guest-exec", json!({"path": "ls", "args": ["-l"]}));
        assert!(
            unknown.contains("no member 'args' in the arguments of guest-exec; the closest: 'arg'"),
            "{unknown}"
        );
        let missing = problem("guest-exec", json!({"arg": ["-l"]}));
        assert!(
            missing.contains("'path' (a string) is missing from the arguments of guest-exec"),
            "{missing}"
        );
        let mistyped = problem("guest-file-read", json!({"handle": "3"}));
        assert!(
            mistyped.contains("'handle' of the arguments of guest-file-read must be an integer"),
            "{mistyped}"
        );
        let item = problem("guest-exec", json!({"path": "ls", "arg": ["-l", 2]}));
        assert!(item.contains("item 1 of 'arg'"), "{item}");
        let mode = problem("guest-exec", json!({"path": "ls", "capture-output": "merge"}));
        assert!(mode.contains("true or false or one of none, stdout"), "{mode}");
        let nested = problem(
            "guest-set-vcpus",
            json!({"vcpus": [{"logical-id": 1, "onlin": true}]}),
        );
        assert!(
            nested.contains("no member 'onlin' in item 0 of 'vcpus'") && nested.contains("closest: 'online'"),
            "{nested}"
        );
    }
}
