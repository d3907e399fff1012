//! An access line, written by hand into a byte buffer: no `core::fmt`, no subscriber, no
//! per-field dispatch (through `tracing`'s formatter a line cost about 25,000 instructions
//! under callgrind, most of it formatting machinery and terminal colours).
//!
//! `text` and `json` carry the fields the gateway's `tracing` lines carried (same names, same
//! order, absent fields left out); `combined` is nginx's and Apache's, so that existing log
//! tooling reads it.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// `key=value` after a timestamp, level and target, for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
    /// nginx's and Apache's `combined`.
    Combined,
}

/// What one access line says about a request.
#[derive(Debug)]
pub struct Record<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The client's address (after trusted proxies: the peer).
    pub client: IpAddr,
    /// The request's method.
    pub method: &'a str,
    /// The request's path (its token taken out).
    pub path: &'a str,
    /// The route, if one matched.
    pub route: Option<&'a str>,
    /// The upstream, if the route has one.
    pub upstream: Option<&'a str>,
    /// The status the client got.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// From the request's arrival until the body was sent.
    pub duration: Duration,
    /// Until the backend's response head came.
    pub upstream_time: Option<Duration>,
    /// `none`, `active` or `expired`, on a route with sessions.
    pub session_status: Option<&'a str>,
    /// A short hash of the token (never the token).
    pub session: Option<&'a str>,
    /// The body was sent whole.
    pub complete: bool,
    /// Why the gateway answered itself.
    pub error: Option<&'a str>,
    /// The query (for `combined`).
    pub query: Option<&'a str>,
    /// `HTTP/1.1` or `HTTP/2.0` (for `combined`).
    pub version: &'a str,
    /// The `Referer` (for `combined`; its token taken out).
    pub referer: Option<&'a str>,
    /// The `User-Agent` (for `combined`).
    pub user_agent: Option<&'a str>,
}

/// Appends the line for `r` in `format`, ending in a newline, at `now`.
pub fn write(out: &mut Vec<u8>, format: AccessFormat, r: &Record<'_>, now: SystemTime) {
    match format {
        AccessFormat::Text => text(out, r, now),
        AccessFormat::Json => json(out, r, now),
        AccessFormat::Combined => combined(out, r, now),
    }
    out.push(b'\n');
}

fn text(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    rfc3339(out, now);
    out.extend_from_slice(b"  INFO access:");
    fields(out, r, Style::Text);
}

fn json(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    rfc3339(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\"");
    fields(out, r, Style::Json);
    out.extend_from_slice(b",\"target\":\"access\"}");
}

/// How `text` and `json` write a field: the same fields, in the same order. (Inlined into
/// each format, so that the style is known where each field is written: as a function
/// called per field it cost about 400 instructions a line.)
#[derive(Clone, Copy)]
enum Style {
    /// ` key=value`: strings that `tracing` took by `Display` as they are, the others quoted.
    Text,
    /// `,"key":value`.
    Json,
}

impl Style {
    #[inline(always)]
    fn key(self, out: &mut Vec<u8>, key: &str) {
        match self {
            Style::Text => {
                out.push(b' ');
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
            }
            Style::Json => {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
            }
        }
    }

    /// A string: in JSON always a JSON string; in text written by `in_text` ([`plain`] for
    /// what `tracing` took by `Display`, [`quoted`] for a `&str` field).
    #[inline(always)]
    fn string(self, out: &mut Vec<u8>, key: &str, value: &str, in_text: fn(&mut Vec<u8>, &str)) {
        self.key(out, key);
        match self {
            Style::Text => in_text(out, value),
            Style::Json => json_str(out, value),
        }
    }

    /// A number, a boolean or milliseconds: the same in both.
    #[inline(always)]
    fn raw(self, out: &mut Vec<u8>, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        self.key(out, key);
        value(out);
    }
}

