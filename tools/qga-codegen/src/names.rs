//! Rust names for the schema's names, and Rust types for its type
//! references.

use std::collections::{BTreeMap, BTreeSet};

use crate::literal::Node;
use crate::schema::Definition;

/// Names that Rust reserves and the schema uses as member names.
const KEYWORDS: &[&str] = &[
    "type", "use", "match", "mod", "ref", "self", "struct", "enum", "fn", "impl",
];

/// The schema's built-in types and the Rust type each becomes.
const BUILTINS: &[(&str, &str)] = &[
    ("str", "String"),
    ("int", "i64"),
    ("int8", "i8"),
    ("int16", "i16"),
    ("int32", "i32"),
    ("int64", "i64"),
    ("uint8", "u8"),
    ("uint16", "u16"),
    ("uint32", "u32"),
    ("uint64", "u64"),
    ("size", "u64"),
    ("number", "f64"),
    ("bool", "bool"),
    ("any", "Value"),
];

/// The Rust name of every type of the schema.
pub struct Names {
    types: BTreeMap<String, String>,
}

impl Names {
    /// A type keeps its schema name, unless a command's type would have
    /// it: a type named like a command is that command's reply, and gets
    /// the crate's `Reply` suffix (`GuestExecStatus` becomes
    /// `GuestExecStatusReply`).
    pub fn new(definitions: &[Definition]) -> Names {
        let commands: BTreeSet<String> = definitions
            .iter()
            .filter(|d| d.meta == "command")
            .map(|d| camel(&d.name))
            .collect();
        let types = definitions
            .iter()
            .filter(|d| d.meta != "command")
            .map(|d| {
                let rust = match commands.contains(&d.name) {
                    true => format!("{}Reply", d.name),
                    false => d.name.clone(),
                };
                (d.name.clone(), rust)
            })
            .collect();
        Names { types }
    }

    /// The Rust type of a type reference: `'int'`, `['str']`, `'GuestUser'`.
    pub fn rust_type(&self, reference: &Node) -> Result<String, String> {
        match reference {
            Node::List(items) if items.len() == 1 => Ok(format!("Vec<{}>", self.rust_type(&items[0])?)),
            Node::Str(name) => BUILTINS
                .iter()
                .find(|(builtin, _)| builtin == name)
                .map(|(_, rust)| rust.to_string())
                .or_else(|| self.types.get(name).cloned())
                .ok_or_else(|| format!("unknown type {name}")),
            other => Err(format!("a type reference the generator cannot read: {other:?}")),
        }
    }

    /// The Rust name of a schema type.
    pub fn type_name(&self, name: &str) -> String {
        self.types.get(name).cloned().unwrap_or_else(|| name.to_owned())
    }
}

/// `guest-exec-status` as `GuestExecStatus`, `file-backed-virtual` as
/// `FileBackedVirtual`.
pub fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect()
}

/// A member name as a Rust field: `buf-b64` as `buf_b64`, `type` as
/// `r#type`.
pub fn field(name: &str) -> String {
    let snake = name.replace('-', "_");
    match KEYWORDS.contains(&snake.as_str()) {
        true => format!("r#{snake}"),
        false => snake,
    }
}

/// A reference as the schema's catalogue writes it: `int`, `[str]`.
pub fn spec_type(reference: &Node) -> String {
    match reference {
        Node::List(items) if items.len() == 1 => format!("[{}]", spec_type(&items[0])),
        Node::Str(name) => name.clone(),
        other => format!("{other:?}"),
    }
}
