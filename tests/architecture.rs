//! The shape of the code, checked on every test run so that it stays as
//! `src/` says it is (README, "Layout"):
//! - no import cycle between modules: following `crate::` and `super::`
//!   paths from one module's code to another's never comes back (a module
//!   and its own submodules may use each other: that is one room);
//! - the agent's stages (`src/agent/{store,credential,report,intake,output}`)
//!   import only downward, and never the wiring at the agent's root;
//! - no file over 800 lines outside its tests, and the daemon's central
//!   files (`agent/mod.rs`, the lease machine, the sink, the writer) under
//!   500;
//! - no function over 100 lines, tests aside;
//! - every module opens with a `//!` comment of at most 8 lines saying
//!   what it owns and must never do.
//!
//! It reads the sources as text (comments and string literals blanked
//! out), which is enough for code that `cargo fmt` keeps in shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file of the library (the binaries are crates of their own),
/// by its module path (`agent::lease::steps`; the crate root is "").
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), path)
        })
        .collect()
}

/// The text with comments, string and char literals replaced by spaces,
/// and `#[cfg(test)]` items removed (tests may reach anywhere).
fn code(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            out.push(' ');
            i += end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.push_str("\"\"");
            i += end;
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i += (j + 1).min(rest.len());
        } else if let Some(len) = char_literal(rest) {
            out.push_str("' '");
            i += len;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    without_tests(&out)
}

/// The length of the char literal `rest` starts with ('a', 'é', '\n',
/// '\''), None if it is not one (a lifetime has no closing quote).
fn char_literal(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let (_, first) = chars.next()?;
    if first == '\\' {
        chars.next()?;
    }
    for (at, c) in chars {
        if c == '\'' {
            return Some(at + 1);
        }
        if !c.is_ascii_hexdigit() && c != '{' && c != '}' {
            return None;
        }
    }
    None
}

/// Drops each `#[cfg(test)]` item: the attribute and the next item, up to
/// its `;` or its closing brace at the same indentation.
fn without_tests(code: &str) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]" {
            let item = i + 1;
            let indent = lines
                .get(item)
                .map_or(0, |l| l.len() - l.trim_start().len());
            if lines.get(item).is_some_and(|l| l.trim_end().ends_with(';')) {
                i = item + 1;
                continue;
            }
            let mut end = item + 1;
            while end < lines.len() && lines[end].trim_end() != format!("{}}}", " ".repeat(indent))
            {
                end += 1;
            }
            i = end + 1;
            continue;
        }
        out.push(lines[i]);
        i += 1;
    }
    out.join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `crate::`/`super::` paths in `code`, each as its segments with the
/// first one (`crate` or `super`) kept; a `use a::{b, c::d}` group gives
/// `a::b` and `a::c::d`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let word: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
        if !at_word || (word != "crate" && word != "super") {
            i += word.len().max(1);
            continue;
        }
        let (segments, end) = path_at(&chars, i);
        if chars.get(end) == Some(&'{') {
            let close = matching(&chars, end);
            let group: String = chars[end + 1..close].iter().collect();
            for item in split_top(&group) {
                let tail: Vec<String> = item
                    .split("::")
                    .map(|s| s.trim().trim_end_matches(|c: char| !is_ident(c)).to_owned())
                    .take_while(|s| !s.is_empty() && s.chars().all(is_ident))
                    .collect();
                if tail.first().is_some_and(|t| t != "self") {
                    found.push(segments.iter().cloned().chain(tail).collect());
                } else {
                    found.push(segments.clone());
                }
            }
            i = close;
        } else {
            found.push(segments);
            i = end.max(i + 1);
        }
    }
    found
}

/// Segments of the path starting at `i` (`a::b::c`), and where it ends
/// (at a `{` of a group, if one follows `::`).
fn path_at(chars: &[char], mut i: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    loop {
        let word: String = chars[i..].iter().take_while(|c| is_ident(**c)).collect();
        if word.is_empty() {
            return (segments, i);
        }
        i += word.len();
        segments.push(word);
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            if chars.get(i) == Some(&'{') {
                return (segments, i);
            }
        } else {
            return (segments, i);
        }
    }
}

fn matching(chars: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (j, c) in chars.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    chars.len()
}

fn split_top(group: &str) -> Vec<String> {
    let (mut depth, mut current, mut out) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The module a path from `module` leads into: its longest prefix that is
/// a module.
fn resolve(module: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut target: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    for segment in rest {
        let mut next = target.clone();
        next.push(segment.clone());
        if known.contains_key(&next.join("::")) {
            target = next;
        } else {
            break;
        }
    }
    Some(target.join("::"))
}

fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
    };
    within(a, b) || within(b, a)
}

