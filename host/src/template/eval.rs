//! Template evaluation: each [`Expr`] appends its raw value to the output buffer; JSON escaping
//! and case mapping rewrite the buffer's tail in place. Nothing here allocates beyond growing
//! that buffer.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Expr, TemplateInput};

/// Appends the raw value of `expr` to `out`.
pub(super) fn eval<I: TemplateInput + ?Sized>(expr: &Expr, input: &I, out: &mut Vec<u8>) {
    match expr {
        Expr::Lit(s) => out.extend_from_slice(s.as_bytes()),
        Expr::ClientIp => input.write_client_ip(out),
        Expr::Method => out.extend_from_slice(input.method()),
        Expr::Path => out.extend_from_slice(input.path()),
        Expr::Host => out.extend_from_slice(input.host()),
        Expr::QueryString => out.extend_from_slice(input.query_string()),
        Expr::Header(name) => {
            if let Some(v) = input.header(name) {
                out.extend_from_slice(v);
            }
        }
        Expr::Query(key) => query_value(input.query_string(), key.as_bytes(), out),
        Expr::Param(name) => {
            if let Some(v) = input.param(name) {
                out.extend_from_slice(v);
            }
        }
        Expr::Uuid4 => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            out.extend_from_slice(
                uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .as_bytes(),
            );
        }
        Expr::Uuid7 => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            out.extend_from_slice(
                uuid::Uuid::now_v7()
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .as_bytes(),
            );
        }
        Expr::Timestamp => {
            let mut buf = [0u8; 24];
            out.extend_from_slice(format_timestamp(SystemTime::now(), &mut buf));
        }
        Expr::Or(args) => {
            for a in args.iter() {
                let mark = out.len();
                eval(a, input, out);
                if out.len() > mark {
                    return;
                }
            }
        }
        Expr::Eq(args) | Expr::Neq(args) => {
            let want_equal = matches!(expr, Expr::Eq(_));
            let start = out.len();
            eval(&args[0], input, out);
            let mid = out.len();
            eval(&args[1], input, out);
            let equal = out[start..mid] == out[mid..];
            out.truncate(mid);
            if equal == want_equal {
                if let Some(then) = args.get(2) {
                    out.truncate(start);
                    eval(then, input, out);
                }
            } else {
                out.truncate(start);
            }
        }
        Expr::IfCond(args) => {
            let start = out.len();
            eval(&args[0], input, out);
            let truthy = out.len() > start;
            out.truncate(start);
            eval(&args[if truthy { 1 } else { 2 }], input, out);
        }
        Expr::Concat(args) => {
            for a in args.iter() {
                eval(a, input, out);
            }
        }
        Expr::Upper(a) | Expr::Lower(a) => {
            let start = out.len();
            eval(a, input, out);
            map_case_tail(out, start, matches!(expr, Expr::Upper(_)));
        }
        Expr::Len(a) => {
            let start = out.len();
            eval(a, input, out);
            let n = out.len() - start;
            out.truncate(start);
            write_decimal(out, n as u64);
        }
    }
}

/// Appends the percent-decoded value of the first `key=` in `query` (`+` decodes to a space).
fn query_value(query: &[u8], key: &[u8], out: &mut Vec<u8>) {
    for pair in query.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        if decoded_eq(k, key) {
            percent_decode_into(v, out);
            return;
        }
    }
}

/// Decodes one byte of form-urlencoded text at `s[i..]`: the byte and how many input bytes it took.
fn decode_at(s: &[u8], i: usize) -> (u8, usize) {
    match s[i] {
        b'+' => (b' ', 1),
        b'%' => match (s.get(i + 1).and_then(hex), s.get(i + 2).and_then(hex)) {
            (Some(h), Some(l)) => (h << 4 | l, 3),
            _ => (b'%', 1),
        },
        b => (b, 1),
    }
}

fn hex(c: &u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let (b, n) = decode_at(raw, i);
        if want.get(j) != Some(&b) {
            return false;
        }
        i += n;
        j += 1;
    }
    j == want.len()
}

fn percent_decode_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let (b, n) = decode_at(raw, i);
        out.push(b);
        i += n;
    }
}

fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Upper- or lowercases `out[start..]` in place (Unicode case mapping; bytes that are not
/// UTF-8 are kept).
fn map_case_tail(out: &mut Vec<u8>, start: usize, upper: bool) {
    if out[start..].is_ascii() {
        if upper {
            out[start..].make_ascii_uppercase();
        } else {
            out[start..].make_ascii_lowercase();
        }
        return;
    }
    let mapped_len = |c: char| -> usize {
        if upper {
            c.to_uppercase().map(char::len_utf8).sum()
        } else {
            c.to_lowercase().map(char::len_utf8).sum()
        }
    };
    let mut len = 0;
    for chunk in out[start..].utf8_chunks() {
        len += chunk.valid().chars().map(mapped_len).sum::<usize>() + chunk.invalid().len();
    }
    // Map into the space after the value, then move it down.
    let end = out.len();
    out.resize(end + len, 0);
    let (src, dst) = out[start..].split_at_mut(end - start);
    let mut w = 0;
    for chunk in src.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut put = |m: char| {
                w += m.encode_utf8(&mut dst[w..]).len();
            };
            if upper {
                c.to_uppercase().for_each(&mut put);
            } else {
                c.to_lowercase().for_each(&mut put);
            }
        }
        let bad = chunk.invalid();
        dst[w..w + bad.len()].copy_from_slice(bad);
        w += bad.len();
    }
    out.copy_within(end.., start);
    out.truncate(start + len);
}

