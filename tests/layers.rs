//! The layers the READMEs describe, kept true: no two files of a crate
//! import each other (directly or round a circle), nothing below
//! `commands/` uses it, and no command reaches into another.
//!
//! Read from the `use` lines themselves (test modules left out): a path
//! is followed to the file that defines its first item, through the
//! `pub use` re-exports of a folder's `mod.rs` (or the crate root).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A module by its path in the crate: `["agent", "errors"]`; the root is `[]`.
type Module = Vec<String>;

struct Crate {
    /// Each file's module, its `use` paths as seen from the crate root,
    /// and whether each is a `pub use`.
    uses: BTreeMap<Module, Vec<(bool, Module)>>,
    /// The modules that are a folder's `mod.rs` or the root.
    folders: BTreeSet<Module>,
}

impl Crate {
    fn read(dir: &Path) -> Crate {
        let mut files = Vec::new();
        collect(dir, dir, &mut files);
        let folders = files
            .iter()
            .filter(|(_, folder, _)| *folder)
            .map(|(m, _, _)| m.clone())
            .collect();
        let known: BTreeSet<Module> = files.iter().map(|(module, _, _)| module.clone()).collect();
        let uses = files
            .into_iter()
            .map(|(module, _, text)| {
                let uses = use_paths(&text)
                    .into_iter()
                    .filter_map(|(public, path)| absolute(&module, &path, &known).map(|p| (public, p)))
                    .collect();
                (module, uses)
            })
            .collect();
        Crate { uses, folders }
    }

    /// The file that defines what `path` names.
    fn file_of(&self, path: &[String], depth: usize) -> Module {
        for len in (0..=path.len()).rev() {
            let module = path[..len].to_vec();
            if !self.uses.contains_key(&module) {
                continue;
            }
            let Some(name) = path.get(len) else {
                return module;
            };
            if depth < 8 && self.folders.contains(&module) {
                let reexport = self.uses[&module].iter().find(|(public, target)| {
                    *public && target.last() == Some(name) && target[..] != path[..]
                });
                if let Some((_, target)) = reexport {
                    return self.file_of(target, depth + 1);
                }
            }
            return module;
        }
        Vec::new()
    }

    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        self.uses
            .iter()
            .map(|(module, uses)| {
                let targets = uses
                    .iter()
                    .map(|(_, path)| self.file_of(path, 0))
                    .filter(|target| target != module)
                    .collect();
                (module.clone(), targets)
            })
            .collect()
    }
}

/// Every `.rs` file below `dir`: its module, whether it is a folder's
/// `mod.rs` (or `lib.rs`, `main.rs`), and its text before `#[cfg(test)]`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(Module, bool, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        if path.extension().map_or(true, |e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap().with_extension("");
        let mut module: Module = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        let folder = matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main"));
        if folder {
            module.pop();
        }
        let text = fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
        files.push((module, folder, code));
    }
}

/// The paths of the `use` items in `text`, braces expanded.
fn use_paths(text: &str) -> Vec<(bool, String)> {
    let mut paths = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let (public, mut item) = if let Some(rest) = line.strip_prefix("use ") {
            (false, rest.to_owned())
        } else if let Some((_, rest)) = line.strip_prefix("pub").and_then(|l| l.split_once("use ")) {
            (true, rest.to_owned())
        } else {
            continue;
        };
        while !item.contains(';') {
            match lines.next() {
                Some(more) => item.push_str(more),
                None => break,
            }
        }
        // `A as B` is A: kept apart from names that hold "as".
        let item = item.split(';').next().unwrap_or_default().replace(" as ", "@");
        let tree: String = item.split_whitespace().collect();
        expand(&tree, &mut |path| paths.push((public, path)));
    }
    paths
}

fn expand(tree: &str, found: &mut impl FnMut(String)) {
    let Some(open) = tree.find('{') else {
        found(tree.split('@').next().unwrap_or(tree).to_owned());
        return;
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&format!("{prefix}{}", &inner[start..i]), found);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&format!("{prefix}{}", &inner[start..]), found);
    }
}

/// `path`, used in `module`, from the crate root; `None` for another crate.
fn absolute(module: &Module, path: &str, known: &BTreeSet<Module>) -> Option<Module> {
    let mut parts = path.split("::").filter(|p| !p.is_empty()).map(str::to_owned);
    let first = parts.next()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.clone(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => {
            let child = [module.clone(), vec![first.clone()]].concat();
            if !known.contains(&child) {
                return None;
            }
            child
        }
    };
    for part in parts {
        match part.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => base.push(part),
        }
    }
    Some(base)
}

fn name(module: &Module) -> String {
    match module.is_empty() {
        true => "the crate root".to_owned(),
        false => module.join("/"),
    }
}

/// The circles among the files: a file that reaches itself.
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut found = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(Module, Vec<Module>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let circle: Vec<String> = trail.iter().chain([start]).map(name).collect();
                    found.push(circle.join(" -> "));
                } else if seen.insert(next.clone()) {
                    stack.push((next.clone(), [trail.clone(), vec![next.clone()]].concat()));
                }
            }
        }
    }
    found
}

#[test]
fn no_file_imports_another_that_imports_it_back() {
    for dir in ["src", "protocol/src"] {
        let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
        let circles = circles(&krate.edges());
        assert!(
            circles.is_empty(),
            "{dir}: import circles:\n{}",
            circles.join("\n")
        );
    }
}

#[test]
fn commands_are_the_top_layer_and_do_not_reach_into_each_other() {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let command = |module: &Module| module.first().map(String::as_str) == Some("commands");
    let mut wrong = Vec::new();
    for (from, targets) in krate.edges() {
        for to in targets.iter().filter(|to| command(to)) {
            let below = !command(&from) && !matches!(from.first().map(String::as_str), None | Some("cli"));
            // commands/mod.rs holds what every command shares.
            let sibling = command(&from) && to.len() > 1 && from.get(1) != to.get(1);
            if below || sibling {
                wrong.push(format!("{} uses {}", name(&from), name(to)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
