//! The layering of `src/`, read from the source text: dependencies point one
//! way, so a module can be understood (and changed) from the ones below it.
//!
//! Every path a module of the library names is an edge to the module that
//! defines the name: the paths of its `use` statements, and the paths in its
//! code that start with `crate::`, `super::`, `self::` or one of its child
//! modules. A name a module re-exports (`pub use`, or the private `use` a
//! child reaches through `super::`) is followed to where it is defined.
//! Comments, string literals and `#[cfg(test)]` items are left out: a
//! module's tests may use anything.
//!
//! Checked:
//! - the modules of `src/domain` import each other without a loop: entities,
//!   errors and limits at the bottom, then the ports, then the use cases;
//! - the top-level modules of `src/` import each other without a loop;
//! - no module of `src/` at all, parents and children included, is part of
//!   a loop: a parent declaring a child (`mod x;`) or re-exporting its items
//!   (`pub use x::Y`) is an edge parent -> child, and a child naming an item
//!   its parent defines is an edge child -> parent, so items shared by a
//!   parent and its children live in a sibling module both import;
//! - `domain` names no transport, adapter or wiring (`grpc`, `http`,
//!   `storage`, `startup`, `config`, `pb`, ...);
//! - `storage` and `media` name of `domain` only what the ports speak, never
//!   a use case ([`SERVICES`]).
//!
//! A loop is printed module by module with the line that makes each step.
//! Methods a child module adds to its parent's type (`impl Uploads` in
//! `upload/render.rs`) are called without an import: such a child sits
//! above its parent, which does not import it.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `["crate", "domain", "upload"]`.
type ModPath = Vec<String>;

/// The modules of `domain` that are use cases: the adapters and the media
/// functions below the domain must not name them.
const SERVICES: &[&str] = &[
    "images",
    "moderation",
    "upload",
    "repair",
    "erasure",
    "admission",
    "budget",
    "watch",
];

/// What `domain` must not name: transports, adapters, wiring, generated
/// code and test support.
const OUTSIDE_DOMAIN: &[&str] = &[
    "grpc",
    "http",
    "storage",
    "startup",
    "config",
    "pb",
    "listener",
    "tls",
    "migrate",
    "fixtures",
    "backfill",
    "checkpoint",
];

#[test]
fn the_domain_modules_import_each_other_without_a_loop() {
    let crate_ = Crate::read(&src());
    let domain =
        crate_.edges(|module| (module.len() > 1 && module[1] == "domain").then(|| module.clone()));
    let loops = find_loops(&domain);
    assert!(
        loops.is_empty(),
        "the modules of src/domain import each other in a loop:\n{}",
        loops.join("\n")
    );
    // The graph is the one meant: the ports sit below the use cases.
    let ports = path("crate::domain::ports");
    let images = path("crate::domain::images");
    assert!(
        domain
            .get(&images)
            .is_some_and(|to| to.contains_key(&ports)),
        "domain::images no longer seen importing domain::ports: the reading of the source is broken"
    );
}

#[test]
fn the_top_level_modules_import_each_other_without_a_loop() {
    let crate_ = Crate::read(&src());
    let top = crate_.edges(|module| Some(module[..module.len().min(2)].to_vec()));
    let loops = find_loops(&top);
    assert!(
        loops.is_empty(),
        "the modules of src/ import each other in a loop:\n{}",
        loops.join("\n")
    );
}

#[test]
fn no_module_of_src_is_part_of_a_loop() {
    let crate_ = Crate::read(&src());
    let mut graph = crate_.edges(|module| Some(module.clone()));
    for (parent, child, at) in crate_.declarations() {
        graph.entry(parent).or_default().entry(child).or_insert(at);
    }
    let loops = find_loops(&graph);
    assert!(
        loops.is_empty(),
        "modules of src/ import each other in a loop:\n{}",
        loops.join("\n")
    );
    // The graph is the one meant: parents are seen declaring their children.
    let aws = path("crate::storage::aws");
    assert!(
        graph
            .get(&aws)
            .is_some_and(|to| to.contains_key(&path("crate::storage::aws::s3"))),
        "storage::aws no longer seen declaring storage::aws::s3: the reading of the source is broken"
    );
}

