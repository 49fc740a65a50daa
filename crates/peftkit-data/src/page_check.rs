//! Bounds what a parquet file's page headers may claim, before the parquet reader decodes them.
//!
//! The `parquet` crate (60.1) skips unknown Thrift fields without consuming the byte that each
//! boolean of a list takes in the compact protocol, and accepts collection sizes larger than the
//! bytes left. One 1 kB file with a list header claiming two billion booleans then keeps its page
//! reader busy for minutes (a read per element on a file; seconds in memory). This check walks every
//! page header of the columns to be read with a strict compact-protocol skipper — each element at
//! least one byte, sizes bounded by the bytes left, nesting bounded — and also bounds each page's
//! sizes against its column chunk, so a malformed header is a one-line error at once.

use parquet::file::metadata::ParquetMetaData;

/// Thrift nesting deeper than this is refused (the parquet reader's own skip limit).
const MAX_DEPTH: u32 = 64;

/// A page may decompress to at most this many times its compressed size, plus [`SLACK`]: far above
/// what real encoded pages reach, far below a claim that makes the reader allocate gigabytes.
const MAX_RATIO: u64 = 4096;
const SLACK: u64 = 1 << 20;

/// Checks the page headers of `columns` (leaf indices) in every row group of `data`, a whole
/// parquet file. The error names the row group, the column and the byte offset.
pub(crate) fn check_page_headers(
    data: &[u8],
    metadata: &ParquetMetaData,
    columns: &[usize],
) -> Result<(), String> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for &c in columns {
            let Some(chunk) = group.columns().get(c) else {
                continue;
            };
            let (start, len) = chunk.byte_range();
            let end = start
                .checked_add(len)
                .filter(|&e| e <= data.len() as u64)
                .ok_or_else(|| {
                    format!(
                        "row group {g} column `{}`: its byte range {start}+{len} lies outside the file ({} bytes)",
                        chunk.column_path().string(),
                        data.len()
                    )
                })?;
            check_chunk(&data[start as usize..end as usize]).map_err(|(at, what)| {
                format!(
                    "row group {g} column `{}`: malformed page header at byte {}: {what}",
                    chunk.column_path().string(),
                    start + at as u64
                )
            })?;
        }
    }
    Ok(())
}

/// Walks the pages of one column chunk: header, then its compressed body, to the chunk's end.
fn check_chunk(chunk: &[u8]) -> Result<(), (usize, String)> {
    let mut pos = 0;
    while pos < chunk.len() {
        let mut r = Reader {
            buf: &chunk[pos..],
            at: 0,
            sizes: PageSizes::default(),
        };
        r.page_header().map_err(|e| (pos + r.at, e))?;
        let PageSizes {
            compressed,
            uncompressed,
        } = r.sizes;
        let (Some(compressed), Some(uncompressed)) = (compressed, uncompressed) else {
            return Err((pos, "no page sizes".into()));
        };
        if compressed < 0 || uncompressed < 0 {
            return Err((
                pos,
                format!("negative page size ({compressed}, {uncompressed})"),
            ));
        }
        let body = r.at as u64 + compressed as u64;
        if body > (chunk.len() - pos) as u64 {
            return Err((
                pos,
                format!(
                    "a page of {compressed} bytes where {} are left in the column chunk",
                    chunk.len() - pos - r.at
                ),
            ));
        }
        if uncompressed as u64 > (compressed as u64).saturating_mul(MAX_RATIO) + SLACK {
            return Err((
                pos,
                format!(
                    "a page claims {uncompressed} bytes uncompressed from {compressed} compressed"
                ),
            ));
        }
        pos += body as usize;
    }
    Ok(())
}

#[derive(Default)]
struct PageSizes {
    uncompressed: Option<i64>,
    compressed: Option<i64>,
}

