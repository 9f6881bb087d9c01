//! Screening of a request head before anything acts on it: what hyper accepts but a gateway must
//! not (nginx, HAProxy and Envoy refuse the same).
//!
//! - **Header sizes**: a single header (name + value) over `max_header_size` → 431. (The whole
//!   head is bounded by hyper at `max_head_size`, also 431.)
//! - **Framing**: a `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`,
//!   `identity, chunked`, …) → 400: the coding would otherwise be dropped silently.
//! - **Host**: HTTP/1.1 needs exactly one `Host`; HTTP/2 needs `:authority` or `Host`, and both
//!   must agree; an authority with userinfo (`user@host`) → 400 otherwise.
//! - **Path** ([`normalize_path`]): percent-encoded unreserved characters are decoded (`%2e` is
//!   `.`), dot-segments removed (RFC 3986 §5.2.4) and repeated slashes merged, so routing and the
//!   upstream see the same path. Encoded `/`, `\` or control characters, a raw `\`, and malformed
//!   escapes are refused with 400: their meaning differs between servers, so no meaning is safe.

use std::borrow::Cow;

use http::{HeaderMap, Version, header};

use crate::error::ErrorKind;

/// Checks sizes, framing and Host of a request head.
pub fn check_head(
    version: Version,
    uri: &http::Uri,
    headers: &HeaderMap,
    max_header_size: u64,
) -> Result<(), ErrorKind> {
    check_headers(headers, max_header_size)?;
    check_host(version, uri, headers)
}

fn check_headers(h: &HeaderMap, max_header_size: u64) -> Result<(), ErrorKind> {
    for (name, value) in h {
        if (name.as_str().len() + value.len()) as u64 > max_header_size {
            return Err(ErrorKind::HeaderTooLarge);
        }
    }
    let mut codings = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ErrorKind::BadRequest(
            "unsupported Transfer-Encoding: only `chunked` is accepted",
        )),
    }
}

fn check_host(version: Version, uri: &http::Uri, headers: &HeaderMap) -> Result<(), ErrorKind> {
    // RFC 9113 §8.3.1 and RFC 9112 §3.2: no userinfo (`user@host`) in a request's authority.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ErrorKind::BadRequest("userinfo in the request's authority"));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ErrorKind::BadRequest("more than one Host header"));
    }
    match version {
        Version::HTTP_2 | Version::HTTP_3 => match (uri.authority(), host) {
            (None, None) => Err(ErrorKind::BadRequest("missing :authority and Host")),
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                Err(ErrorKind::BadRequest("Host does not match :authority"))
            }
            _ => Ok(()),
        },
        Version::HTTP_11 if host.is_none() && uri.authority().is_none() => {
            Err(ErrorKind::BadRequest("missing Host header"))
        }
        _ => Ok(()),
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// An encoded `/`, `\`, `%` that decodes to a control character, or a raw `\`.
    Ambiguous,
    /// Not an absolute path.
    NotAbsolute,
}

impl From<PathError> for ErrorKind {
    fn from(e: PathError) -> Self {
        ErrorKind::BadRequest(match e {
            PathError::BadEscape => "malformed percent-encoding in the path",
            PathError::Ambiguous => {
                "the path contains an encoded slash, backslash or control character"
            }
            PathError::NotAbsolute => "the path must start with /",
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path routing and the upstream see: see the module docs. Borrowed when already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let suspicious = bytes.iter().any(|&b| matches!(b, b'%' | b'\\'))
        || path.contains("//")
        || path.contains("/.");
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: decode unreserved characters, refuse ambiguous ones, upper-case the rest.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Ambiguous),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = h << 4 | l;
                if c == b'/' || c == b'\\' || c.is_ascii_control() {
                    return Err(PathError::Ambiguous);
                }
                if is_unreserved(c) {
                    decoded.push(c as char);
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            _ => {
                // The path is ASCII-checked by the URI parser; copy UTF-8 runs whole anyway.
                let run = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                decoded.push_str(&path[i..run]);
                i = run;
            }
        }
    }
    // 2. Segments: drop `.` and empty ones, `..` removes the previous one (never above the root).
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_encoded_dots_are_resolved() {
        assert_eq!(n("/v1/chat/completions").unwrap(), "/v1/chat/completions");
        assert_eq!(n("/v1/../restricted/x").unwrap(), "/restricted/x");
        assert_eq!(n("/v1/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/v1/%2E%2e/%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/v1//chat///x").unwrap(), "/v1/chat/x");
        assert_eq!(n("/v1/models/").unwrap(), "/v1/models/");
        assert_eq!(n("/v1/.").unwrap(), "/v1/");
        assert_eq!(n("/v1/..").unwrap(), "/");
        assert_eq!(n("/v1/%7euser").unwrap(), "/v1/~user");
        assert_eq!(n("/v1/a%3ab").unwrap(), "/v1/a%3Ab");
        assert_eq!(n("/v1/.well-known").unwrap(), "/v1/.well-known");
    }

    #[test]
    fn ambiguous_and_malformed_paths_are_refused() {
        assert_eq!(n("/v1/..%2f..%2fetc"), Err(PathError::Ambiguous));
        assert_eq!(n("/v1/%2F"), Err(PathError::Ambiguous));
        assert_eq!(n("/v1/%5c"), Err(PathError::Ambiguous));
        assert_eq!(n("/v1\\..\\x"), Err(PathError::Ambiguous));
        assert_eq!(n("/v1/%00"), Err(PathError::Ambiguous));
        assert_eq!(n("/v1/%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/v1/%2"), Err(PathError::BadEscape));
        assert_eq!(n("v1"), Err(PathError::NotAbsolute));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just(".%2e".to_owned()),
            "[a-z0-9._~-]{1,6}",
            "[a-z]{1,3}%[0-9A-Fa-f]{2}",
        ]
    }

    proptest! {
        #[test]
        fn normal_paths_have_no_dot_segments_and_normalising_is_idempotent(
            segs in proptest::collection::vec(segment(), 0..8)
        ) {
            let path = format!("/{}", segs.join("/"));
            if let Ok(normal) = normalize_path(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"), "{}", normal);
                for seg in normal.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{} -> {}", path, normal);
                    prop_assert!(!seg.to_ascii_lowercase().contains("%2e"));
                }
                let again = normalize_path(&normal).unwrap();
                prop_assert_eq!(again.as_ref(), normal.as_ref());
            }
        }

        #[test]
        fn a_normal_path_never_leaves_a_prefix_it_did_not_start_under(
            tail in proptest::collection::vec(segment(), 0..8)
        ) {
            // Whatever follows `/v1/`, the result is under `/v1/` or climbed out visibly: the
            // router sees the climbed-out path, never the raw one.
            let path = format!("/v1/{}", tail.join("/"));
            if let Ok(normal) = normalize_path(&path) {
                let climbs = tail.iter().any(|s| {
                    let d = s.to_ascii_lowercase().replace("%2e", ".");
                    d == ".."
                });
                if !climbs {
                    prop_assert!(normal.starts_with("/v1/"), "{} -> {}", path, normal);
                }
            }
        }
    }
}
