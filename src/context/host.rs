//! The host of a request's URL: checked bytes from an untrusted `Host` header (or the URI's
//! authority), kept small and validated when first read.

use http::{uri::Authority, HeaderValue, Uri};

/// The longest host name accepted from a header.
pub(crate) const MAX_HOST: usize = 255;

/// The bytes a host (with optional port) may hold in `Host`: letters, digits, `.-_:[]`.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']');
        b += 1;
    }
    table
};

/// A host (with optional port) as it may appear in `Host`, surrounding whitespace trimmed.
pub(crate) fn valid_host(host: &str) -> Option<&str> {
    valid_host_bytes(host.as_bytes())
}

/// [`valid_host`] on raw header bytes: every accepted byte is ASCII, so no separate UTF-8
/// check is needed first.
pub(crate) fn valid_host_bytes(host: &[u8]) -> Option<&str> {
    let host = host.trim_ascii();
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST
        && host.iter().all(|&b| HOST_BYTES[usize::from(b)]);
    // Only ASCII bytes passed: `from_utf8` cannot fail.
    ok.then(|| std::str::from_utf8(host).ok()).flatten()
}

/// The host of a request's URL (with its port, if any).
#[derive(Clone)]
pub(crate) enum Host {
    /// The `Host` header's bytes when they are a valid host, else the URI's authority
    /// (HTTP/2), checked when first read: most requests never need their host.
    Request {
        header: Option<ShortBytes>,
        authority: Option<Authority>,
    },
    /// Already checked (UTF-8).
    Checked(Option<ShortBytes>),
}

impl Host {
    /// A host that was already checked (`None`: no valid host).
    pub(crate) fn checked(host: Option<&str>) -> Self {
        Host::Checked(host.map(|h| ShortBytes::new(h.as_bytes())))
    }

    /// The host a request's `Host` header (`header`) or `uri` names, checked when read. The
    /// header's bytes are copied (no shared reference count to touch); a value too long to be
    /// a host is not.
    #[inline]
    pub(crate) fn of_request(uri: &Uri, header: Option<&HeaderValue>) -> Self {
        let header = header
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| v.len() <= MAX_HOST)
            .map(ShortBytes::new);
        Host::Request {
            header,
            authority: uri.authority().cloned(),
        }
    }

    /// The host, if valid.
    pub(crate) fn get(&self) -> Option<&str> {
        match self {
            Host::Request { header, authority } => header
                .as_ref()
                .and_then(|h| valid_host_bytes(h.as_bytes()))
                .or_else(|| {
                    authority
                        .as_ref()
                        .and_then(|a| valid_host_bytes(a.as_str().as_bytes()))
                }),
            // Made from a `&str`: always UTF-8, so never the default.
            Host::Checked(host) => host
                .as_ref()
                .map(|h| std::str::from_utf8(h.as_bytes()).unwrap_or_default()),
        }
    }
}

/// Bytes kept inline when short, as host names usually are: no allocation, no reference count.
#[derive(Clone)]
pub(crate) enum ShortBytes {
    Inline { len: u8, bytes: [u8; SHORT] },
    Heap(Box<[u8]>),
}

/// The most bytes a [`ShortBytes`] keeps inline.
pub(super) const SHORT: usize = 62;

impl ShortBytes {
    #[inline]
    fn new(data: &[u8]) -> Self {
        match u8::try_from(data.len()) {
            Ok(len) if data.len() <= SHORT => {
                let mut bytes = [0; SHORT];
                bytes[..data.len()].copy_from_slice(data);
                ShortBytes::Inline { len, bytes }
            }
            _ => ShortBytes::Heap(data.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            ShortBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            ShortBytes::Heap(data) => data,
        }
    }
}
