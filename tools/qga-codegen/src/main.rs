//! `qga-codegen`: writes `protocol/src/qga/schema/generated.rs`, the typed
//! QGA commands, from the pinned `protocol/schema/qga/qapi-schema.json`.
//! Run through `scripts/generate-qga.sh`; `--check` only compares.

mod emit;
mod literal;
mod names;
mod schema;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The pinned schema, from the repository's root.
const SCHEMA: &str = "protocol/schema/qga/qapi-schema.json";
/// What the generator writes, from the repository's root.
const OUTPUT: &str = "protocol/src/qga/schema/generated.rs";

fn main() -> ExitCode {
    let check = std::env::args().any(|arg| arg == "--check");
    let root = root();
    let result = generate_file(&root).and_then(|code| {
        let path = root.join(OUTPUT);
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            return match committed == code {
                true => Ok(()),
                false => Err(format!(
                    "{OUTPUT} is not what {SCHEMA} makes: run scripts/generate-qga.sh"
                )),
            };
        }
        std::fs::write(&path, code).map_err(|e| format!("cannot write {}: {e}", path.display()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("qga-codegen: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The repository's root: two folders above this crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The generated file's text, formatted as `cargo fmt` leaves it.
fn generate_file(root: &Path) -> Result<String, String> {
    let path = root.join(SCHEMA);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let definitions = schema::parse(&text)?;
    let code = emit::Emitter::new(&definitions).emit()?;
    rustfmt(&code, root)
}

/// `code` through rustfmt, with the repository's `rustfmt.toml`.
fn rustfmt(code: &str, root: &Path) -> Result<String, String> {
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout", "--config-path"])
        .arg(root.join("rustfmt.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let input = code.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(|e| format!("rustfmt: {e}"))?;
    writer
        .join()
        .expect("the writer does not panic")
        .map_err(|e| format!("rustfmt: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rustfmt refused the code: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("rustfmt: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_code_is_what_the_pinned_schema_makes() {
        let root = root();
        let committed = std::fs::read_to_string(root.join(OUTPUT)).unwrap();
        let generated = generate_file(&root).unwrap();
        assert!(
            committed == generated,
            "{OUTPUT} is out of date: run scripts/generate-qga.sh"
        );
    }

    #[test]
    fn the_pinned_schema_has_every_command_of_qemu() {
        let text = std::fs::read_to_string(root().join(SCHEMA)).unwrap();
        let definitions = schema::parse(&text).unwrap();
        let commands = definitions.iter().filter(|d| d.meta == "command").count();
        assert_eq!(commands, 44);
        let load = definitions.iter().find(|d| d.name == "guest-get-load").unwrap();
        assert_eq!(load.doc.since.as_deref(), Some("10.0"));
    }
}
