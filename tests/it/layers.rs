//! The import graph of `src/` keeps the layers written in ARCHITECTURE.md.
//!
//! Cargo refuses a cycle between crates; inside one crate only a test can. This one
//! reads every file of the library (following `mod` declarations from `src/lib.rs`,
//! leaving out `#[cfg(test)]` items, `tests.rs` files, `tests/` directories, comments
//! and string contents), collects every path that names the crate (`use crate::..`,
//! grouped `use crate::{a::B, c}`, `super::..`, `self::..`, a child module's name, and
//! the same paths written inline in code), and resolves each to the FILE that defines
//! the named item: a path naming a file module resolves to that file; an item re-exported
//! or imported through another module is followed to the file that defines it. A
//! `pub use` that a file only passes on (its name is not used there) is not an import
//! of that file: whoever imports through it is charged with the import instead.
//!
//! It fails on (a) an import from a lower floor to a higher one, or between two modules of
//! the same floor (the floors are the lines `floor N: a, b` of the fenced block under
//! `## Layers` in ARCHITECTURE.md; a module's floor is that of its top-level name),
//! (b) a module that is on no floor, and (c) any circle among files, inside a directory
//! module too, printed with the names that tie it. Only the standard library is used,
//! so the analysis can be tried alone: `rustc --edition 2021 --test tests/it/layers.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module name the crate root (`src/lib.rs`) goes by in the floors.
const ROOT: &str = "lib";

#[test]
fn imports_follow_the_layers_and_form_no_circle() {
    let root = PathBuf::from(option_env!("CARGO_MANIFEST_DIR").unwrap_or("."));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md is readable at the repository root");
    let floors = parse_floors(&architecture).unwrap_or_else(|e| panic!("ARCHITECTURE.md: {e}"));
    let graph = Graph::read(&root.join("src")).unwrap_or_else(|e| panic!("reading src/: {e}"));
    assert!(
        graph.files.len() > 20,
        "the walk from src/lib.rs found only {} files; the reader is broken",
        graph.files.len()
    );
    let report = graph.check(&floors);
    if std::env::var_os("LAYERS_EDGES").is_some() {
        // Every import between files, for a look at the whole graph.
        print!("{}", graph.render_edges());
    }
    println!("{}", report.render(&graph));
    assert!(
        report.is_clean(),
        "the import graph breaks the layers of ARCHITECTURE.md (## Layers):\n{}\n\
         Move the named item down to the floor of its importer (or below), or split the \
         file so the shared part sits below both.",
        report.render(&graph)
    );
}

// ---------------------------------------------------------------------------------------
// Floors

/// Floor of each top-level module name, from the `## Layers` block of ARCHITECTURE.md.
#[derive(Debug, Default)]
pub struct Floors(BTreeMap<String, u32>);

/// Reads the first fenced block after the heading `## Layers`: one line per floor,
/// `floor N: a, b, c`; other lines of the block (and text after `#`) are ignored.
pub fn parse_floors(markdown: &str) -> Result<Floors, String> {
    let mut lines = markdown.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "## Layers")
        .ok_or("no heading `## Layers`")?;
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("```"))
        .ok_or("no fenced block under `## Layers`")?;
    let mut floors = Floors::default();
    for line in lines.take_while(|l| !l.trim_start().starts_with("```")) {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("floor ") else {
            continue;
        };
        let (number, names) = rest
            .split_once(':')
            .ok_or_else(|| format!("`{line}`: expected `floor N: a, b`"))?;
        let number: u32 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{line}`: `{number}` is not a floor number"))?;
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(before) = floors.0.insert(name.to_string(), number) {
                return Err(format!("`{name}` is on floor {before} and floor {number}"));
            }
        }
    }
    if floors.0.is_empty() {
        return Err("the `## Layers` block names no floor (`floor N: a, b`)".into());
    }
    Ok(floors)
}

// ---------------------------------------------------------------------------------------
// Reading the source