/// The fields of a `text` or `json` line, in the order the `tracing` lines had them; an
/// absent one is left out.
#[inline(always)]
fn fields(out: &mut Vec<u8>, r: &Record<'_>, s: Style) {
    s.string(out, "listener", r.listener, plain);
    // An address needs no escaping: text writes it bare, JSON in quotes.
    s.raw(out, "client", |o| match s {
        Style::Text => ip(o, r.client),
        Style::Json => {
            o.push(b'"');
            ip(o, r.client);
            o.push(b'"');
        }
    });
    s.string(out, "method", r.method, plain);
    s.string(out, "path", r.path, plain);
    s.string(out, "route", r.route.unwrap_or("-"), quoted);
    s.string(out, "upstream", r.upstream.unwrap_or("-"), quoted);
    s.raw(out, "status", |o| uint(o, u64::from(r.status)));
    s.raw(out, "bytes", |o| uint(o, r.bytes));
    s.raw(out, "duration_ms", |o| millis(o, r.duration));
    if let Some(t) = r.upstream_time {
        s.raw(out, "upstream_ms", |o| millis(o, t));
    }
    if let Some(v) = r.session_status {
        s.string(out, "session_status", v, quoted);
    }
    if let Some(v) = r.session {
        s.string(out, "session", v, quoted);
    }
    s.raw(out, "complete", |o| {
        o.extend_from_slice(if r.complete { b"true" } else { b"false" });
    });
    if let Some(e) = r.error {
        s.string(out, "error", e, quoted);
    }
}

/// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"`, the request and headers escaped as nginx does (`\xHH`).
fn combined(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    ip(out, r.client);
    out.extend_from_slice(b" - - [");
    clf_time(out, now);
    out.extend_from_slice(b"] \"");
    escaped(out, r.method);
    out.push(b' ');
    escaped(out, r.path);
    if let Some(q) = r.query {
        out.push(b'?');
        escaped(out, q);
    }
    out.push(b' ');
    escaped(out, r.version);
    out.extend_from_slice(b"\" ");
    uint(out, u64::from(r.status));
    out.push(b' ');
    uint(out, r.bytes);
    out.extend_from_slice(b" \"");
    escaped(out, r.referer.unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    escaped(out, r.user_agent.unwrap_or("-"));
    out.push(b'"');
}

/// A decimal number.
fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with at most two decimals, written as `f64`'s shortest form would be
/// (`1.61`, `1.6`, `1.0`), as the `tracing` lines had them.
fn millis(out: &mut Vec<u8>, d: Duration) {
    // In u64 (a u128 division is a library call): whole seconds, then the rest.
    let hundredths = d
        .as_secs()
        .saturating_mul(100_000)
        .saturating_add((u64::from(d.subsec_nanos()) + 5_000) / 10_000);
    uint(out, hundredths / 100);
    out.push(b'.');
    let frac = hundredths % 100;
    out.push(b'0' + (frac / 10) as u8);
    if !frac.is_multiple_of(10) {
        out.push(b'0' + (frac % 10) as u8);
    }
}

fn two(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + ((n / 10) % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// A civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Seconds since the epoch, split into a civil date and time.
fn parts(secs: u64) -> ((i64, u64, u64), (u64, u64, u64)) {
    let day = i64::try_from(secs / 86_400).unwrap_or(0);
    let in_day = secs % 86_400;
    (civil(day), (in_day / 3600, (in_day / 60) % 60, in_day % 60))
}

/// The parts of a line's time that change once a second, written once a second per thread
/// (as nginx caches its time strings): `2026-12-07T05:10:00` and `07/Dec/2026:05:10:00 +0000`.
struct Second {
    secs: u64,
    rfc3339: Vec<u8>,
    clf: Vec<u8>,
}

thread_local! {
    static SECOND: std::cell::RefCell<Second> = const {
        std::cell::RefCell::new(Second { secs: u64::MAX, rfc3339: Vec::new(), clf: Vec::new() })
    };
}

/// Calls `f` with the second of `now`, written.
fn with_second(now: SystemTime, f: impl FnOnce(&Second, u32)) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    let mut f = Some(f);
    let _ = SECOND.try_with(|cell| {
        let Ok(mut second) = cell.try_borrow_mut() else {
            return;
        };
        if second.secs != secs {
            *second = Second::of(secs);
        }
        if let Some(f) = f.take() {
            f(&second, micros);
        }
    });
    // Written afresh where the thread's cache is gone or in use.
    if let Some(f) = f {
        f(&Second::of(secs), micros);
    }
}

impl Second {
    fn of(secs: u64) -> Second {
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let ((y, m, d), hms) = parts(secs);
        let year = u64::try_from(y).unwrap_or(0);
        let mut rfc3339 = Vec::with_capacity(20);
        uint(&mut rfc3339, year);
        rfc3339.push(b'-');
        two(&mut rfc3339, m);
        rfc3339.push(b'-');
        two(&mut rfc3339, d);
        rfc3339.push(b'T');
        clock(&mut rfc3339, hms);
        let mut clf = Vec::with_capacity(27);
        two(&mut clf, d);
        clf.push(b'/');
        clf.extend_from_slice(MONTHS[usize::try_from(m - 1).unwrap_or(0) % 12]);
        clf.push(b'/');
        uint(&mut clf, year);
        clf.push(b':');
        clock(&mut clf, hms);
        clf.extend_from_slice(b" +0000");
        Second { secs, rfc3339, clf }
    }
}

/// `2026-12-07T05:10:00.123456Z`.
fn rfc3339(out: &mut Vec<u8>, now: SystemTime) {
    with_second(now, |second, micros| {
        out.extend_from_slice(&second.rfc3339);
        let mut digits = *b".000000Z";
        let mut n = micros;
        for slot in digits[1..7].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
    });
}

/// `07/Dec/2026:05:10:00 +0000`.
fn clf_time(out: &mut Vec<u8>, now: SystemTime) {
    with_second(now, |second, _| out.extend_from_slice(&second.clf));
}

/// `HH:MM:SS`.
fn clock(out: &mut Vec<u8>, (h, min, s): (u64, u64, u64)) {
    two(out, h);
    out.push(b':');
    two(out, min);
    out.push(b':');
    two(out, s);
}

fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, u64::from(*o));
            }
        }
        // Rare enough for the general formatter.
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Appends `s`, each byte that `special` picks written by `escape` instead: the runs between
/// them are copied whole (most values have no such byte at all).
#[inline(always)]
fn escaping(
    out: &mut Vec<u8>,
    s: &str,
    special: impl Fn(u8) -> bool,
    escape: impl Fn(&mut Vec<u8>, u8),
) {
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if special(b) {
            out.extend_from_slice(&bytes[from..i]);
            escape(out, b);
            from = i + 1;
        }
    }
    out.extend_from_slice(&bytes[from..]);
}

