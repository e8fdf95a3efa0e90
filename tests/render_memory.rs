//! What rendering /metrics holds at the breakdowns' default caps:
//! `--breakdown.provider --breakdown.model --breakdown.agent-labels team,env`
//! with every combination cap reached (2,000 task slices and 2,000 agent
//! groups, plus their `other`), each slice with every known status and
//! failure code and both duration histograms. A render must hold little
//! besides the gzip it keeps: a tree of every series (what the
//! `prometheus` crate's encoder takes) held several times the text, and
//! the text itself is about twenty times the gzip.
//!
//! Its own test binary because it counts allocations with a global
//! allocator (per thread, so other tests' threads do not count).
//! `cargo test --release --test render_memory -- --nocapture` prints the
//! figures BENCHMARKS.md quotes.

use clawmesh_exporter::api::types::Timestamp;
use clawmesh_exporter::expose::{render, Exposition, Format, Options};
use clawmesh_exporter::fleet::{
    AgentGroup, Counters, Fleet, Health, Snapshot, TaskGroup, AGENT_STATUSES,
};
use clawmesh_exporter::metrics::ProcessInfo;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + n;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counting only reads the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        shrank(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The default caps' worst case: every combination taken, labels of
/// `value_len` bytes (the sanitised values are at most 128).
fn at_the_caps(value_len: usize) -> Snapshot {
    let t = Timestamp::from_micros(1_800_000_000_000_000);
    let mut snap = Fleet::new(t).snapshot("ws_caps", t, Health::default(), Default::default());
    snap.dims = ["provider", "model", "team", "env"]
        .map(String::from)
        .to_vec();
    let value = |what: &str, i: usize| {
        let v = format!("{what}-{i:02}");
        format!("{v}{}", "x".repeat(value_len.saturating_sub(v.len())))
    };
    // 2,000 combinations (4 providers and models, 50 teams, 10 of 50 envs)
    // and the one every later combination counts in.
    let mut by: Vec<Vec<String>> = (0..2000)
        .map(|i| {
            vec![
                value("provider", i % 4),
                value("model", i % 4),
                value("team", i / 4 % 50),
                value("env", i / 200),
            ]
        })
        .collect();
    by.push(vec!["other".to_string(); 4]);
    snap.agent_groups = by
        .iter()
        .map(|b| AgentGroup {
            by: b.clone(),
            statuses: AGENT_STATUSES.iter().map(|s| (s.to_string(), 3)).collect(),
            silent: ["idle", "busy"]
                .iter()
                .map(|s| (s.to_string(), 1))
                .collect(),
        })
        .collect();
    snap.task_groups = by
        .iter()
        .map(|b| {
            let mut counters = Counters::default();
            for v in [0.05, 0.3, 2.0, 40.0, 700.0, 9000.0] {
                counters.queue_seconds.observe(v);
                counters.run_seconds.observe(v);
            }
            counters.input_tokens = 123_456_789;
            counters.output_tokens = 12_345_678;
            TaskGroup {
                by: b.clone(),
                counters,
                open: ["pending", "running"]
                    .iter()
                    .map(|s| (s.to_string(), 2))
                    .collect(),
            }
        })
        .collect();
    snap
}

/// Renders `snap` as the hub does and returns it with the most the render
/// held at once besides the exposition it returned.
fn render_held(format: Format, snap: &Snapshot) -> (Exposition, usize) {
    let process = ProcessInfo::default();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let e = Exposition::render(
        format,
        &Options::default(),
        &process,
        std::slice::from_ref(snap),
        0,
        false,
    );
    let peak = PEAK.with(Cell::get) - base;
    (e.clone(), peak.saturating_sub(e.gzip.len()))
}

#[test]
fn rendering_at_the_breakdown_caps_holds_little_besides_the_gzip() {
    for value_len in [8, 128] {
        let snap = at_the_caps(value_len);
        let series = render(&ProcessInfo::default(), std::slice::from_ref(&snap))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        assert!(series > 100_000, "not at the caps: {series} series");
        for format in Format::ALL {
            let (e, held) = render_held(format, &snap);
            println!(
                "{format:?}, values of {value_len} bytes: {series} series, {} bytes of body, {} gzipped, {held} bytes held besides the gzip while rendering",
                e.text_len,
                e.gzip.len(),
            );
            // The gzip stream's state and one family's samples at a time
            // (protobuf: one family's encoded body, which its length must
            // precede); the body is never held whole (a tenth of it here,
            // in the smallest case).
            assert!(
                held < 4 << 20,
                "a {format:?} render of {} bytes held {held} bytes besides the gzip",
                e.text_len
            );
        }
    }
}

/// For a scraper without gzip the hub keeps the bytes as they are until
/// the next render: the body and nothing more. The buffer they are written
/// into grows by doubling, and `Bytes` keeps a `Vec`'s spare capacity, so
/// unshrunk it held up to twice the body (134 MB for a 72 MB text).
#[test]
fn the_bytes_kept_for_a_scraper_without_gzip_are_the_body_and_no_more() {
    let snap = at_the_caps(128);
    for format in Format::ALL {
        let base = LIVE.with(Cell::get);
        // Past the default --web.max-plain-size: the cap raised to keep it.
        let options = Options {
            plain_max: usize::MAX,
            ..Options::default()
        };
        let e = Exposition::render(
            format,
            &options,
            &ProcessInfo::default(),
            std::slice::from_ref(&snap),
            0,
            true,
        );
        let kept = LIVE.with(Cell::get) - base;
        let body = e.identity.as_ref().map_or(0, |b| b.len());
        assert_eq!(body, e.text_len, "{format:?}");
        assert!(
            kept <= body + e.gzip.len() + (1 << 20),
            "a {format:?} render kept {kept} bytes for a body of {body} and a gzip of {}",
            e.gzip.len()
        );
        // At the default cap, nothing but the gzip is kept.
        let base = LIVE.with(Cell::get);
        let e = Exposition::render(
            format,
            &Options::default(),
            &ProcessInfo::default(),
            std::slice::from_ref(&snap),
            0,
            true,
        );
        let kept = LIVE.with(Cell::get) - base;
        assert!(
            e.identity.is_none(),
            "{format:?}: a body of {} kept",
            e.text_len
        );
        assert!(kept <= e.gzip.len() + (1 << 20), "{format:?}: {kept} kept");
    }
}

/// Exemplars at the caps, the worst case: every bucket of both duration
/// histograms of every slice holding one, with ids at the OpenMetrics
/// limit (121 characters). docs/formats.md states their cost per slice.
#[test]
fn exemplars_at_the_caps_cost_what_the_docs_say() {
    use clawmesh_exporter::histogram::{Exemplar, EXEMPLAR_LABEL, EXEMPLAR_MAX_LABEL_CHARS};
    let mut snap = at_the_caps(8);
    let slices = snap.task_groups.len();
    let id = "t".repeat(EXEMPLAR_MAX_LABEL_CHARS - EXEMPLAR_LABEL.len());
    let bounds = snap.task_groups[0].counters.run_seconds.bounds();
    // A value in every bucket, +Inf included.
    let values: Vec<f64> = bounds.iter().copied().chain([f64::MAX / 4.0]).collect();
    let base = LIVE.with(Cell::get);
    for g in &mut snap.task_groups {
        for v in &values {
            let e = Exemplar::new(&id, *v, 1.8e9).unwrap();
            g.counters.queue_seconds.observe_as(*v, Some(&e));
            g.counters.run_seconds.observe_as(*v, Some(&e));
        }
        g.counters.last_failed.0 = Exemplar::new(&id, 1.0, 1.8e9);
    }
    let per_slice = (LIVE.with(Cell::get) - base) / slices;
    println!("exemplars at the caps: {per_slice} bytes a slice, {slices} slices");
    assert!(
        per_slice <= 5_632,
        "exemplars cost {per_slice} bytes a slice, docs/formats.md says at most 5.5 KB"
    );
    // Every bucket shows its exemplar.
    assert_eq!(
        snap.task_groups[0].counters.run_seconds.exemplars().count(),
        values.len()
    );
}