/// Source text with comments and the contents of string and char literals blanked
/// (newlines kept, so positions and line numbers stay).
fn strip(src: &str) -> Vec<char> {
    let b: Vec<char> = src.chars().collect();
    let n = b.len();
    let mut out = Vec::with_capacity(n);
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < n {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < n && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < n {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.extend([' ', ' ']);
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.extend([' ', ' ']);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br#".."#.
        let raw_start = c == 'r'
            && (i == 0 || !ident(b[i - 1]) || (b[i - 1] == 'b' && (i == 1 || !ident(b[i - 2]))));
        if raw_start {
            let mut j = i + 1;
            while j < n && b[j] == '#' {
                j += 1;
            }
            if j < n && b[j] == '"' {
                let hashes = j - i - 1;
                out.extend(&b[i..=j]);
                i = j + 1;
                while i < n {
                    if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
                        out.extend(&b[i..=i + hashes]);
                        i += hashes + 1;
                        break;
                    }
                    out.push(blank(b[i]));
                    i += 1;
                }
                continue;
            }
        }
        if c == '"' {
            out.push('"');
            i += 1;
            while i < n && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < n {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            if i < n {
                out.push('"');
                i += 1;
            }
            continue;
        }
        if c == '\'' {
            if next == Some('\\') {
                out.push('\'');
                i += 1;
                out.extend([' ', ' ']);
                i += 2;
                while i < n && b[i] != '\'' {
                    out.push(' ');
                    i += 1;
                }
                if i < n {
                    out.push('\'');
                    i += 1;
                }
                continue;
            }
            if b.get(i + 2) == Some(&'\'') {
                out.extend(['\'', ' ', '\'']);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Tokens with their line numbers; `#[cfg(test)]` items are left out, and the names
/// of the modules they declare (`#[cfg(test)] mod x;`) returned beside.
fn tokens(clean: &[char]) -> (Vec<(Tok, usize)>, BTreeSet<String>) {
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < clean.len() {
        let c = clean[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < clean.len() && (clean[i].is_alphanumeric() || clean[i] == '_') {
                i += 1;
            }
            let word: String = clean[start..i].iter().collect();
            let word = word.strip_prefix("r#").map(str::to_string).unwrap_or(word);
            toks.push((Tok::Ident(word), line));
        } else if c == ':' && clean.get(i + 1) == Some(&':') {
            toks.push((Tok::PathSep, line));
            i += 2;
        } else {
            toks.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    // Drop `#[cfg(test)]` items: the attribute, further attributes, then the item up to
    // its `;` or the end of its first brace block.
    let mut kept = Vec::with_capacity(toks.len());
    let mut test_mods = BTreeSet::new();
    let mut i = 0;
    let is = |t: &Tok, c: char| *t == Tok::Punct(c);
    let word = |t: &Tok, w: &str| matches!(t, Tok::Ident(x) if x == w);
    while i < toks.len() {
        let cfg_test = i + 6 < toks.len()
            && is(&toks[i].0, '#')
            && is(&toks[i + 1].0, '[')
            && word(&toks[i + 2].0, "cfg")
            && is(&toks[i + 3].0, '(')
            && word(&toks[i + 4].0, "test")
            && is(&toks[i + 5].0, ')')
            && is(&toks[i + 6].0, ']');
        if !cfg_test {
            kept.push(toks[i].clone());
            i += 1;
            continue;
        }
        i += 7;
        // Further attributes.
        while i + 1 < toks.len() && is(&toks[i].0, '#') && is(&toks[i + 1].0, '[') {
            let mut depth = 0;
            while i < toks.len() {
                if is(&toks[i].0, '[') {
                    depth += 1;
                } else if is(&toks[i].0, ']') {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                i += 1;
            }
        }
        let start = i;
        let mut depth = 0;
        while i < toks.len() {
            match &toks[i].0 {
                Tok::Punct(';') if depth == 0 => {
                    i += 1;
                    break;
                }
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        let item: Vec<&Tok> = toks[start..i].iter().map(|t| &t.0).collect();
        if let Some(pos) = item.iter().position(|t| word(t, "mod")) {
            if let (Some(Tok::Ident(name)), Some(Tok::Punct(';'))) =
                (item.get(pos + 1), item.get(pos + 2))
            {
                test_mods.insert(name.clone());
            }
        }
    }
    (kept, test_mods)
}

/// One path a `use` brings in: its segments as written, the name it binds (`None`
/// for a glob), the token range of its statement, whether it is `pub`.
#[derive(Clone, Debug)]
struct UsePath {
    segs: Vec<String>,
    binds: Option<String>,
    line: usize,
    public: bool,
    top_level: bool,
    range: (usize, usize),
}

fn parse_use_tree(
    toks: &[(Tok, usize)],
    pos: &mut usize,
    prefix: &[String],
    out: &mut Vec<UsePath>,
    template: &UsePath,
) {
    let mut segs = prefix.to_vec();
    loop {
        match toks.get(*pos).map(|t| &t.0) {
            Some(Tok::PathSep) => *pos += 1,
            Some(Tok::Ident(w)) => {
                segs.push(w.clone());
                *pos += 1;
                if toks.get(*pos).map(|t| &t.0) == Some(&Tok::PathSep) {
                    *pos += 1;
                    continue;
                }
                let mut binds = segs.last().cloned();
                if segs.last().map(String::as_str) == Some("self") {
                    segs.pop();
                    binds = segs.last().cloned();
                }
                if matches!(toks.get(*pos).map(|t| &t.0), Some(Tok::Ident(w)) if w == "as") {
                    if let Some((Tok::Ident(alias), _)) = toks.get(*pos + 1) {
                        binds = Some(alias.clone());
                    }
                    *pos += 2;
                }
                out.push(UsePath {
                    segs,
                    binds,
                    ..template.clone()
                });
                return;
            }
            Some(Tok::Punct('*')) => {
                *pos += 1;
                out.push(UsePath {
                    segs,
                    binds: None,
                    ..template.clone()
                });
                return;
            }
            Some(Tok::Punct('{')) => {
                *pos += 1;
                loop {
                    match toks.get(*pos).map(|t| &t.0) {
                        Some(Tok::Punct('}')) => {
                            *pos += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *pos += 1,
                        None => return,
                        _ => {
                            let before = *pos;
                            parse_use_tree(toks, pos, &segs, out, template);
                            if *pos == before {
                                *pos += 1;
                            }
                        }
                    }
                }
            }
            _ => return,
        }
    }
}

/// What one file says: its definitions at the top level, the modules it declares, its
/// `use` paths and the crate paths written inline.
#[derive(Debug, Default)]
struct FileFacts {
    defs: BTreeSet<String>,
    inline_mods: BTreeSet<String>,
    child_mods: Vec<String>,
    test_mods: BTreeSet<String>,
    uses: Vec<UsePath>,
    toks: Vec<(Tok, usize)>,
}

fn read_facts(src: &str) -> FileFacts {
    let clean = strip(src);
    let (toks, test_mods) = tokens(&clean);
    let mut facts = FileFacts {
        test_mods,
        ..FileFacts::default()
    };
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Ident(w) if w == "use" => {
                let public = i > 0
                    && (matches!(&toks[i - 1].0, Tok::Ident(p) if p == "pub")
                        || (toks[i - 1].0 == Tok::Punct(')')
                            && toks[..i]
                                .iter()
                                .rev()
                                .take(5)
                                .any(|t| t.0 == Tok::Ident("pub".into()))));
                let end = toks[i..]
                    .iter()
                    .position(|t| t.0 == Tok::Punct(';'))
                    .map_or(toks.len(), |p| i + p);
                let template = UsePath {
                    segs: vec![],
                    binds: None,
                    line: toks[i].1,
                    public,
                    top_level: depth == 0,
                    range: (i, end),
                };
                let mut pos = i + 1;
                parse_use_tree(&toks[..end], &mut pos, &[], &mut facts.uses, &template);
                i = end;
                continue;
            }
            Tok::Ident(w) if depth == 0 => {
                let kind = w.as_str();
                let mut j = i + 1;
                if matches!(kind, "const" | "static") {
                    while matches!(&toks.get(j).map(|t| &t.0), Some(Tok::Ident(x)) if x == "mut" || x == "fn" || x == "unsafe")
                    {
                        j += 1;
                    }
                }
                if kind == "macro_rules" && toks.get(j).map(|t| &t.0) == Some(&Tok::Punct('!')) {
                    j += 1;
                }
                let named = matches!(
                    kind,
                    "struct"
                        | "enum"
                        | "fn"
                        | "const"
                        | "static"
                        | "type"
                        | "trait"
                        | "union"
                        | "mod"
                        | "macro_rules"
                );
                // `impl Trait for X` and `where` clauses never reach here at depth 0 with
                // these keywords before a name, except `fn` in a trait object type
                // (`fn(..)`), whose next token is `(`, not a name.
                if named {
                    if let Some((Tok::Ident(name), _)) = toks.get(j) {
                        if kind == "mod" {
                            if toks.get(j + 1).map(|t| &t.0) == Some(&Tok::Punct(';')) {
                                if !facts.test_mods.contains(name) {
                                    facts.child_mods.push(name.clone());
                                }
                            } else {
                                facts.inline_mods.insert(name.clone());
                            }
                        } else {
                            facts.defs.insert(name.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    facts.toks = toks;
    facts
}

// ---------------------------------------------------------------------------------------
// The graph

#[derive(Debug)]
struct Module {
    /// Module path from the crate root (`[]` for lib.rs, `["fleet", "saved"]`).
    path: Vec<String>,
    /// The file, relative to the directory read.
    file: PathBuf,
    children: BTreeMap<String, usize>,
    parent: Option<usize>,
    facts: FileFacts,
}

/// An import of one file by another: the names that tie them and where.
#[derive(Debug, Default, Clone)]
struct Tie {
    names: BTreeSet<String>,
    lines: BTreeSet<usize>,
}

pub struct Graph {
    files: Vec<Module>,
    edges: BTreeMap<(usize, usize), Tie>,
}

impl Graph {
    /// Reads the crate under `src` (a directory holding `lib.rs`).
    pub fn read(src: &Path) -> Result<Graph, String> {
        let mut files = Vec::new();
        let mut stack = vec![(Vec::<String>::new(), PathBuf::from("lib.rs"), None::<usize>)];
        while let Some((path, file, parent)) = stack.pop() {
            let text = std::fs::read_to_string(src.join(&file))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let facts = read_facts(&text);
            let index = files.len();
            // Children of `a/mod.rs` and `lib.rs` sit beside them; of `a.rs`, in `a/`.
            let dir = if file
                .file_name()
                .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
            {
                file.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                file.with_extension("")
            };
            for child in &facts.child_mods {
                if child == "tests" {
                    continue;
                }
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(child).join("mod.rs");
                let child_file = if src.join(&flat).is_file() {
                    flat
                } else if src.join(&nested).is_file() {
                    nested
                } else {
                    return Err(format!(
                        "{}: `mod {child};` has neither {} nor {}",
                        file.display(),
                        flat.display(),
                        nested.display()
                    ));
                };
                let mut child_path = path.clone();
                child_path.push(child.clone());
                stack.push((child_path, child_file, Some(index)));
            }
            files.push(Module {
                path,
                file,
                children: BTreeMap::new(),
                parent,
                facts,
            });
        }
        for i in 0..files.len() {
            if let Some(p) = files[i].parent {
                let name = files[i].path.last().cloned().unwrap_or_default();
                files[p].children.insert(name, i);
            }
        }
        let mut graph = Graph {
            files,
            edges: BTreeMap::new(),
        };
        graph.link();
        Ok(graph)
    }

    fn name(&self, file: usize) -> String {
        format!("src/{}", self.files[file].file.display())
    }

    /// The module (top-level name) a file belongs to.
    fn top(&self, file: usize) -> String {
        self.files[file]
            .path
            .first()
            .cloned()
            .unwrap_or_else(|| ROOT.to_string())
    }

    /// `segs` as written in module `from`, made absolute; `None` for an outside crate.
    fn absolute(&self, from: usize, segs: &[String]) -> Option<Vec<String>> {
        let mut module = self.files[from].path.clone();
        let mut rest = segs;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                module.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    module.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(first) if self.files[from].children.contains_key(first) => {}
            _ => return None,
        }
        module.extend(rest.iter().cloned());
        Some(module)
    }

    /// The file that defines what the absolute path `abs` names, and that name.
    fn resolve(&self, abs: &[String], guard: usize) -> (usize, String) {
        let mut m = 0; // lib.rs is read first
        let mut i = 0;
        while i < abs.len() {
            match self.files[m].children.get(&abs[i]) {
                Some(&child) => {
                    m = child;
                    i += 1;
                }
                None => break,
            }
        }
        if i == abs.len() {
            let name = abs.last().cloned().unwrap_or_else(|| ROOT.into());
            return (m, name);
        }
        let name = &abs[i];
        let facts = &self.files[m].facts;
        if facts.defs.contains(name) || facts.inline_mods.contains(name) || guard > 16 {
            return (m, name.clone());
        }
        // Brought in by a `use` of that module (re-exported or not: a child sees both).
        for u in facts.uses.iter().filter(|u| u.top_level) {
            if u.binds.as_ref() == Some(name) {
                if let Some(target) = self.absolute(m, &u.segs) {
                    let mut target = target;
                    target.extend(abs[i + 1..].iter().cloned());
                    return self.resolve(&target, guard + 1);
                }
            }
        }
        for u in facts
            .uses
            .iter()
            .filter(|u| u.top_level && u.binds.is_none())
        {
            if let Some(mut target) = self.absolute(m, &u.segs) {
                target.push(name.clone());
                let (file, found) = self.resolve(&target, guard + 1);
                if self.files[file].facts.defs.contains(&found) {
                    return (file, found);
                }
            }
        }
        (m, name.clone())
    }

    /// Collects the edges: every crate path of every file, resolved.
    fn link(&mut self) {
        let mut edges: BTreeMap<(usize, usize), Tie> = BTreeMap::new();
        for from in 0..self.files.len() {
            let facts = &self.files[from].facts;
            let mut refs: Vec<(Vec<String>, usize)> = Vec::new();
            let mut in_use = vec![false; facts.toks.len()];
            for u in &facts.uses {
                for flag in &mut in_use[u.range.0..u.range.1] {
                    *flag = true;
                }
            }
            for u in &facts.uses {
                // A `pub use` whose name the file does not use itself only passes it on.
                if u.public {
                    let Some(bound) = &u.binds else { continue };
                    let used = facts
                        .toks
                        .iter()
                        .enumerate()
                        .any(|(k, t)| !in_use[k] && t.0 == Tok::Ident(bound.clone()));
                    if !used {
                        continue;
                    }
                }
                refs.push((u.segs.clone(), u.line));
            }
            // Paths written inline: `crate::a::b`, `super::x`, `self::x`, `child::x`.
            let toks = &facts.toks;
            let mut k = 0;
            while k < toks.len() {
                let starts = !in_use[k]
                    && matches!(&toks[k].0, Tok::Ident(w) if w == "crate" || w == "super" || w == "self" || self.files[from].children.contains_key(w))
                    && toks.get(k + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                    && (k == 0
                        || !matches!(
                            toks[k - 1].0,
                            Tok::PathSep | Tok::Punct('$') | Tok::Punct('.')
                        ));
                if !starts {
                    k += 1;
                    continue;
                }
                let mut segs = Vec::new();
                let line = toks[k].1;
                while let Some((Tok::Ident(w), _)) = toks.get(k) {
                    segs.push(w.clone());
                    k += 1;
                    if toks.get(k).map(|t| &t.0) != Some(&Tok::PathSep) {
                        break;
                    }
                    k += 1;
                }
                refs.push((segs, line));
            }
            for (segs, line) in refs {
                let Some(abs) = self.absolute(from, &segs) else {
                    continue;
                };
                let (to, name) = self.resolve(&abs, 0);
                if to != from {
                    let tie = edges.entry((from, to)).or_default();
                    tie.names.insert(name);
                    tie.lines.insert(line);
                }
            }
        }
        self.edges = edges;
    }

    /// Every import between files, one a line: `from -> to: names`.
    pub fn render_edges(&self) -> String {
        let mut text = String::new();
        for (&(from, to), tie) in &self.edges {
            text.push_str(&format!(
                "{} -> {}: {}\n",
                self.name(from),
                self.name(to),
                tie.names.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        text
    }

    pub fn check(&self, floors: &Floors) -> Report {
        let mut report = Report::default();
        let mut tops = BTreeSet::new();
        for f in 0..self.files.len() {
            tops.insert(self.top(f));
        }
        let root_imported = self
            .edges
            .keys()
            .any(|&(_, to)| self.files[to].path.is_empty());
        for top in &tops {
            if top == ROOT && !root_imported {
                continue;
            }
            if !floors.0.contains_key(top) {
                report.unplaced.push(top.clone());
            }
        }
        for (&(from, to), tie) in &self.edges {
            let (a, b) = (self.top(from), self.top(to));
            if a == b {
                continue;
            }
            let (Some(&fa), Some(&fb)) = (floors.0.get(&a), floors.0.get(&b)) else {
                continue;
            };
            if fa <= fb {
                report.back_up.push(format!(
                    "{} ({a}, floor {fa}) -> {} ({b}, floor {fb}): {} (line {})",
                    self.name(from),
                    self.name(to),
                    tie.names.iter().cloned().collect::<Vec<_>>().join(", "),
                    tie.lines
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for component in self.strong_components() {
            if component.len() > 1 {
                report.circles.push(self.describe_circle(&component));
            }
        }
        report
    }

    /// Tarjan's strongly connected components over the file graph.
    fn strong_components(&self) -> Vec<Vec<usize>> {
        let n = self.files.len();
        let mut adjacent = vec![Vec::new(); n];
        for &(a, b) in self.edges.keys() {
            adjacent[a].push(b);
        }
        struct State {
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            on_stack: Vec<bool>,
            stack: Vec<usize>,
            next: usize,
            out: Vec<Vec<usize>>,
        }
        fn visit(v: usize, adjacent: &[Vec<usize>], s: &mut State) {
            s.index[v] = Some(s.next);
            s.low[v] = s.next;
            s.next += 1;
            s.stack.push(v);
            s.on_stack[v] = true;
            for &w in &adjacent[v] {
                match s.index[w] {
                    None => {
                        visit(w, adjacent, s);
                        s.low[v] = s.low[v].min(s.low[w]);
                    }
                    Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                    _ => {}
                }
            }
            if Some(s.low[v]) == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                s.out.push(component);
            }
        }
        let mut s = State {
            index: vec![None; n],
            low: vec![0; n],
            on_stack: vec![false; n],
            stack: Vec::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in 0..n {
            if s.index[v].is_none() {
                visit(v, &adjacent, &mut s);
            }
        }
        s.out
    }

    /// One shortest circle through the component's first file, with the names on each
    /// arrow, and the other files of the component.
    fn describe_circle(&self, component: &[usize]) -> String {
        let members: BTreeSet<usize> = component.iter().copied().collect();
        let start = *members
            .iter()
            .min_by_key(|&&m| self.name(m))
            .expect("a component has a file");
        // Breadth-first from `start` back to `start` inside the component.
        let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(v) = queue.pop_front() {
            for (&(a, b), _) in self.edges.range((v, 0)..(v + 1, 0)) {
                debug_assert_eq!(a, v);
                if !members.contains(&b) {
                    continue;
                }
                if b == start {
                    closing = Some(v);
                    break 'search;
                }
                if let std::collections::btree_map::Entry::Vacant(e) = previous.entry(b) {
                    e.insert(v);
                    queue.push_back(b);
                }
            }
        }
        let mut cycle = vec![start];
        let mut at = closing.expect("a component of two or more files has a circle");
        while at != start {
            cycle.push(at);
            at = previous[&at];
        }
        cycle.push(start);
        cycle.reverse();
        // cycle: start, ..., start (in the direction of the arrows)
        let mut text = self.name(cycle[0]);
        for pair in cycle.windows(2) {
            let tie = &self.edges[&(pair[0], pair[1])];
            text.push_str(&format!(
                " -[{}]-> {}",
                tie.names.iter().cloned().collect::<Vec<_>>().join(", "),
                self.name(pair[1])
            ));
        }
        if members.len() + 1 > cycle.len() {
            let others: Vec<String> = members
                .iter()
                .filter(|m| !cycle.contains(m))
                .map(|&m| self.name(m))
                .collect();
            text.push_str(&format!(" (tied in the same knot: {})", others.join(", ")));
        }
        text
    }
}

#[derive(Debug, Default)]
pub struct Report {
    unplaced: Vec<String>,
    back_up: Vec<String>,
    circles: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.unplaced.is_empty() && self.back_up.is_empty() && self.circles.is_empty()
    }

    pub fn render(&self, graph: &Graph) -> String {
        let mut text = format!(
            "{} files, {} imports between files: {} circles, {} imports against the floors, \
             {} modules on no floor\n",
            graph.files.len(),
            graph.edges.len(),
            self.circles.len(),
            self.back_up.len(),
            self.unplaced.len()
        );
        for m in &self.unplaced {
            text.push_str(&format!(
                "  on no floor: {m} (add it to a `floor N:` line)\n"
            ));
        }
        for b in &self.back_up {
            text.push_str(&format!("  against the floors: {b}\n"));
        }
        for c in &self.circles {
            text.push_str(&format!("  circle: {c}\n"));
        }
        text
    }
}

// ---------------------------------------------------------------------------------------
// The analysis on small trees, so it is known to fail when it should.

/// A directory under the system temp dir holding the given files, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(files: &[(&str, &str)]) -> Tree {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "layers-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a file has a directory"))
                .expect("create the test tree");
            std::fs::write(&path, text).expect("write the test tree");
        }
        Tree(dir)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const FLOORS: &str =
    "# A\n\n## Layers\n\n```text\nfloor 0: low, leaf  # leaves\nfloor 1: mid\nfloor 3: high\n```\n";

fn analyse(files: &[(&str, &str)]) -> (Graph, Report) {
    let tree = Tree::new(files);
    let graph = Graph::read(&tree.0).expect("the test tree reads");
    let report = graph.check(&parse_floors(FLOORS).expect("the floors parse"));
    (graph, report)
}

#[test]
fn floors_are_read_from_the_layers_block() {
    let floors = parse_floors(FLOORS).expect("parses");
    assert_eq!(floors.0.get("leaf"), Some(&0));
    assert_eq!(floors.0.get("high"), Some(&3));
    assert!(parse_floors("## Layers\n```\nfloor 0: a\nfloor 1: a\n```\n").is_err());
    assert!(parse_floors("no heading").is_err());
}

#[test]
fn two_files_importing_each_other_are_a_circle() {
    let (graph, report) = analyse(&[
        ("lib.rs", "pub mod mid;\n"),
        (
            "mid/mod.rs",
            "mod a;\nmod b;\npub struct Shared;\nfn f() { a::g(); }\n",
        ),
        (
            "mid/a.rs",
            "use super::b::B; // a comment: crate::low::X\npub fn g() {}\n",
        ),
        (
            "mid/b.rs",
            "pub struct B;\nfn h() { let _ = super::a::g; }\n",
        ),
    ]);
    assert_eq!(report.circles.len(), 1, "{}", report.render(&graph));
    let circle = &report.circles[0];
    assert!(
        circle.contains("src/mid/a.rs -[B]-> src/mid/b.rs -[g]-> src/mid/a.rs"),
        "{circle}"
    );
    assert!(report.back_up.is_empty(), "{}", report.render(&graph));
}

#[test]
fn a_child_using_its_parent_that_uses_it_is_a_circle() {
    let (graph, report) = analyse(&[
        ("lib.rs", "pub mod mid;\n"),
        (
            "mid/mod.rs",
            "mod batch;\npub use batch::Tag;\npub struct Config;\nfn f(t: Tag) {}\n",
        ),
        ("mid/batch.rs", "use super::Config;\npub struct Tag;\n"),
    ]);
    assert_eq!(report.circles.len(), 1, "{}", report.render(&graph));
    assert!(
        report.circles[0].contains("[Config]"),
        "{}",
        report.circles[0]
    );
    // Passing a name on without using it is not an import.
    let (graph, report) = analyse(&[
        ("lib.rs", "pub mod mid;\n"),
        (
            "mid/mod.rs",
            "mod batch;\npub use batch::Tag;\npub struct Config;\n",
        ),
        ("mid/batch.rs", "use super::Config;\npub struct Tag;\n"),
    ]);
    assert!(report.is_clean(), "{}", report.render(&graph));
}

#[test]
fn a_low_floor_importing_a_high_one_is_reported() {
    let (graph, report) = analyse(&[
        ("lib.rs", "pub mod low;\npub mod high;\npub mod mid;\n"),
        (
            "low.rs",
            "use crate::{mid::{self, M}, high::inner::Deep as D};\nconst S: &str = \"crate::high::Fake\";\n",
        ),
        ("high/mod.rs", "pub mod inner;\npub use inner::Deep;\n"),
        ("high/inner.rs", "pub struct Deep;\n"),
        ("mid.rs", "pub struct M;\nfn f() { let _ = crate::low::g; }\n"),
    ]);
    let text = report.render(&graph);
    assert!(
        text.contains("src/low.rs (low, floor 0) -> src/high/inner.rs (high, floor 3): Deep"),
        "{text}"
    );
    assert!(
        text.contains("src/low.rs (low, floor 0) -> src/mid.rs (mid, floor 1): M, mid"),
        "{text}"
    );
    assert!(!text.contains("Fake"), "a string is not an import: {text}");
    // mid -> low is down, but together they form a circle.
    assert_eq!(report.back_up.len(), 2, "{text}");
    assert_eq!(report.circles.len(), 1, "{text}");
}

#[test]
fn same_floor_unplaced_and_test_code_are_handled() {
    let (graph, report) = analyse(&[
        (
            "lib.rs",
            "pub mod low;\npub mod leaf;\npub mod stray;\n#[cfg(test)]\nmod tests;\n",
        ),
        (
            "low.rs",
            "pub fn f() { crate::leaf::g() }\n#[cfg(test)]\nmod tests {\n    use crate::stray::S;\n}\n",
        ),
        ("leaf.rs", "pub fn g() {}\n"),
        ("stray.rs", "pub struct S;\n"),
        ("tests.rs", "use crate::stray::S;\n"),
    ]);
    let text = report.render(&graph);
    assert_eq!(report.unplaced, vec!["stray".to_string()], "{text}");
    assert_eq!(report.back_up.len(), 1, "{text}");
    assert!(
        text.contains("src/low.rs (low, floor 0) -> src/leaf.rs (leaf, floor 0): g"),
        "{text}"
    );
    assert_eq!(graph.files.len(), 4, "tests.rs is not read: {text}");
}

#[test]
fn comments_strings_and_chars_hide_nothing_real() {
    let clean: String =
        strip("let a = '\"'; // crate::x\nlet b = r#\"crate::y\"#; /* crate::z */ crate::w")
            .into_iter()
            .collect();
    assert!(
        !clean.contains("crate::x") && !clean.contains("crate::y") && !clean.contains("crate::z"),
        "{clean}"
    );
    assert!(clean.contains("crate::w"), "{clean}");
}