/// A value as `tracing` wrote a `Display` field: as it is, control characters escaped.
fn plain(out: &mut Vec<u8>, s: &str) {
    escaping(out, s, |b| b < 0x20 || b == 0x7f, hex_escape);
}

/// Rust's `Debug` escapes of the common characters; others as `\xHH`.
fn debug_escape(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        b => hex_escape(out, b),
    }
}

/// A value as `tracing` wrote a `&str` field: in double quotes, escaped as Rust's `Debug`
/// escapes the common characters.
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaping(
        out,
        s,
        |b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f,
        debug_escape,
    );
    out.push(b'"');
}

/// A JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaping(
        out,
        s,
        |b| b == b'"' || b == b'\\' || b < 0x20,
        // As `Debug` escapes them, but other control characters as `\u00HH`.
        |out, b| {
            if b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t') {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            } else {
                debug_escape(out, b);
            }
        },
    );
    out.push(b'"');
}

/// A value inside a `combined` quoted field: `"`, `\`, control and non-ASCII bytes as
/// `\xHH`, as nginx writes them.
fn escaped(out: &mut Vec<u8>, s: &str) {
    escaping(
        out,
        s,
        |b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b),
        hex_escape,
    );
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_escape(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(b"\\x");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 15)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            listener: "web",
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            path: "/cart",
            route: Some("app"),
            upstream: Some("app"),
            status: 200,
            bytes: 1365,
            duration: Duration::from_micros(1_614),
            upstream_time: Some(Duration::from_micros(1_010)),
            session_status: Some("active"),
            session: Some("tok:83355abd"),
            complete: true,
            error: None,
            query: Some("item=7"),
            version: "HTTP/1.1",
            referer: Some("https://shop.example/"),
            user_agent: Some("curl/8 \"quoted\""),
        }
    }

    fn line(format: AccessFormat, r: &Record<'_>) -> String {
        let mut out = Vec::new();
        // 2025-11-29T15:39:05.533030Z
        let at = UNIX_EPOCH + Duration::from_micros(1_764_430_745_533_030);
        write(&mut out, format, r, at);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_json_line_parses_and_carries_the_fields_the_tracing_lines_had() {
        let text = line(AccessFormat::Json, &record());
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["timestamp"], "2025-11-29T15:39:05.533030Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1365);
        assert_eq!(v["duration_ms"], 1.61);
        assert_eq!(v["upstream_ms"], 1.01);
        assert_eq!(v["session"], "tok:83355abd");
        assert_eq!(v["complete"], true);
        assert!(v.get("error").is_none());
        let mut r = record();
        r.error = Some("a \"quoted\"\nerror");
        r.path = "/\u{1}";
        let v: serde_json::Value =
            serde_json::from_str(line(AccessFormat::Json, &r).trim_end()).unwrap();
        assert_eq!(v["error"], "a \"quoted\"\nerror");
        assert_eq!(v["path"], "/\u{1}");
    }

    #[test]
    fn a_text_line_reads_as_the_tracing_lines_did() {
        assert_eq!(
            line(AccessFormat::Text, &record()),
            "2025-11-29T15:39:05.533030Z  INFO access: listener=web client=127.0.0.1 method=GET path=/cart route=\"app\" upstream=\"app\" status=200 bytes=1365 duration_ms=1.61 upstream_ms=1.01 session_status=\"active\" session=\"tok:83355abd\" complete=true\n"
        );
    }

    #[test]
    fn a_combined_line_is_nginxs_with_its_escapes() {
        assert_eq!(
            line(AccessFormat::Combined, &record()),
            "127.0.0.1 - - [29/Nov/2025:15:39:05 +0000] \"GET /cart?item=7 HTTP/1.1\" 200 1365 \"https://shop.example/\" \"curl/8 \\x22quoted\\x22\"\n"
        );
    }

    #[test]
    fn milliseconds_are_written_in_their_shortest_form() {
        for (micros, want) in [
            (1_614, "1.61"),
            (1_600, "1.6"),
            (1_000, "1.0"),
            (4, "0.0"),
            (12_345_678, "12345.68"),
        ] {
            let mut out = Vec::new();
            millis(&mut out, Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), want, "{micros}");
        }
    }

    #[test]
    fn each_line_has_its_own_time_when_the_second_changes_between_lines() {
        let at = |micros: u64| {
            let mut out = Vec::new();
            write(
                &mut out,
                AccessFormat::Combined,
                &record(),
                UNIX_EPOCH + Duration::from_micros(micros),
            );
            let mut rfc = Vec::new();
            rfc3339(&mut rfc, UNIX_EPOCH + Duration::from_micros(micros));
            (
                String::from_utf8(out).unwrap(),
                String::from_utf8(rfc).unwrap(),
            )
        };
        // Within a second, across a second, across a day and a year, and back again.
        for (micros, clf, rfc) in [
            (
                1_764_430_745_533_030,
                "[29/Nov/2025:15:39:05 +0000]",
                "2025-11-29T15:39:05.533030Z",
            ),
            (
                1_764_430_745_999_999,
                "[29/Nov/2025:15:39:05 +0000]",
                "2025-11-29T15:39:05.999999Z",
            ),
            (
                1_764_430_746_000_001,
                "[29/Nov/2025:15:39:06 +0000]",
                "2025-11-29T15:39:06.000001Z",
            ),
            (
                1_767_225_599_000_000,
                "[31/Dec/2025:23:59:59 +0000]",
                "2025-12-31T23:59:59.000000Z",
            ),
            (
                1_767_225_600_000_000,
                "[01/Jan/2026:00:00:00 +0000]",
                "2026-01-01T00:00:00.000000Z",
            ),
            (
                1_764_430_745_533_030,
                "[29/Nov/2025:15:39:05 +0000]",
                "2025-11-29T15:39:05.533030Z",
            ),
        ] {
            let (line, time) = at(micros);
            assert!(line.contains(clf), "{line}");
            assert_eq!(time, rfc);
        }
    }

    #[test]
    fn no_byte_a_client_sends_can_break_a_line_or_forge_a_field() {
        // Every ASCII byte, and non-ASCII text, in the path, the Referer and the User-Agent.
        let every: String = (1u8..=0x7f)
            .map(char::from)
            .chain("é\u{2028}".chars())
            .collect();
        let mut r = record();
        r.path = &every;
        r.referer = Some(&every);
        r.user_agent = Some(&every);
        r.error = Some(&every);
        for format in [
            AccessFormat::Text,
            AccessFormat::Json,
            AccessFormat::Combined,
        ] {
            let line = line(format, &r);
            let body = line.strip_suffix('\n').unwrap();
            // (JSON may carry DEL as it is, as serde_json writes it; no C0 byte anywhere.)
            assert!(
                !body
                    .bytes()
                    .any(|b| b < 0x20 || (b == 0x7f && format != AccessFormat::Json)),
                "{format:?}: a control byte is written raw: {body:?}"
            );
            if format == AccessFormat::Combined {
                // nginx's escapes: printable ASCII only, and `"` only around the fields.
                assert!(body.is_ascii(), "{body}");
                assert_eq!(body.matches('"').count(), 6, "{body}");
            }
            if format == AccessFormat::Json {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["path"], every.as_str());
                assert_eq!(v["error"], every.as_str());
            }
        }
    }

    #[test]
    fn dates_are_civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_454), (2026, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }
}
