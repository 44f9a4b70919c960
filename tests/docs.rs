//! The docs, checked against what they describe, so that they cannot drift:
//! the configuration page against the binary's `--help` (and each
//! command's), the architecture page's code map against the files under
//! `src/`, the paths the docs name, and every relative link and anchor of
//! the README, `BENCHMARKS.md` and `docs/`.
//! No network, no server: the binary is only asked for its help.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commands besides the service itself, each with flags of its own.
const COMMANDS: [&str; 4] = ["init", "repair", "migrate", "backfill"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Markdown files whose links are checked, relative to the root.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned(), "BENCHMARKS.md".to_owned()];
    let mut pages: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| {
            entry
                .expect("docs/ entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// One option of a `--help` text: its environment variable and default, if any.
#[derive(Debug, Default)]
struct HelpOption {
    env: Option<String>,
    default: Option<String>,
}

/// `image-service [ARGS] --help`, as the binary prints it.
fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_image-service"))
        .args(args)
        .arg("--help")
        .output()
        .expect("image-service runs");
    assert!(
        output.status.success(),
        "image-service {args:?} --help failed"
    );
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// The long flag an option line of a `--help` text introduces: `--name`,
/// `-n, --name` or `--name <VALUE>` alone on its line. Prose never has
/// that shape, so section headings and their order do not matter.
fn option_line(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    let rest = match trimmed.strip_prefix('-') {
        Some(rest) if rest.starts_with('-') => trimmed,
        Some(rest) => rest.get(1..)?.strip_prefix(", ")?,
        None => return None,
    };
    let name_end = rest[2..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .map_or(rest.len(), |i| i + 2);
    let (flag, tail) = rest.split_at(name_end);
    let tail_is_value =
        tail.is_empty() || (tail.starts_with(" <") && tail.trim_end_matches("...").ends_with('>'));
    (flag.len() > 2 && tail_is_value).then_some(flag)
}

/// `[key: VALUE]` in a help block: the value up to the closing bracket,
/// without a shown value (`[env: NAME=value]`).
fn bracketed<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    let start = block.find(&format!("[{key}: "))? + key.len() + 3;
    let end = start + block[start..].find(']')?;
    Some(&block[start..end])
}

/// Every long flag of a `--help` text, with what it says of each.
fn options(help: &str) -> BTreeMap<String, HelpOption> {
    let mut options = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| {
        if let Some((flag, block)) = current {
            let env =
                bracketed(&block, "env").map(|env| env.split('=').next().unwrap_or(env).to_owned());
            let default = bracketed(&block, "default").map(str::to_owned);
            options.insert(flag, HelpOption { env, default });
        }
    };
    for line in help.lines() {
        if let Some(flag) = option_line(line) {
            finish(current.take());
            current = Some((flag.to_owned(), String::new()));
        } else if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    finish(current);
    options
}

/// The flags of the service and of every command, merged: a flag the
/// commands share says the same everywhere.
fn all_options() -> BTreeMap<String, HelpOption> {
    let mut all = options(&help(&[]));
    assert!(
        all.len() > 50,
        "the service's --help lists its flags: {all:?}"
    );
    for command in COMMANDS {
        for (flag, option) in options(&help(&[command])) {
            all.entry(flag).or_insert(option);
        }
    }
    all
}

/// The words of `text` that start with `prefix`: each from a `prefix` not
/// preceded by a character that could continue it, to its last such character.
fn tokens<'a>(text: &'a str, prefix: &str, continues: impl Fn(char) -> bool) -> Vec<&'a str> {
    let mut found = Vec::new();
    for (start, _) in text.match_indices(prefix) {
        if text[..start].chars().next_back().is_some_and(&continues) {
            continue;
        }
        let end = text[start..]
            .find(|c: char| !continues(c))
            .map_or(text.len(), |i| start + i);
        found.push(&text[start..end]);
    }
    found
}

/// The table rows of `page` that document `flag`: those whose first cell
/// naming a flag is that flag.
fn rows_of<'a>(page: &'a str, flag: &str) -> Vec<Vec<&'a str>> {
    let cell = format!("`{flag}`");
    page.lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.iter().find(|c| c.starts_with("`--")) == Some(&cell.as_str()))
        .collect()
}