/// Who imports whom: each module's imports of modules other than its own
/// ancestors and descendants (tests aside).
fn edges(known: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in known {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = code(&std::fs::read_to_string(file).unwrap());
        for path in paths(&text) {
            if let Some(target) = resolve(module, &path, known)
                && !related(module, &target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

#[test]
fn no_module_imports_another_that_leads_back_to_it() {
    let known = modules();
    let edges = edges(&known);
    assert!(
        edges
            .get("agent::output::sink")
            .is_some_and(|e| e.contains("agent::credential")),
        "the scan found no edges it must find: {edges:?}"
    );
    // Depth-first search for a path back to where it started.
    fn back(
        from: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        trail: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = trail.iter().position(|m| m == from) {
            let mut cycle = trail[at..].to_vec();
            cycle.push(from.to_owned());
            return Some(cycle);
        }
        if !done.insert(from.to_owned()) {
            return None;
        }
        trail.push(from.to_owned());
        for next in edges.get(from).into_iter().flatten() {
            if let Some(cycle) = back(next, edges, trail, done) {
                return Some(cycle);
            }
        }
        trail.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in known.keys() {
        if let Some(cycle) = back(module, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    // The scan itself, on text: two siblings that use each other.
    let known: BTreeMap<String, PathBuf> = ["", "a", "a::x", "a::y"]
        .into_iter()
        .map(|m| (m.to_owned(), PathBuf::new()))
        .collect();
    let x = paths(&code(
        "use super::y::Thing;\nfn f() { crate::a::y::g(); }\n",
    ));
    let y = paths(&code(
        "use super::{x::{self, Other}, Parent};\n// super::z\n",
    ));
    let to = |m: &str, p: &[Vec<String>]| -> BTreeSet<String> {
        p.iter()
            .filter_map(|p| resolve(m, p, &known))
            .filter(|t| !related(m, t))
            .collect()
    };
    assert_eq!(to("a::x", &x), BTreeSet::from(["a::y".to_owned()]));
    assert_eq!(to("a::y", &y), BTreeSet::from(["a::x".to_owned()]));
}

#[test]
fn the_central_files_stay_under_500_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in [
        "agent/mod.rs",
        "agent/credential/lease/mod.rs",
        "agent/output/sink.rs",
        "agent/output/writer.rs",
    ] {
        let lines = std::fs::read_to_string(src.join(file))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 500, "src/{file} has {lines} lines");
    }
}

#[test]
fn no_function_is_over_100_lines_outside_tests() {
    let mut long = Vec::new();
    for (_, file) in modules() {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "async fn ",
                "pub async fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn {
                continue;
            }
            let indent = line.len() - trimmed.len();
            // The body opens on the signature's last line.
            let Some(open) = (i..lines.len()).find(|&j| {
                let l = lines[j].trim_end();
                l.ends_with('{') || l.ends_with(';')
            }) else {
                continue;
            };
            if lines[open].trim_end().ends_with(';') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            let end = (open + 1..lines.len())
                .find(|&j| lines[j].trim_end() == close)
                .unwrap_or(lines.len());
            let length = end - i + 1;
            if length > 100 {
                long.push(format!("{}:{} ({length} lines)", file.display(), i + 1));
            }
        }
    }
    assert!(long.is_empty(), "functions over 100 lines: {long:#?}");
}

#[test]
fn every_module_says_what_it_owns() {
    for (module, file) in modules() {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        if file.file_name().is_some_and(|n| n == "tests.rs") && first.starts_with("//!") {
            continue;
        }
        assert!(
            first.starts_with("//!"),
            "{} ({module}) does not open with a //! comment",
            file.display()
        );
    }
}

/// A module's header says what it owns and what it must never do; the
/// reasons behind a decision go on the item that carries it.
#[test]
fn every_module_header_is_a_short_contract() {
    let mut long = Vec::new();
    for (_, file) in modules() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines = text.lines().take_while(|l| l.starts_with("//!")).count();
        if lines > 8 {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "module headers over 8 lines: {long:#?}");
}

/// The daemon's stages (README, "Layout"), each a folder of `src/agent/`,
/// with its rank: a stage imports only stages of a lower rank, so intake
/// and output (same rank) never import each other. Beside them, the
/// agent's root holds the wiring (`agent`, `pipeline`, `supervise`,
/// `reload`), which may import anything and which no stage imports, and
/// the shared leaves (`message`, `deadletter`, `stats`), which import no
/// stage.
const STAGES: [(&str, u8); 5] = [
    ("store", 0),
    ("credential", 1),
    ("report", 2),
    ("intake", 3),
    ("output", 3),
];
const LEAVES: [&str; 3] = ["message", "deadletter", "stats"];

/// Where a module sits in the agent: a stage and its rank, a shared leaf,
/// the wiring, or outside the agent.
#[derive(Debug, PartialEq)]
enum Place {
    Stage(&'static str, u8),
    Leaf,
    Wiring,
    Outside,
}

fn place(module: &str) -> Place {
    let Some(rest) = module
        .strip_prefix("agent")
        .filter(|r| r.is_empty() || r.starts_with("::"))
    else {
        return Place::Outside;
    };
    let first = rest
        .trim_start_matches("::")
        .split("::")
        .next()
        .unwrap_or("");
    if let Some(&(name, rank)) = STAGES.iter().find(|(n, _)| *n == first) {
        Place::Stage(name, rank)
    } else if LEAVES.contains(&first) {
        Place::Leaf
    } else {
        Place::Wiring
    }
}

/// The imports that break the stage order, as `from -> to`.
fn stage_violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (from, targets) in edges {
        for to in targets {
            let allowed = match (place(from), place(to)) {
                (Place::Stage(a, _), Place::Stage(b, _)) if a == b => true,
                (Place::Stage(_, from_rank), Place::Stage(_, to_rank)) => to_rank < from_rank,
                (Place::Stage(..) | Place::Leaf, Place::Wiring) => false,
                (Place::Leaf, Place::Stage(..)) => false,
                _ => true,
            };
            if !allowed {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    wrong
}

#[test]
fn each_stage_of_the_agent_imports_only_downward() {
    let known = modules();
    for (stage, _) in STAGES {
        assert!(
            known.contains_key(&format!("agent::{stage}")),
            "src/agent/{stage}/ is gone: update STAGES and README's Layout"
        );
    }
    let edges = edges(&known);
    // The scan must see the imports the order allows, or it proves nothing.
    assert!(
        edges
            .get("agent::output::writer")
            .is_some_and(|e| e.contains("agent::store::spool")),
        "the scan found no edges it must find: {edges:?}"
    );
    let wrong = stage_violations(&edges);
    assert!(
        wrong.is_empty(),
        "imports against the stage order: {wrong:#?}"
    );
}

#[test]
fn an_intake_file_importing_output_breaks_the_order() {
    let edges =
        |from: &str, to: &str| BTreeMap::from([(from.to_owned(), BTreeSet::from([to.to_owned()]))]);
    for (from, to) in [
        ("agent::intake::reader", "agent::output::writer"),
        ("agent::output::sink", "agent::intake"),
        ("agent::store::spool", "agent::credential::lease"),
        ("agent::report::status", "agent::pipeline"),
        ("agent::stats", "agent::store::spool"),
    ] {
        assert_eq!(
            stage_violations(&edges(from, to)).len(),
            1,
            "{from} -> {to}"
        );
    }
    for (from, to) in [
        ("agent::intake", "agent::store::spool"),
        ("agent::output::writer", "agent::credential"),
        ("agent::pipeline", "agent::output::writer"),
        ("agent::intake::reader", "agent::stats"),
        ("agent::store::spool", "config"),
    ] {
        assert!(
            stage_violations(&edges(from, to)).is_empty(),
            "{from} -> {to}"
        );
    }
}
#[test]
fn no_file_is_over_800_lines_outside_tests() {
    let mut long = Vec::new();
    for (_, file) in modules() {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let lines = without_tests(&std::fs::read_to_string(&file).unwrap())
            .lines()
            .count();
        if lines > 800 {
            long.push(format!(
                "{} ({lines} lines without its tests)",
                file.display()
            ));
        }
    }
    assert!(long.is_empty(), "files over 800 lines: {long:#?}");
}

#[test]
fn the_gateway_and_the_authority_meet_only_in_wire() {
    let known = modules();
    let side = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut wrong = Vec::new();
    for (from, targets) in edges(&known) {
        for to in targets {
            let pair = (side(&from), side(&to));
            let crossing = matches!(
                (pair.0.as_str(), pair.1.as_str()),
                ("agent", "authority") | ("authority", "agent") | ("wire", "agent" | "authority")
            );
            if crossing {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports across the two sides: {wrong:#?}");
}