/// A strict Thrift compact-protocol reader over one page header.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    sizes: PageSizes,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .buf
            .get(self.at)
            .ok_or("the header runs past the column chunk")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 64 bits".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.left() as u64 {
            return Err(format!("{n} bytes claimed where {} are left", self.left()));
        }
        self.at += n as usize;
        Ok(())
    }

    /// A collection's element count: each element takes at least a byte.
    fn count(&mut self, n: u64) -> Result<u64, String> {
        if n > self.left() as u64 {
            return Err(format!(
                "{n} elements claimed where {} bytes are left",
                self.left()
            ));
        }
        Ok(n)
    }

    /// The page header: a struct whose fields 2 and 3 are the page's uncompressed and compressed
    /// sizes (i32).
    fn page_header(&mut self) -> Result<(), String> {
        self.fields(MAX_DEPTH, true)
    }

    /// A struct's fields up to its stop byte.
    fn fields(&mut self, depth: u32, top: bool) -> Result<(), String> {
        if depth == 0 {
            return Err("nesting too deep".into());
        }
        let mut id: i64 = 0;
        loop {
            let header = self.byte()?;
            let kind = header & 0x0f;
            if kind == 0 {
                return Ok(());
            }
            let delta = header >> 4;
            id = if delta == 0 {
                self.zigzag()?
            } else {
                id + i64::from(delta)
            };
            if top && kind == 5 && (id == 2 || id == 3) {
                let size = self.zigzag()?;
                if id == 2 {
                    self.sizes.uncompressed = Some(size);
                } else {
                    self.sizes.compressed = Some(size);
                }
                continue;
            }
            // A struct field's booleans live in the field header itself.
            if kind != 1 && kind != 2 {
                self.value(kind, depth - 1)?;
            }
        }
    }

    /// Skips one value of compact type `kind` (in a list, a boolean takes its own byte).
    fn value(&mut self, kind: u8, depth: u32) -> Result<(), String> {
        if depth == 0 {
            return Err("nesting too deep".into());
        }
        match kind {
            1..=3 => self.skip(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(n)
            }
            9 | 10 => {
                let header = self.byte()?;
                let n = match header >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.count(n)?;
                no_booleans(n, &[header & 0x0f])?;
                for _ in 0..n {
                    self.value(header & 0x0f, depth - 1)?;
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                let n = self.count(n)?;
                if n > 0 {
                    let kinds = self.byte()?;
                    no_booleans(n, &[kinds >> 4, kinds & 0x0f])?;
                    for _ in 0..n {
                        self.value(kinds >> 4, depth - 1)?;
                        self.value(kinds & 0x0f, depth - 1)?;
                    }
                }
                Ok(())
            }
            12 => self.fields(depth, false),
            13 => self.skip(16),
            other => Err(format!("unknown Thrift type {other}")),
        }
    }
}

/// Refuses collections of booleans. No page header field is one, and the parquet reader skips
/// their elements without consuming the byte each takes: its reading of everything after such a
/// collection differs from this check's, so one would let a crafted header through.
fn no_booleans(n: u64, kinds: &[u8]) -> Result<(), String> {
    if n > 0 && kinds.iter().any(|&k| k == 1 || k == 2) {
        return Err(format!(
            "a collection of {n} booleans (no page header field is one)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data page header: type DATA_PAGE (0), sizes, then `extra` fields, then stop.
    fn header(uncompressed: i64, compressed: i64, extra: &[u8]) -> Vec<u8> {
        let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
        let mut out = vec![0x15, 0x00];
        for v in [uncompressed, compressed] {
            out.push(0x15);
            let mut u = zz(v);
            loop {
                let b = (u & 0x7f) as u8;
                u >>= 7;
                if u == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        out.extend_from_slice(extra);
        out.push(0);
        out
    }

    #[test]
    fn a_well_formed_chunk_passes() {
        let mut chunk = header(4, 4, &[]);
        chunk.extend_from_slice(&[1, 2, 3, 4]);
        chunk.extend(header(2, 2, &[0x11]));
        chunk.extend_from_slice(&[5, 6]);
        check_chunk(&chunk).unwrap();
    }

    #[test]
    fn oversized_and_boolean_collections_are_refused_at_once() {
        // Field 4 (delta 1): a list (9) of i32 (5) with a varint size of 2^31 - 1.
        let chunk = header(0, 0, &[0x19, 0xf5, 0xff, 0xff, 0xff, 0xff, 0x07]);
        let t = std::time::Instant::now();
        let (_, err) = check_chunk(&chunk).unwrap_err();
        assert!(err.contains("2147483647 elements claimed"), "{err}");
        assert!(t.elapsed().as_secs() < 1);
        // A list of two booleans: the parquet reader would read past it differently.
        let (_, err) = check_chunk(&header(0, 0, &[0x19, 0x21, 1, 1])).unwrap_err();
        assert!(err.contains("a collection of 2 booleans"), "{err}");
        // A map (11) of one i32 → boolean entry.
        let (_, err) = check_chunk(&header(0, 0, &[0x1b, 0x01, 0x51, 0x00, 0x01])).unwrap_err();
        assert!(err.contains("a collection of 1 booleans"), "{err}");
    }

    #[test]
    fn pages_beyond_their_chunk_or_absurdly_compressed_are_refused() {
        let (_, err) = check_chunk(&header(10, 10, &[])).unwrap_err();
        assert!(err.contains("a page of 10 bytes where 0 are left"), "{err}");
        let mut chunk = header(1 << 30, 4, &[]);
        chunk.extend_from_slice(&[0; 4]);
        let (_, err) = check_chunk(&chunk).unwrap_err();
        assert!(
            err.contains("claims 1073741824 bytes uncompressed"),
            "{err}"
        );
        let (_, err) = check_chunk(&header(-1, 0, &[])).unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn truncated_and_deep_headers_are_refused() {
        let (_, err) = check_chunk(&[0x15]).unwrap_err();
        assert!(err.contains("runs past"), "{err}");
        // 70 nested structs (field 5, type 12) never closed.
        let mut deep = header(0, 0, &[]);
        deep.pop();
        deep.extend(std::iter::repeat_n(0x1c, 70));
        let (_, err) = check_chunk(&deep).unwrap_err();
        assert!(
            err.contains("too deep") || err.contains("runs past"),
            "{err}"
        );
    }
}
