//! Which format and encoding a scrape gets, from its `Accept` and
//! `Accept-Encoding` headers, as Prometheus' own clients negotiate:
//! protobuf, OpenMetrics or the text format by the media ranges' weights
//! (`q=`), the text format for anything else (curl, `*/*`, a header that
//! names nothing we speak or cannot be read). A scrape is never refused
//! for its `Accept`.
//!
//! The headers are the client's: at most [`MAX_RANGES`] media ranges are
//! looked at, each `q` must be a valid weight (else the range is ignored),
//! and nothing here allocates per range, so a 64 KiB header of thousands
//! of ranges costs a bounded scan (the server caps the header's size).

use crate::expose::Format;
use axum::http::{header, HeaderMap};

/// Media ranges read from `Accept` (over all its header lines); the rest
/// are ignored. Prometheus sends four.
pub const MAX_RANGES: usize = 64;

/// The format to answer `headers` with.
pub fn format(headers: &HeaderMap) -> Format {
    let mut best: Option<(u16, Format)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_RANGES);
    for range in ranges {
        let Some((format, q)) = media_range(range) else {
            continue;
        };
        // The first of the highest weight wins.
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, f)| f)
}

/// One media range: the format it names (if we speak it) and its weight in
/// thousandths; `None` for one we do not speak or whose `q` is not a
/// weight.
fn media_range(range: &str) -> Option<(Format, u16)> {
    let mut parts = range.split(';');
    let media = parts.next()?.trim();
    let (kind, sub) = media.split_once('/')?;
    let (kind, sub) = (kind.trim(), sub.trim());
    let mut q = 1000;
    let (mut proto, mut encoding, mut version) = (None, None, None);
    for p in parts {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "q" => q = weight(value)?,
            "proto" => proto = Some(value),
            "encoding" => encoding = Some(value),
            "version" => version = Some(value),
            _ => {}
        }
    }
    let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let format = if is(kind, "application") && is(sub, "vnd.google.protobuf") {
        // Only the delimited MetricFamily stream is what we write.
        (proto == Some("io.prometheus.client.MetricFamily") && encoding == Some("delimited"))
            .then_some(Format::Protobuf)?
    } else if is(kind, "application") && is(sub, "openmetrics-text") {
        // 0.0.1 and 1.0.0 are the same text for what we write.
        matches!(version, None | Some("1.0.0") | Some("0.0.1")).then_some(Format::OpenMetrics)?
    } else if is(kind, "text") && is(sub, "plain") {
        matches!(version, None | Some("0.0.4")).then_some(Format::Text)?
    } else if sub == "*" && (kind == "*" || is(kind, "text")) {
        Format::Text
    } else {
        return None;
    };
    Some((format, q))
}