#[test]
fn every_flag_and_environment_variable_of_the_binary_is_on_the_configuration_page() {
    let page = read("docs/configuration.md");
    let mut problems = Vec::new();
    for (flag, option) in all_options() {
        if !page.contains(&format!("`{flag}`")) {
            problems.push(format!("{flag} is not documented"));
        }
        if let Some(env) = &option.env
            && !page.contains(&format!("`{env}`"))
        {
            problems.push(format!("{env} ({flag}) is not documented"));
        }
        if let Some(default) = &option.default {
            let rows = rows_of(&page, &flag);
            let shown = format!("`{default}`");
            if !rows.iter().any(|cells| cells.contains(&shown.as_str())) {
                problems.push(format!("{flag}: no table row gives its default {shown}"));
            }
        }
    }
    for command in COMMANDS {
        if !page.contains(&format!("`{command}`")) {
            problems.push(format!("the command {command} is not documented"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_flag_and_variable_the_configuration_page_names_exists() {
    let page = read("docs/configuration.md");
    let options = all_options();
    let envs: BTreeSet<&str> = options.values().filter_map(|o| o.env.as_deref()).collect();
    let flag_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let mut problems = BTreeSet::new();
    for token in tokens(&page, "--", flag_char) {
        if token.len() > 2
            && token.as_bytes()[2].is_ascii_alphabetic()
            && !options.contains_key(token)
        {
            problems.insert(format!("{token} is not a flag of the binary"));
        }
    }
    let env_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    for token in tokens(&page, "IMAGE_SERVICE_", env_char) {
        if !token.ends_with('_') && !envs.contains(token) {
            problems.insert(format!("{token} is not a variable of the binary"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

fn rust_files(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root()).expect("under the root");
            found.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_code_map_names_every_file_under_src() {
    let page = read("docs/architecture.md");
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    assert!(files.len() > 50, "src/ holds the service: {files:?}");
    let unnamed: Vec<_> = files
        .iter()
        .filter(|f| !page.contains(&format!("`{f}`")))
        .collect();
    assert!(
        unnamed.is_empty(),
        "docs/architecture.md's code map does not name (give each a line): {unnamed:?}"
    );
}

/// The folders of the repository whose paths the docs name in passing (a
/// file a section is about, a script to run): each such path must exist.
const NAMED_FOLDERS: [&str; 9] = [
    "src/",
    "tests/",
    "benches/",
    "scripts/",
    "deploy/",
    "examples/",
    "proto/",
    "fuzz/",
    "docs/",
];

#[test]
fn every_path_the_docs_name_exists() {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_./-*{".contains(c);
    let mut missing = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        for folder in NAMED_FOLDERS {
            for token in tokens(&text, folder, path_char) {
                // Patterns (`fuzz/corpus/*/`, `scrub/{jpeg,png}.rs`) name no one path.
                if token.contains(['*', '{']) {
                    continue;
                }
                let path = token.trim_end_matches('.');
                if !root().join(path).exists() {
                    missing.push(format!("{file}: {path}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The text of a Markdown file outside fenced code blocks and code spans,
/// where links and headings live, line by line.
fn prose(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fenced = false;
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            lines.push(String::new());
            continue;
        }
        if fenced {
            lines.push(String::new());
            continue;
        }
        // A code span may run over a line break, as Markdown allows.
        let mut kept = String::new();
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                kept.push(c);
            }
        }
        lines.push(kept);
    }
    lines
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped,
/// spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file defines: its headings (repeats numbered as
/// GitHub numbers them) and `<a id="…">` tags.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = slug(&heading.replace('`', ""));
                let count = seen.entry(base.clone()).or_insert(0);
                anchors.insert(if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                });
                *count += 1;
            }
        }
        for (start, _) in line.match_indices("<a id=\"") {
            let id = &line[start + 7..];
            anchors.insert(id[..id.find('"').unwrap_or(id.len())].to_owned());
        }
    }
    anchors
}

/// The targets of the inline links and images of a file: `[text](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        for (start, _) in line.match_indices("](") {
            let rest = &line[start + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].trim().to_owned());
            }
        }
    }
    targets
}

#[test]
fn every_relative_link_of_the_docs_reaches_a_file_and_its_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = Path::new(&file).parent().expect("a file has a directory");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                PathBuf::from(&file)
            } else {
                dir.join(path)
            };
            let on_disk = root().join(&resolved);
            if !on_disk.exists() {
                broken.push(format!("{file}: {target}: no file {}", resolved.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if on_disk.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{file}: {target}: an anchor into a file that is not Markdown"
                ));
            } else if !anchors(&std::fs::read_to_string(&on_disk).expect("readable"))
                .contains(anchor)
            {
                broken.push(format!(
                    "{file}: {target}: no heading #{anchor} in {}",
                    resolved.display()
                ));
            }
        }
    }
    assert!(
        checked > 20,
        "the docs link to each other: {checked} relative links found"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_reads_markdown_as_github_does() {
    assert_eq!(
        slug("Limits: what one caller can hold"),
        "limits-what-one-caller-can-hold"
    );
    assert_eq!(
        slug(&"Tokens from an identity provider (JWKS)".replace('`', "")),
        "tokens-from-an-identity-provider-jwks"
    );
    assert_eq!(
        slug("Locally, against the test servers"),
        "locally-against-the-test-servers"
    );
    let text = "# A\n## Usage\n```sh\n# not a heading\n```\n## Usage\n<a id=\"x\"></a>\n";
    let found = anchors(text);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["a", "usage", "usage-1", "x"].map(String::from)
    );
    let links = link_targets("see [a](b.md#c) and `[not](a link)`,\n```\n[x](y)\n```\n[z](w)");
    assert_eq!(links, ["b.md#c", "w"]);
    assert_eq!(
        option_line("      --grpc-addr <GRPC_ADDR>"),
        Some("--grpc-addr")
    );
    assert_eq!(option_line("  -h, --help"), Some("--help"));
    assert_eq!(
        option_line("      --keep-metadata"),
        Some("--keep-metadata")
    );
    assert_eq!(option_line("          --jwt-issuer says otherwise"), None);
    let parsed = options(
        "Options:\n      --a <A>\n          Text [default: sub]\n\n          [env: X_A=]\n      --b\n          [env: X_B]\n",
    );
    assert_eq!(parsed["--a"].env.as_deref(), Some("X_A"));
    assert_eq!(parsed["--a"].default.as_deref(), Some("sub"));
    assert_eq!(parsed["--b"].env.as_deref(), Some("X_B"));
    assert_eq!(parsed["--b"].default, None);
}
