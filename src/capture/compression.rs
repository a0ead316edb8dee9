//! `Compression`: how capture bodies are encoded on the wire.

use std::io::Write;

use flate2::{Compress, Crc, FlushCompress, Status};

/// The `Content-Encoding` of capture request bodies.
///
/// Capture v0 (`/batch/`) accepts [`Gzip`](Self::Gzip) only; capture v1 accepts all of them.
/// [`Brotli`](Self::Brotli) and [`Zstd`](Self::Zstd) exist with the cargo features `brotli` and
/// `zstd`. Every encoding compresses at a fast level: a batch is compressed once, on the
/// worker's thread, and a fast level keeps most of the savings.
///
/// # Example
///
/// ```
/// use posthog_tower::capture::{CaptureProtocol, Compression};
///
/// let client = posthog_tower::PostHog::builder("phc_project_key")
///     .capture_protocol(CaptureProtocol::V1)
///     .compression(Compression::Gzip)
///     .disabled(true)
///     .build()
///     .unwrap();
/// # let _ = client;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Plain JSON (the default).
    #[default]
    None,
    /// `Content-Encoding: gzip` (RFC 1952).
    Gzip,
    /// `Content-Encoding: deflate`: the zlib format (RFC 1950), as HTTP defines it.
    Deflate,
    /// `Content-Encoding: br` (cargo feature `brotli`).
    #[cfg(feature = "brotli")]
    #[cfg_attr(docsrs, doc(cfg(feature = "brotli")))]
    Brotli,
    /// `Content-Encoding: zstd` (cargo feature `zstd`).
    #[cfg(feature = "zstd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "zstd")))]
    Zstd,
}

impl Compression {
    /// The `Content-Encoding` value, `None` for plain bodies.
    ///
    /// ```
    /// use posthog_tower::capture::Compression;
    ///
    /// assert_eq!(Compression::Deflate.content_encoding(), Some("deflate"));
    /// assert_eq!(Compression::None.content_encoding(), None);
    /// ```
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Deflate => Some("deflate"),
            #[cfg(feature = "brotli")]
            Compression::Brotli => Some("br"),
            #[cfg(feature = "zstd")]
            Compression::Zstd => Some("zstd"),
        }
    }

    /// The concatenated `parts` (`len` bytes in all), encoded.
    pub(crate) fn encode(self, parts: &[&[u8]], len: usize) -> Result<Vec<u8>, std::io::Error> {
        match self {
            Compression::None => {
                let mut body = Vec::with_capacity(len);
                for part in parts {
                    body.extend_from_slice(part);
                }
                Ok(body)
            }
            Compression::Gzip => gzip(parts, len),
            Compression::Deflate => {
                let mut z = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(len / 3 + 64),
                    flate2::Compression::fast(),
                );
                for part in parts {
                    z.write_all(part)?;
                }
                z.finish()
            }
            #[cfg(feature = "brotli")]
            Compression::Brotli => {
                // Quality 1 of 11, window 2^22: brotli's fast setting.
                let mut w =
                    brotli::CompressorWriter::new(Vec::with_capacity(len / 3 + 64), 4096, 1, 22);
                for part in parts {
                    w.write_all(part)?;
                }
                w.flush()?;
                Ok(w.into_inner())
            }
            #[cfg(feature = "zstd")]
            Compression::Zstd => {
                let mut w = zstd::stream::Encoder::new(Vec::with_capacity(len / 3 + 64), 1)?;
                w.include_checksum(false)?;
                w.set_pledged_src_size(Some(len as u64))?;
                for part in parts {
                    w.write_all(part)?;
                }
                w.finish()
            }
        }
    }
}

thread_local! {
    /// One deflate state per thread, reset for every body: creating it costs as much as
    /// compressing a 100-event batch.
    static DEFLATE: std::cell::RefCell<Option<Compress>> = const { std::cell::RefCell::new(None) };
}

/// Gzip (RFC 1952) of the concatenated `parts`, `len` bytes in all, at the fast level.
pub(crate) fn gzip(parts: &[&[u8]], len: usize) -> Result<Vec<u8>, std::io::Error> {
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut out = Vec::with_capacity(len / 3 + 64);
    out.extend_from_slice(&HEADER);
    let mut crc = Crc::new();
    let parts: &[&[u8]] = if parts.is_empty() { &[&[]] } else { parts };
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let deflate = match slot.as_mut() {
            Some(d) => {
                d.reset();
                d
            }
            None => slot.insert(Compress::new(flate2::Compression::fast(), false)),
        };
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter().enumerate() {
            crc.update(part);
            let flush = if i == last {
                FlushCompress::Finish
            } else {
                FlushCompress::None
            };
            let mut input: &[u8] = part;
            loop {
                if out.capacity() - out.len() < 64 {
                    out.reserve(out.capacity().max(1024));
                }
                let before = deflate.total_in();
                let status = deflate
                    .compress_vec(input, &mut out, flush)
                    .map_err(std::io::Error::other)?;
                input = &input[(deflate.total_in() - before) as usize..];
                match status {
                    Status::StreamEnd => break,
                    _ if input.is_empty() && flush == FlushCompress::None => break,
                    _ => {}
                }
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(crc.amount()).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn all() -> Vec<Compression> {
        vec![
            Compression::None,
            Compression::Gzip,
            Compression::Deflate,
            #[cfg(feature = "brotli")]
            Compression::Brotli,
            #[cfg(feature = "zstd")]
            Compression::Zstd,
        ]
    }

    fn decode(compression: Compression, body: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        match compression {
            Compression::None => plain.extend_from_slice(body),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(body)
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            Compression::Deflate => {
                flate2::read::ZlibDecoder::new(body)
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            #[cfg(feature = "brotli")]
            Compression::Brotli => {
                brotli::Decompressor::new(body, 4096)
                    .read_to_end(&mut plain)
                    .unwrap();
            }
            #[cfg(feature = "zstd")]
            Compression::Zstd => plain = zstd::stream::decode_all(body).unwrap(),
        }
        plain
    }

    #[test]
    fn every_encoding_round_trips() {
        for compression in all() {
            for round in 0..3 {
                let a = vec![b'a'; 70_000 * (round + 1)];
                let b: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
                let parts: [&[u8]; 4] = [b"{", &a, &b, b"}"];
                let len = parts.iter().map(|p| p.len()).sum();
                let body = compression.encode(&parts, len).unwrap();
                let expected: Vec<u8> = parts.concat();
                assert_eq!(decode(compression, &body), expected, "{compression:?}");
            }
            let empty = compression.encode(&[], 0).unwrap();
            assert!(decode(compression, &empty).is_empty(), "{compression:?}");
        }
    }
}