/// An HTTP weight (`0`, `0.5`, `1.000`: at most three decimals, at most 1)
/// in thousandths; `None` for anything else.
fn weight(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |a, b| a * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(frac_thousandths),
        "1" if frac_thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `Accept-Encoding` takes gzip: names it with a non-zero weight, or, when
/// it does not name gzip, names `*` with one (RFC 9110 12.5.3: `*` is any
/// coding not listed, so `gzip;q=0, *` refuses gzip).
pub fn gzip(headers: &HeaderMap) -> bool {
    // The weight of the last `gzip` and of the last `*`, if named.
    let (mut named, mut any) = (None, None);
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_RANGES)
    {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        // A weight that is not one refuses, as `q=0` does.
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1000), |(_, v)| weight(v.trim()))
            .unwrap_or(0);
        if coding.eq_ignore_ascii_case("gzip") {
            named = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    named.or(any).is_some_and(|q| q > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(v: &str) -> Format {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        format(&m)
    }

    fn enc(v: &str) -> bool {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        gzip(&m)
    }

    /// The headers Prometheus sends, by version and settings.
    #[test]
    fn prometheus_gets_what_it_asks_for_first() {
        // 2.42 with --enable-feature=native-histograms.
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
            Format::Protobuf
        );
        // 2.42 without it.
        assert_eq!(
            accept("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics
        );
        // 3.x default scrape_protocols, with UTF-8 escaping parameters.
        assert_eq!(
            accept("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"),
            Format::OpenMetrics
        );
        // scrape_protocols: [PrometheusText0.0.4].
        assert_eq!(
            accept("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
            Format::Text
        );
    }

    #[test]
    fn weights_decide_and_the_first_of_equals_wins() {
        assert_eq!(
            accept("text/plain;q=0.9, application/openmetrics-text;q=0.95"),
            Format::OpenMetrics
        );
        assert_eq!(
            accept("application/openmetrics-text, text/plain"),
            Format::OpenMetrics
        );
        assert_eq!(
            accept("text/plain, application/openmetrics-text"),
            Format::Text
        );
        // q=0 refuses a format.
        assert_eq!(accept("application/openmetrics-text;q=0"), Format::Text);
        // Protobuf of another message, or not delimited, is not ours.
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=other.Message;encoding=delimited"),
            Format::Text
        );
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"),
            Format::Text
        );
        // A version we do not write is not ours.
        assert_eq!(
            accept("application/openmetrics-text;version=2.0.0"),
            Format::Text
        );
        assert_eq!(
            accept("APPLICATION/OpenMetrics-Text; Version=\"1.0.0\""),
            Format::OpenMetrics
        );
    }

    #[test]
    fn anything_else_gets_text() {
        for v in [
            "",
            "*/*",
            "text/html",
            "garbage",
            ";;;,,,",
            "application/openmetrics-text;q=abc",
            "application/openmetrics-text;q=1.5",
            "application/openmetrics-text;q=-1",
            "application/openmetrics-text;q=0.0001",
            "application/openmetrics-text;q=NaN",
            "application/openmetrics-text;q=1e3",
        ] {
            assert_eq!(accept(v), Format::Text, "{v:?}");
        }
        assert_eq!(format(&HeaderMap::new()), Format::Text);
    }

    #[test]
    fn only_the_first_ranges_are_read() {
        let mut many = vec!["text/html"; MAX_RANGES];
        many.push("application/openmetrics-text");
        assert_eq!(accept(&many.join(",")), Format::Text);
        many.remove(0);
        assert_eq!(accept(&many.join(",")), Format::OpenMetrics);
    }

    #[test]
    fn weights_parse_as_http_defines_them() {
        for (v, w) in [
            ("0", 0),
            ("0.5", 500),
            ("0.125", 125),
            ("1", 1000),
            ("1.000", 1000),
            ("0.", 0),
        ] {
            assert_eq!(weight(v), Some(w), "{v}");
        }
        for v in ["1.001", "2", "0.1234", "-0", "", ".5", "0x1", "0.5 "] {
            assert_eq!(weight(v), None, "{v:?}");
        }
    }

    #[test]
    fn gzip_negotiation() {
        assert!(enc("gzip"));
        assert!(enc("deflate, gzip;q=0.5"));
        assert!(enc("*"));
        assert!(enc("GZIP"));
        assert!(!enc("gzip;q=0"));
        assert!(!enc("gzip;q=0.0"));
        assert!(!enc("gzip;q=bogus"));
        assert!(!enc("identity"));
        assert!(!gzip(&HeaderMap::new()));
    }

    /// `*` is any coding the header does not name: it does not undo an
    /// explicit `gzip;q=0`; a weight's name is case-insensitive.
    #[test]
    fn an_explicit_gzip_refusal_is_not_undone_by_a_star() {
        assert!(!enc("gzip;q=0, *"));
        assert!(!enc("*, gzip;q=0"));
        assert!(!enc("gzip;Q=0"));
        assert!(!enc("gzip; q = 0"));
        assert!(!enc("*;q=0"));
        assert!(!enc("br, *;q=0"));
        assert!(enc("gzip;q=0.1, *;q=0"));
        assert!(enc("br;q=1, *;q=0.5"));
    }
}
