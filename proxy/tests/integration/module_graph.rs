//! The crate's modules depend on each other in one direction: a test fails when a cycle
//! appears among the top-level modules of `proxy/src` (the wire format, a crate of its own
//! below them all, then transports below the server logic, as in hickory-dns). Dependencies are read from the source: every
//! `crate::name` path and `use crate::{…}` group outside comments, in every non-test file of
//! a module; the crate root (`lib.rs`) is the node `crate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Names the root re-exports for crates of the workspace (`pub use dnslens_wire as wire`).
const OWN_CRATES: [&str; 4] = ["wire", "yaml", "inject", "node_setup"];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`crate` for lib.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    let name = first.to_string_lossy();
    match name.strip_suffix(".rs") {
        Some("lib") => "crate".to_string(),
        Some(module) => module.to_string(),
        None => name.to_string(),
    }
}

/// Files that are not the library: `tests.rs` beside a module, modules only compiled for
/// tests, and the binary's `main.rs` (a crate of its own).
fn is_test_file(file: &Path) -> bool {
    let name = file.file_name().unwrap().to_string_lossy();
    ["tests.rs", "test_messages.rs", "fuzz_bytes.rs", "main.rs"].contains(&name.as_ref())
}

/// Top-level module names a piece of code refers to through `crate::`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first path segment of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
            rest = after;
        }
    }
    names
}

/// Code without comments: `//` to the end of the line (doc links are not dependencies).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    source_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter(|f| !is_test_file(f))
        .map(|f| module_of(src, f))
        .collect();
    let mut graph = Graph::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let from = module_of(src, file);
        let code = without_comments(&std::fs::read_to_string(file).unwrap());
        let mut names = referenced(&code);
        if from == "crate" {
            // The root names its modules without `crate::` (`use forward::Forwarder`).
            names.extend(
                modules
                    .iter()
                    .filter(|m| code.contains(&format!("{m}::")))
                    .cloned(),
            );
        }
        let edges = graph.entry(from.clone()).or_default();
        // Crates of their own re-exported by the root (`crate::wire` is `dnslens-wire`): the
        // compiler keeps them below everything here.
        for to in names
            .into_iter()
            .filter(|n| !OWN_CRATES.contains(&n.as_str()))
        {
            // Items of the crate root (`crate::Proxy`) belong to the node `crate`.
            let to = if modules.contains(&to) {
                to
            } else {
                "crate".to_string()
            };
            if to != from {
                edges.insert(to);
            }
        }
    }
    graph
}

/// A cycle through the graph, as the list of its modules, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn the_modules_of_proxy_src_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.len() > 10, "read the crate's modules: {graph:?}");
    // The layers the data path is built on depend on no behaviour above them (the wire
    // format is a crate of its own: the compiler sees to it).
    for low in ["metrics", "record"] {
        let above: Vec<&String> = graph[low]
            .iter()
            .filter(|m| m.as_str() != "metrics")
            .collect();
        assert!(above.is_empty(), "{low} depends on {above:?}");
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}\nthe graph: {graph:#?}", cycle.join(" → "));
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut graph = Graph::new();
    graph.insert("a".into(), ["b".to_string()].into());
    graph.insert("b".into(), ["c".to_string()].into());
    graph.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
    assert_eq!(
        referenced("use crate::{wire::{self, Rcode}, metrics};\nlet x = crate::cache::Key;"),
        ["cache", "metrics", "wire"].map(String::from).into()
    );
}