/// The JSON-escaped length of one byte of valid UTF-8 text.
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// JSON-escapes `out[start..]` in place: quotes, backslashes and control characters are escaped,
/// bytes that are not UTF-8 become U+FFFD.
pub(super) fn escape_tail(out: &mut Vec<u8>, start: usize) {
    let mut len = 0;
    let mut changed = false;
    for chunk in out[start..].utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            let n = escaped_len(b);
            changed |= n != 1;
            len += n;
        }
        if !chunk.invalid().is_empty() {
            changed = true;
            len += 3;
        }
    }
    if !changed {
        return;
    }
    let end = out.len();
    out.resize(end + len, 0);
    let (src, dst) = out[start..].split_at_mut(end - start);
    let mut w = 0;
    for chunk in src.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            w += escape_byte(b, &mut dst[w..]);
        }
        if !chunk.invalid().is_empty() {
            dst[w..w + 3].copy_from_slice("\u{FFFD}".as_bytes());
            w += 3;
        }
    }
    out.copy_within(end.., start);
    out.truncate(start + len);
}

/// Writes the JSON escape of `b` (a byte of valid UTF-8) at the start of `dst`; returns its length.
fn escape_byte(b: u8, dst: &mut [u8]) -> usize {
    let two = |c: u8, dst: &mut [u8]| {
        dst[0] = b'\\';
        dst[1] = c;
        2
    };
    match b {
        b'"' => two(b'"', dst),
        b'\\' => two(b'\\', dst),
        b'\n' => two(b'n', dst),
        b'\r' => two(b'r', dst),
        b'\t' => two(b't', dst),
        0x08 => two(b'b', dst),
        0x0c => two(b'f', dst),
        0..=0x1f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            dst[..4].copy_from_slice(b"\\u00");
            dst[4] = HEX[usize::from(b >> 4)];
            dst[5] = HEX[usize::from(b & 0xf)];
            6
        }
        _ => {
            dst[0] = b;
            1
        }
    }
}

/// Appends `s` as a JSON string (quoted, escaped) to `out`.
pub(super) fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.extend_from_slice(s);
    escape_tail(out, start);
    out.push(b'"');
}

/// Formats `t` as RFC 3339 UTC with milliseconds (`2025-06-01T12:00:00.123Z`) into `buf`.
fn format_timestamp(t: SystemTime, buf: &mut [u8; 24]) -> &[u8] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let put = |buf: &mut [u8; 24], at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(buf, 0, y as u64, 4);
    buf[4] = b'-';
    put(buf, 5, u64::from(m), 2);
    buf[7] = b'-';
    put(buf, 8, u64::from(d), 2);
    buf[10] = b'T';
    put(buf, 11, rem / 3600, 2);
    buf[13] = b':';
    put(buf, 14, rem % 3600 / 60, 2);
    buf[16] = b':';
    put(buf, 17, rem % 60, 2);
    buf[19] = b'.';
    put(buf, 20, u64::from(millis), 3);
    buf[23] = b'Z';
    &buf[..]
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats_known_instants() {
        let mut buf = [0u8; 24];
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_748_779_200_123);
        assert_eq!(format_timestamp(t, &mut buf), b"2025-06-01T12:00:00.123Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_007);
        assert_eq!(format_timestamp(t, &mut buf), b"2000-02-29T00:00:00.007Z");
        assert_eq!(
            format_timestamp(UNIX_EPOCH, &mut buf),
            b"1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn escape_tail_escapes_only_the_tail() {
        let mut out = b"keep\"".to_vec();
        out.extend_from_slice(b"a\"b\\c\n\x01\xffz");
        escape_tail(&mut out, 5);
        assert_eq!(out, b"keep\"a\\\"b\\\\c\\n\\u0001\xef\xbf\xbdz");
    }

    #[test]
    fn case_mapping_handles_non_ascii_and_bad_bytes() {
        let mut out = b"x:".to_vec();
        out.extend_from_slice("straße\u{ff}".as_bytes());
        out.push(0xfe);
        map_case_tail(&mut out, 2, true);
        let mut want = b"x:".to_vec();
        want.extend_from_slice("STRASSE\u{178}".as_bytes());
        want.push(0xfe);
        assert_eq!(out, want);
    }
}