#[test]
fn the_domain_names_no_transport_adapter_or_wiring() {
    let crate_ = Crate::read(&src());
    let mut wrong = Vec::new();
    for (from, reference, target) in crate_.references() {
        if from.get(1).map(String::as_str) == Some("domain")
            && target
                .get(1)
                .is_some_and(|top| OUTSIDE_DOMAIN.contains(&top.as_str()))
        {
            wrong.push(format!("{} names {}", reference.at, reference.text));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn storage_and_media_name_only_what_the_ports_speak() {
    let crate_ = Crate::read(&src());
    let mut wrong = Vec::new();
    for (from, reference, target) in crate_.references() {
        let lower = matches!(from.get(1).map(String::as_str), Some("storage" | "media"));
        let named = crate_.module_named(&reference.absolute);
        if lower && (is_service(&target) || is_service(&named)) {
            wrong.push(format!("{} names {}", reference.at, reference.text));
        }
    }
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_loop_is_found_and_printed_with_its_lines() {
    let mut graph: Graph = BTreeMap::new();
    let mut edge = |from: &str, to: &str| {
        graph
            .entry(path(from))
            .or_default()
            .insert(path(to), format!("{from}.rs:1"));
    };
    edge("crate::a", "crate::b");
    edge("crate::b", "crate::c");
    edge("crate::c", "crate::a");
    edge("crate::c", "crate::d");
    let loops = find_loops(&graph);
    assert_eq!(
        loops,
        [
            "crate::a -> crate::b (crate::a.rs:1) -> crate::c (crate::b.rs:1) -> crate::a (crate::c.rs:1)"
        ]
    );
    graph
        .get_mut(&path("crate::c"))
        .unwrap()
        .remove(&path("crate::a"));
    assert!(find_loops(&graph).is_empty());
}

#[test]
fn a_reexported_name_leads_to_the_module_that_defines_it() {
    let crate_ = Crate::from_files(vec![
        (
            path("crate::domain"),
            "x/mod.rs".into(),
            "pub mod error;\npub mod image;\npub use error::DomainError;\n".into(),
        ),
        (
            path("crate::domain::error"),
            "x/error.rs".into(),
            "pub struct DomainError;\n".into(),
        ),
        (
            path("crate::domain::image"),
            "x/image.rs".into(),
            "// use crate::storage::X;\nuse super::{DomainError, error::{self as e}};\n\
             fn f() -> crate::domain::image::Id { let s = \"crate::grpc::Y\"; }\n\
             #[cfg(test)]\nmod tests { use crate::fixtures::Z; }\n"
                .into(),
        ),
    ]);
    let targets: Vec<String> = crate_
        .references()
        .into_iter()
        .filter(|(from, _, _)| *from == path("crate::domain::image"))
        .map(|(_, reference, target)| format!("{} -> {}", reference.text, target.join("::")))
        .collect();
    assert_eq!(
        targets,
        [
            "super::DomainError -> crate::domain::error",
            "super::error -> crate::domain::error",
            "crate::domain::image::Id -> crate::domain::image",
        ]
    );
}

/// Modules and the modules they import, each edge with the line that
/// makes it.
type Graph = BTreeMap<ModPath, BTreeMap<ModPath, String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn path(text: &str) -> ModPath {
    text.split("::").map(str::to_owned).collect()
}

fn is_service(module: &ModPath) -> bool {
    module.len() > 2 && module[1] == "domain" && SERVICES.contains(&module[2].as_str())
}

/// Every loop of the graph, one per group of modules that reach each other,
/// as `a -> b (where) -> ... -> a (where)`.
fn find_loops(graph: &Graph) -> Vec<String> {
    let mut loops = Vec::new();
    let mut done: BTreeSet<ModPath> = BTreeSet::new();
    for start in graph.keys() {
        if done.contains(start) {
            continue;
        }
        let mut stack: Vec<(ModPath, Vec<ModPath>)> = Vec::new();
        let mut on_path: Vec<ModPath> = Vec::new();
        let next = |node: &ModPath| -> Vec<ModPath> {
            graph
                .get(node)
                .map(|to| to.keys().cloned().collect())
                .unwrap_or_default()
        };
        stack.push((start.clone(), next(start)));
        on_path.push(start.clone());
        while let Some((node, pending)) = stack.last_mut() {
            let Some(to) = pending.pop() else {
                done.insert(node.clone());
                stack.pop();
                on_path.pop();
                continue;
            };
            if let Some(at) = on_path.iter().position(|n| *n == to) {
                let mut cycle = on_path[at..].to_vec();
                cycle.push(to.clone());
                let mut text = cycle[0].join("::");
                for step in cycle.windows(2) {
                    text += &format!(" -> {} ({})", step[1].join("::"), graph[&step[0]][&step[1]]);
                }
                if !loops.contains(&text) {
                    loops.push(text);
                }
                // One loop per group is enough to start from.
                cycle.into_iter().for_each(|n| {
                    done.insert(n);
                });
                continue;
            }
            if done.contains(&to) {
                continue;
            }
            let after = next(&to);
            on_path.push(to.clone());
            stack.push((to, after));
        }
    }
    loops
}

/// A path named by a module, as written and made absolute.
#[derive(Clone, Debug)]
struct Reference {
    text: String,
    absolute: ModPath,
    /// `file:line`.
    at: String,
}

/// A `use` item: the name it brings in and the path it names.
#[derive(Clone, Debug)]
struct Import {
    name: String,
    path: Vec<String>,
    line: usize,
}

struct Module {
    file: String,
    /// The child modules declared in the file (`mod x;`), with their line.
    children: Vec<(String, usize)>,
    imports: Vec<Import>,
    /// Paths in the code (outside `use`), with their line.
    paths: Vec<(Vec<String>, usize)>,
}

struct Crate {
    modules: BTreeMap<ModPath, Module>,
}

impl Crate {
    /// The library's modules: every file under `src/` but the binaries and
    /// the files of test modules.
    fn read(src: &Path) -> Self {
        let mut files = Vec::new();
        collect_files(src, &mut files);
        let mut inputs = Vec::new();
        for file in files {
            let relative = file
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if relative == "main.rs" || relative.starts_with("bin/") {
                continue;
            }
            let mut module = vec!["crate".to_owned()];
            let stem = relative.trim_end_matches(".rs");
            if stem != "lib" {
                module.extend(stem.split('/').map(str::to_owned));
                if module.last().is_some_and(|last| last == "mod") {
                    module.pop();
                }
            }
            let text = std::fs::read_to_string(&file).unwrap();
            inputs.push((module, format!("src/{relative}"), text));
        }
        Self::from_files(inputs)
    }

    fn from_files(files: Vec<(ModPath, String, String)>) -> Self {
        let mut modules = BTreeMap::new();
        let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
        for (module, file, text) in files {
            let (code, test_children) = without_tests(&strip(&text));
            for child in test_children {
                let mut path = module.clone();
                path.push(child);
                test_only.insert(path);
            }
            let (imports, paths) = parse(&code);
            modules.insert(
                module,
                Module {
                    file,
                    children: declared_children(&code),
                    imports,
                    paths,
                },
            );
        }
        modules.retain(|path, _| !test_only.iter().any(|t| path.starts_with(t)));
        Self { modules }
    }

    /// Every reference of every module, made absolute, with the module
    /// that defines what it names. Paths that leave the crate are left out.
    fn references(&self) -> Vec<(ModPath, Reference, ModPath)> {
        let mut out = Vec::new();
        for (module, m) in &self.modules {
            let named = m
                .imports
                .iter()
                .map(|import| (&import.path, import.line))
                .chain(m.paths.iter().map(|(path, line)| (path, *line)));
            for (path, line) in named {
                let Some(absolute) = self.absolute(module, path, 0) else {
                    continue;
                };
                let Some(target) = self.definer(&absolute, 0) else {
                    continue;
                };
                let reference = Reference {
                    text: path.join("::"),
                    absolute,
                    at: format!("{}:{line}", m.file),
                };
                out.push((module.clone(), reference, target));
            }
        }
        out
    }

    /// Every parent -> child declaration among the modules, with the line
    /// that declares the child.
    fn declarations(&self) -> Vec<(ModPath, ModPath, String)> {
        let mut out = Vec::new();
        for (parent, m) in &self.modules {
            for (name, line) in &m.children {
                let mut child = parent.clone();
                child.push(name.clone());
                if self.modules.contains_key(&child) {
                    out.push((
                        parent.clone(),
                        child,
                        format!("{}:{line}: mod {name}", m.file),
                    ));
                }
            }
        }
        out
    }

    /// The graph of the modules `node` maps to (`None`: left out), each
    /// edge with the first line that makes it.
    fn edges(&self, node: impl Fn(&ModPath) -> Option<ModPath>) -> Graph {
        let mut graph = Graph::new();
        for (from, reference, to) in self.references() {
            let (Some(from), Some(to)) = (node(&from), node(&to)) else {
                continue;
            };
            if from != to {
                graph
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_insert(format!("{}: {}", reference.at, reference.text));
            }
        }
        graph
    }

    /// `path`, named in `module`, from the crate root; `None` when it
    /// names another crate or an item of the module itself.
    fn absolute(&self, module: &ModPath, path: &[String], depth: usize) -> Option<ModPath> {
        let first = path.first()?.as_str();
        let mut base = match first {
            "crate" => return Some(path.to_vec()),
            "self" => module.clone(),
            "super" => {
                let mut base = module.clone();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            _ => {
                let mut child = module.clone();
                child.push(first.to_owned());
                if self.modules.contains_key(&child) {
                    module.clone()
                } else {
                    // A name this module imports (a path may start with one).
                    let import = self.modules.get(module)?.imports.iter().find(|i| {
                        i.name == first && i.path.len() > 1 && i.path.as_slice() != path
                    })?;
                    if depth > 16 {
                        return None;
                    }
                    let mut base = self.absolute(module, &import.path, depth + 1)?;
                    base.extend(path[1..].iter().cloned());
                    return Some(base);
                }
            }
        };
        let rest = if first == "self" { &path[1..] } else { path };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The longest prefix of `path` that is a module of the crate.
    fn module_named(&self, path: &ModPath) -> ModPath {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains_key(prefix))
            .unwrap_or_else(|| vec!["crate".to_owned()])
    }

    /// The module that defines what `path` names, following imports.
    fn definer(&self, path: &ModPath, depth: usize) -> Option<ModPath> {
        let module = self.module_named(path);
        let Some(name) = path.get(module.len()) else {
            return Some(module);
        };
        let reexport = self.modules.get(&module).and_then(|m| {
            m.imports
                .iter()
                .find(|import| import.name == *name && import.name != "*")
        });
        match reexport {
            Some(import) if depth < 16 => {
                let Some(mut target) = self.absolute(&module, &import.path, depth + 1) else {
                    // Imported from another crate.
                    return None;
                };
                target.extend(path[module.len() + 1..].iter().cloned());
                self.definer(&target, depth + 1)
            }
            _ => Some(module),
        }
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, files);
        } else if entry.extension().is_some_and(|e| e == "rs") {
            files.push(entry);
        }
    }
}

/// The code with comments and the contents of string and character
/// literals turned into spaces; lines stay where they were.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let before_is_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if !before_is_ident
            && (c == 'r' || (c == 'b' && next == Some('r')))
            && matches!(chars.get(i + 1 + usize::from(c == 'b')), Some('"' | '#'))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1 + usize::from(c == 'b');
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push('"');
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(&other) => out.push(blank(other)),
                }
                j += 1;
            }
            out.push('"');
            i = j;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&inner) = chars.get(i) {
                    out.push(blank(inner));
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal (a lifetime has no closing quote).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push_str("' '");
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The code without its `#[cfg(test)]` items (blanked, lines kept), and
/// the names of the test modules kept in files of their own.
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut code: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut test_children = Vec::new();
    let mut i = 0;
    while i + marker.len() <= code.len() {
        if code[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        // The item ends at its first `;` or at the brace closing its body.
        let mut end = i + marker.len();
        let mut depth = 0;
        while end < code.len() {
            match code[end] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            end += 1;
        }
        let item: String = code[i + marker.len()..end.min(code.len())].iter().collect();
        let words: Vec<&str> = item.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "mod")
            && !item.contains('{')
            && let Some(name) = words.get(at + 1)
        {
            test_children.push(name.trim_end_matches(';').to_owned());
        }
        let last = (end + 1).min(code.len());
        for c in &mut code[i..last] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    (code.into_iter().collect(), test_children)
}

/// The `use` items of the code, and the other paths that start with
/// `crate`, `super`, `self` or a name followed by `::` (each with its line).
fn parse(code: &str) -> (Vec<Import>, Vec<(Vec<String>, usize)>) {
    let mut imports = Vec::new();
    let mut rest: Vec<char> = code.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let newlines: Vec<usize> = (0..rest.len()).filter(|at| rest[*at] == '\n').collect();
    let line_at = |at: usize| newlines.partition_point(|n| *n < at) + 1;
    // `use` statements, blanked once read.
    let mut i = 0;
    while i + 3 < rest.len() {
        let is_use = rest[i..i + 3] == ['u', 's', 'e']
            && (i == 0 || !ident(rest[i - 1]))
            && rest[i + 3].is_whitespace();
        if !is_use {
            i += 1;
            continue;
        }
        let end = rest[i..]
            .iter()
            .position(|c| *c == ';')
            .map_or(rest.len(), |n| i + n);
        let tree: String = rest[i + 3..end].iter().collect();
        let line = line_at(i);
        expand(&[], &tree, line, &mut imports);
        for c in &mut rest[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    // Other paths: identifiers joined by `::`, not after one (the middle of
    // a path) nor after `(in ` (a visibility, not a dependency).
    let mut paths = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let starts = ident(rest[i])
            && !rest[i].is_ascii_digit()
            && (i == 0 || !ident(rest[i - 1]))
            && !(i >= 2 && rest[i - 2..i] == [':', ':']);
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        let mut segments = Vec::new();
        loop {
            let begin = i;
            while i < rest.len() && ident(rest[i]) {
                i += 1;
            }
            segments.push(rest[begin..i].iter().collect::<String>());
            if rest.get(i) == Some(&':')
                && rest.get(i + 1) == Some(&':')
                && rest.get(i + 2).is_some_and(|c| ident(*c))
            {
                i += 2;
            } else {
                break;
            }
        }
        let before: String = rest[start.saturating_sub(4)..start].iter().collect();
        if segments.len() > 1 && !before.ends_with("(in ") {
            paths.push((segments, line_at(start)));
        }
    }
    (imports, paths)
}

/// The modules the code declares in files of their own (`mod x;`), with
/// their line.
fn declared_children(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (at, line) in code.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(mod_at) = words.iter().position(|w| *w == "mod")
            && let Some(name) = words.get(mod_at + 1).and_then(|w| w.strip_suffix(';'))
        {
            out.push((name.to_owned(), at + 1));
        }
    }
    out
}

/// The items of one `use` tree under `prefix`.
fn expand(prefix: &[String], tree: &str, line: usize, out: &mut Vec<Import>) {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let close = tree.rfind('}').unwrap_or(tree.len());
        let mut base = prefix.to_vec();
        base.extend(segments(tree[..open].trim_end_matches("::")));
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut from = 0;
        for (at, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[from..at], line, out);
                    from = at + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[from..], line, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path.trim(), Some(alias.trim())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(segments(path).into_iter().filter(|s| s != "self"));
    let name = alias
        .map(str::to_owned)
        .or_else(|| full.last().cloned())
        .unwrap_or_default();
    out.push(Import {
        name,
        path: full,
        line,
    });
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "r#")
        .collect()
}
