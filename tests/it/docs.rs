//! The documentation holds together: every relative link in README.md, docs/,
//! ARCHITECTURE.md and BENCHMARKS.md leads to a file that exists and, with a
//! `#anchor`, to a heading of it (GitHub's slugs); every docs/ page can be
//! reached from the README; and the README stays a door, not a manual.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::{files_with_suffix, read, repo_root};

/// The README's size cap: past it, move the new text to a docs/ page.
const README_MAX_BYTES: usize = 15_000;

/// The pages checked, by path relative to the repository root.
fn pages() -> BTreeMap<String, String> {
    let mut pages = BTreeMap::new();
    for name in ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"] {
        pages.insert(name.to_string(), read(&repo_root().join(name)));
    }
    for path in files_with_suffix("docs", ".md") {
        let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        pages.insert(name, read(&path));
    }
    pages
}

/// GitHub's anchor for a heading's text: lowercased, spaces become `-`,
/// everything but letters, digits, `-` and `_` dropped (backticks, `:`,
/// `?`, `'`, parentheses...).
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

/// The lines outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`...
/// as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` of a page, outside code
/// (fenced blocks and `inline spans`).
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Drop inline code spans: the odd backtick-separated pieces.
        let line: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].trim();
            // `[x](<path> "title")`: the path alone.
            let target = target.split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(['<', '>']).to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// `dir/../x/./y` as `x/y`; None when it climbs out of the repository.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// What a link checker finds: each dead link as `page: target (why)`, and
/// the pages reached from `start` by following links between pages.
fn check(
    pages: &BTreeMap<String, String>,
    start: &str,
    exists: impl Fn(&str) -> bool,
) -> (Vec<String>, BTreeSet<String>) {
    let anchors: BTreeMap<&str, BTreeSet<String>> = pages
        .iter()
        .map(|(p, t)| (p.as_str(), anchors(t)))
        .collect();
    let mut dead = Vec::new();
    let mut edges: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (page, text) in pages {
        let dir = page.rsplit_once('/').map_or("", |(d, _)| d);
        for target in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                Some(page.clone())
            } else {
                normalize(&format!("{dir}/{path}"))
            };
            let Some(resolved) = resolved else {
                dead.push(format!("{page}: {target} (outside the repository)"));
                continue;
            };
            if !pages.contains_key(&resolved) && !exists(&resolved) {
                dead.push(format!("{page}: {target} (no file {resolved})"));
                continue;
            }
            if let Some(anchor) = anchor {
                match anchors.get(resolved.as_str()) {
                    Some(known) if known.contains(anchor) => {}
                    Some(_) => dead.push(format!(
                        "{page}: {target} (no heading #{anchor} in {resolved})"
                    )),
                    None => dead.push(format!(
                        "{page}: {target} (an anchor into {resolved}, which is not a checked page)"
                    )),
                }
            }
            edges.entry(page.as_str()).or_default().push(resolved);
        }
    }
    let mut reached = BTreeSet::from([start.to_string()]);
    let mut queue = VecDeque::from([start.to_string()]);
    while let Some(page) = queue.pop_front() {
        for next in edges.get(page.as_str()).into_iter().flatten() {
            if pages.contains_key(next) && reached.insert(next.clone()) {
                queue.push_back(next.clone());
            }
        }
    }
    (dead, reached)
}

#[test]
fn no_relative_link_is_dead() {
    let pages = pages();
    assert!(pages.keys().filter(|p| p.starts_with("docs/")).count() >= 5);
    let (dead, _) = check(&pages, "README.md", |p| repo_root().join(p).exists());
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}

#[test]
fn every_docs_page_is_reachable_from_the_readme() {
    let pages = pages();
    let (_, reached) = check(&pages, "README.md", |p| repo_root().join(p).exists());
    let unreached: Vec<&String> = pages
        .keys()
        .filter(|p| p.starts_with("docs/") && !reached.contains(*p))
        .collect();
    assert!(
        unreached.is_empty(),
        "docs/ pages no link from README.md leads to: {unreached:?}"
    );
}

#[test]
fn the_readme_is_a_door() {
    let size = pages()["README.md"].len();
    assert!(
        size < README_MAX_BYTES,
        "README.md is {size} bytes (cap {README_MAX_BYTES}): move detail to a docs/ page and link it"
    );
}

/// A page says what it covers and links back, in the paragraph under its title.
#[test]
fn every_docs_page_links_back_to_the_readme() {
    let pages = pages();
    let lost: Vec<&String> = pages
        .iter()
        .filter(|(p, text)| {
            let first = text.split("\n\n").nth(1).unwrap_or("");
            p.starts_with("docs/") && !first.contains("](../README.md)")
        })
        .map(|(p, _)| p)
        .collect();
    assert!(
        lost.is_empty(),
        "docs/ pages whose first paragraph has no link back to the README: {lost:?}"
    );
}

/// The checker itself finds what it must, on pages made up for it.
#[test]
fn the_link_checker_finds_dead_links_and_unreached_pages() {
    assert_eq!(
        slug(" OTLP: Datadog and OpenTelemetry"),
        "otlp-datadog-and-opentelemetry"
    );
    assert_eq!(
        slug("The process (no `workspace` label)"),
        "the-process-no-workspace-label"
    );
    assert_eq!(
        slug("Straight to Datadog's OTLP intake"),
        "straight-to-datadogs-otlp-intake"
    );
    assert_eq!(
        slug("Breakdowns: where is it unhealthy?"),
        "breakdowns-where-is-it-unhealthy"
    );
    assert_eq!(slug("Is it working?"), "is-it-working");
    assert_eq!(
        slug("clawmesh_up, `--api.max-pages`"),
        "clawmesh_up---apimax-pages"
    );

    let pages: BTreeMap<String, String> = [
        (
            "README.md",
            "# Top\n\n[ok](docs/a.md#two-words) [ok too](docs/a.md#two-words-1)\n\
             [dir](deploy/) [here](#top) `[code](docs/nowhere.md)`\n\
             ```\n[fenced](docs/nowhere.md)\n```\n\
             [gone](docs/gone.md) [bad anchor](docs/a.md#three) [out](../x.md)\n\
             [web](https://example.com/x.md) [self bad](#nothing)\n",
        ),
        (
            "docs/a.md",
            "# A\n\n## Two words\n\n## Two words\n\n[back](../README.md) [c](c.md)\n",
        ),
        ("docs/b.md", "# Not linked from anywhere\n"),
        (
            "docs/c.md",
            "# C\n\n[anchor into a file](../deploy/x.yml#top)\n",
        ),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.to_string()))
    .collect();
    let (dead, reached) = check(&pages, "README.md", |p| {
        p == "deploy" || p == "deploy/x.yml"
    });
    assert_eq!(
        dead,
        [
            "README.md: docs/gone.md (no file docs/gone.md)",
            "README.md: docs/a.md#three (no heading #three in docs/a.md)",
            "README.md: ../x.md (outside the repository)",
            "README.md: #nothing (no heading #nothing in README.md)",
            "docs/c.md: ../deploy/x.yml#top (an anchor into deploy/x.yml, which is not a checked page)",
        ]
    );
    assert_eq!(
        reached.into_iter().collect::<Vec<_>>(),
        ["README.md", "docs/a.md", "docs/c.md"],
        "docs/b.md is linked from nowhere"
    );
}
