//! The service's top-level modules import each other one way only: a module that imports another
//! is never imported by it, directly or through others. Read from the source of `api/src`, so a
//! backward import fails here with the circle it closes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a file belongs to (`store` for `store/sql/users.rs`), or `None` for the
/// crate root.
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules `source` names through `crate::` (comments left out).
fn imports(source: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

/// Module → the modules it imports, for the whole crate.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    let files = sources(&root);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&root, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&root, file) else {
            continue;
        };
        let source = std::fs::read_to_string(file).expect("read a source file");
        let edges = graph.entry(module.clone()).or_default();
        for imported in imports(&source) {
            if imported != module && modules.contains(&imported) {
                edges.insert(imported);
            }
        }
    }
    graph
}

/// A circle of imports through `from`, if there is one.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|module| module == from) {
        let mut found = path[at..].to_vec();
        found.push(from.to_owned());
        return Some(found);
    }
    path.push(from.to_owned());
    for next in graph.get(from).into_iter().flatten() {
        if let Some(found) = circle(graph, next, path) {
            return Some(found);
        }
    }
    path.pop();
    None
}

#[test]
fn top_level_modules_import_each_other_one_way() {
    let graph = graph();
    assert!(graph.len() >= 8, "the module graph was not read: {graph:?}");
    for module in graph.keys() {
        if let Some(found) = circle(&graph, module, &mut Vec::new()) {
            panic!(
                "modules import each other in a circle: {}\n(all imports: {graph:#?})",
                found.join(" → ")
            );
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".to_owned()].into());
    graph.insert("b".into(), ["c".to_owned()].into());
    graph.insert("c".into(), ["a".to_owned()].into());
    let found = circle(&graph, "a", &mut Vec::new()).expect("a circle");
    assert_eq!(found, ["a", "b", "c", "a"]);
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(circle(&graph, "a", &mut Vec::new()), None);
    assert_eq!(
        imports("use crate::store::x; // crate::http\nlet y = $crate::cache::Cached;"),
        ["cache".to_owned(), "store".to_owned()].into()
    );
}

#[test]
fn the_lower_layers_know_nothing_of_http_or_the_store() {
    let graph = graph();
    for (module, forbidden) in [
        ("domain", &["http", "store", "cache", "auth"][..]),
        ("cache", &["http", "store", "auth"][..]),
        ("metrics", &["http", "store", "cache", "auth"][..]),
        ("store", &["http", "auth", "startup"][..]),
        ("auth", &["http", "startup", "state"][..]),
        // What handlers share is put together by `startup` and used by `http`; it is neither.
        ("state", &["http", "startup"][..]),
    ] {
        let imported = graph.get(module).cloned().unwrap_or_default();
        for name in forbidden {
            assert!(
                !imported.contains(*name),
                "`{module}` imports `{name}`: {imported:?}"
            );
        }
    }
}

/// What follows `crate::store::` on each line of `source` that names it (comments left out).
fn store_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::store::") {
            rest = &rest[at + "crate::store::".len()..];
            let mut path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '{'))
                .collect();
            if rest[path.len()..].starts_with('(') {
                path.push_str("()");
            }
            paths.push(path);
        }
    }
    paths
}

/// `store/mod.rs` is the facade the rest of the service uses; the engines beside it are used by
/// it, and take the store's vocabulary from its modules (`store::error`, `store::page`, …), never
/// from the facade itself.
#[test]
fn the_engines_never_import_their_own_facade() {
    let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/store");
    let mut from_facade = Vec::new();
    for engine in ["sql", "mongo"] {
        for file in sources(&store.join(engine)) {
            let source = std::fs::read_to_string(&file).expect("read a source file");
            for path in store_paths(&source) {
                // `crate::store::error` and `crate::store::error::StoreError` are a module's;
                // `crate::store::StoreError`, `crate::store::{…}` and `crate::store::now()` are
                // the facade's.
                let first = path.split("::").next().unwrap_or_default();
                let module_path = first.starts_with(|c: char| c.is_ascii_lowercase())
                    && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !module_path {
                    from_facade.push(format!("{}: crate::store::{path}", file.display()));
                }
            }
        }
    }
    assert!(from_facade.is_empty(), "{from_facade:#?}");
}

#[test]
fn a_facade_import_is_seen() {
    assert_eq!(
        store_paths("use crate::store::{Resource, StoreError};\nlet t = crate::store::now();"),
        ["{Resource", "now()"]
    );
    assert_eq!(
        store_paths("use crate::store::error::StoreError; // crate::store::X"),
        ["error::StoreError"]
    );
}
