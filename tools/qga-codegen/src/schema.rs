//! Reading QEMU's QAPI schema: its definitions, each with what its doc
//! comment says.
//!
//! The schema is a sequence of Python-like literals (single quotes,
//! `true`/`false`) between `#` comments; a comment block from a line `##`
//! to the next documents the definition that follows it.

use crate::literal::{self, Node};

/// One `command`, `struct`, `enum`, `alternate` or `union`.
pub struct Definition {
    /// Which of those it is.
    pub meta: String,
    /// Its name in the schema: `guest-exec`, `GuestExecStatus`.
    pub name: String,
    /// The whole definition.
    pub expr: Node,
    pub doc: Doc,
}

/// What a definition's doc comment says, in the parts the generator uses.
#[derive(Default)]
pub struct Doc {
    /// The first paragraph of free text, if any.
    pub summary: String,
    /// `@member: text` sections, in order.
    pub members: Vec<(String, String)>,
    /// The `Since:` section, as written.
    pub since: Option<String>,
    /// The first paragraph of the `Returns:` section.
    pub returns: Option<String>,
}

impl Doc {
    /// The text of `@member`, if the doc has one.
    pub fn member(&self, member: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(name, _)| name == member)
            .map(|(_, text)| text.as_str())
    }
}

/// Every definition of `text`, in order (pragmas and includes left out).
pub fn parse(text: &str) -> Result<Vec<Definition>, String> {
    let mut definitions = Vec::new();
    let mut doc_lines: Option<Vec<String>> = None;
    let mut pending_doc = Vec::new();
    let mut expr = String::new();
    let mut depth = 0i32;
    for line in text.lines() {
        if let Some(lines) = doc_lines.as_mut() {
            if line.trim_end() == "##" {
                pending_doc = doc_lines.take().unwrap_or_default();
            } else {
                let content = line.strip_prefix('#').unwrap_or(line);
                lines.push(content.strip_prefix(' ').unwrap_or(content).to_owned());
            }
            continue;
        }
        if depth == 0 && line.trim_end() == "##" {
            doc_lines = Some(Vec::new());
            continue;
        }
        if line.trim_start().starts_with('#') || (depth == 0 && line.trim().is_empty()) {
            continue;
        }
        expr.push_str(line);
        expr.push('\n');
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if depth == 0 {
            let text = std::mem::take(&mut expr);
            let expr = literal::parse(&text).map_err(|e| format!("cannot read {text:?}: {e}"))?;
            let doc = parse_doc(&std::mem::take(&mut pending_doc));
            if let Some(definition) = definition(expr, doc) {
                definitions.push(definition);
            }
        }
    }
    Ok(definitions)
}

fn definition(expr: Node, doc: Doc) -> Option<Definition> {
    let meta = ["command", "struct", "enum", "alternate", "union"]
        .into_iter()
        .find(|meta| expr.get(meta).is_some())?;
    let name = expr.get(meta)?.as_str()?.to_owned();
    Some(Definition {
        meta: meta.to_owned(),
        name,
        expr,
        doc,
    })
}

/// The sections of a doc comment, from its lines (the `# ` taken off).
fn parse_doc(lines: &[String]) -> Doc {
    let mut doc = Doc::default();
    // The section an indented paragraph continues: a member's, or Returns.
    let mut continues: Option<usize> = None;
    for paragraph in lines.split(|line| line.trim().is_empty()) {
        let Some(first) = paragraph.first() else { continue };
        if first.starts_with(char::is_whitespace) {
            if let Some(index) = continues {
                let text = &mut doc.members[index].1;
                text.push(' ');
                text.push_str(&join(paragraph));
            }
            continue;
        }
        continues = None;
        let rest = || join(&paragraph[1..]);
        if let Some(symbol) = first.strip_prefix('@') {
            let Some((name, text)) = symbol.split_once(':') else {
                continue;
            };
            if text.trim().is_empty() && paragraph.len() == 1 && doc.members.is_empty() {
                continue; // the `@name:` line that opens the doc
            }
            let text = [text.trim().to_owned(), rest()].join(" ");
            doc.members.push((name.to_owned(), text.trim().to_owned()));
            continues = Some(doc.members.len() - 1);
        } else if let Some(since) = first.strip_prefix("Since:") {
            doc.since = Some(format!("{} {}", since.trim(), rest()).trim().to_owned());
        } else if let Some(returns) = first.strip_prefix("Returns:") {
            doc.returns = Some(format!("{} {}", returns.trim(), rest()).trim().to_owned());
        } else if doc.summary.is_empty() && !is_directive(first) {
            doc.summary = join(paragraph);
        }
    }
    doc
}

/// Paragraphs that are notes, error lists or to-dos, never a summary.
fn is_directive(line: &str) -> bool {
    ["..", "Errors:", "Note:", "Notes:", "TODO:", "IMPORTANT:"]
        .iter()
        .any(|prefix| line.starts_with(prefix))
}

/// Lines as one line of prose; list items (`* x`, `- x`) joined by `;`.
fn join(lines: &[String]) -> String {
    let mut text = String::new();
    for line in lines {
        let line = line.trim();
        let item = line.strip_prefix("* ").or_else(|| line.strip_prefix("- "));
        if !text.is_empty() {
            text.push_str(if item.is_some() { "; " } else { " " });
        }
        text.push_str(item.unwrap_or(line));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_takes_the_doc_block_before_it() {
        let text = "##\n# @guest-x:\n#\n# Does x.  Then y.\n#\n# @a: the a\n#     continued\n#\n\
                    # Returns: a number\n#\n# Since: 9.1\n##\n{ 'command': 'guest-x',\n  \
                    'data': { 'a': 'int' }, 'returns': 'int' }\n";
        let definitions = parse(text).unwrap();
        let doc = &definitions[0].doc;
        assert_eq!(definitions[0].name, "guest-x");
        assert_eq!(doc.summary, "Does x.  Then y.");
        assert_eq!(doc.member("a"), Some("the a continued"));
        assert_eq!(doc.returns.as_deref(), Some("a number"));
        assert_eq!(doc.since.as_deref(), Some("9.1"));
    }
}
