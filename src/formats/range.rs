//! `Range` request headers (RFC 9110 §14.1.2), for downstream reads (pure).

/// A requested byte range, as parsed from `Range: bytes=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b` (inclusive) or `a-` (to the end).
    From { start: u64, end_inclusive: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses one `bytes=` range (pure). Multiple ranges and other units give `None`: the
    /// whole content is served instead, as RFC 9110 allows.
    pub fn parse(header: &str) -> Option<Self> {
        // The unit is case-insensitive (RFC 9110 §14.1).
        let header = header.trim();
        let spec = header
            .get(..6)
            .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
            .map(|_| &header[6..])?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.trim().split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        // A position too large for u64 is past the end of anything we store: for the last
        // position or a suffix length that means "to the end", for the first one it makes
        // the range unsatisfiable. Either way it is not a reason to ignore the header.
        let position = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
        match (a, b) {
            ("", n) if digits(n) => Some(Self::Suffix(position(n))),
            (a, "") if digits(a) => Some(Self::From {
                start: position(a),
                end_inclusive: None,
            }),
            (a, b) if digits(a) && digits(b) => {
                let (start, end) = (position(a), position(b));
                (start <= end).then_some(Self::From {
                    start,
                    end_inclusive: Some(end),
                })
            }
            _ => None,
        }
    }

    /// What to serve of `size` bytes (RFC 9110 §14.1.1): `Ok(Some(start..end))` for a part
    /// (a last position past the end clamped to it), `Ok(None)` for the whole representation,
    /// `Err(Unsatisfiable)` for a first position at or past the end or a zero suffix. A
    /// non-zero suffix of an empty representation is satisfiable but names no byte a 206
    /// could carry, so the whole (empty) representation is served instead.
    pub fn resolve(self, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        match self {
            Self::From { start, .. } if start >= size => Err(Unsatisfiable),
            Self::From { start, end_inclusive } => Ok(Some((
                start,
                end_inclusive.map_or(size, |e| e.saturating_add(1).min(size)),
            ))),
            Self::Suffix(0) => Err(Unsatisfiable),
            Self::Suffix(_) if size == 0 => Ok(None),
            Self::Suffix(n) => Ok(Some((size.saturating_sub(n), size))),
        }
    }
}

/// A range that selects nothing of the representation (answered 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers_parse_and_resolve_like_rfc_9110() {
        let r = |s: &str| ByteRange::parse(s);
        let part = |start, end| Ok(Some((start, end)));
        assert_eq!(r("bytes=0-99").unwrap().resolve(1000), part(0, 100));
        assert_eq!(
            r("BYTES=0-99").unwrap().resolve(1000),
            part(0, 100),
            "the unit in any case"
        );
        assert_eq!(r("Bytes=-100").unwrap().resolve(1000), part(900, 1000));
        assert_eq!(r("bytes=990-2000").unwrap().resolve(1000), part(990, 1000));
        assert_eq!(r("bytes=500-").unwrap().resolve(1000), part(500, 1000));
        assert_eq!(r("bytes=-100").unwrap().resolve(1000), part(900, 1000));
        assert_eq!(r("bytes=-5000").unwrap().resolve(1000), part(0, 1000));
        assert_eq!(r("bytes=1000-").unwrap().resolve(1000), Err(Unsatisfiable));
        assert_eq!(r("bytes=-0").unwrap().resolve(1000), Err(Unsatisfiable));
        assert_eq!(
            r("bytes=-1").unwrap().resolve(0),
            Ok(None),
            "all of an empty representation"
        );
        assert_eq!(r("bytes=0-").unwrap().resolve(0), Err(Unsatisfiable));
        assert_eq!(r("bytes=0-18446744073709551615").unwrap().resolve(1000), part(0, 1000));
        assert_eq!(
            r("bytes=10-99999999999999999999999").unwrap().resolve(1000),
            part(10, 1000)
        );
        assert_eq!(
            r("bytes=-99999999999999999999999").unwrap().resolve(1000),
            part(0, 1000)
        );
        assert_eq!(
            r("bytes=99999999999999999999999-").unwrap().resolve(1000),
            Err(Unsatisfiable)
        );
        let last = "bytes=18446744073709551615-18446744073709551615";
        assert_eq!(r(last).unwrap().resolve(1000), Err(Unsatisfiable));
        for ignored in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes= 1-2x",
            "",
        ] {
            assert_eq!(r(ignored), None, "{ignored}");
        }
    }

    /// Whatever the header, a resolved range lies within the representation and is not empty.
    #[test]
    fn every_resolved_range_is_inside_and_non_empty() {
        let edges = [0, 1, 2, 999, 1000, 1001, u64::MAX - 1, u64::MAX];
        for size in [0, 1, 1000, u64::MAX] {
            for a in edges {
                for b in edges {
                    for header in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{b}")] {
                        if let Some(Ok(Some((start, end)))) = ByteRange::parse(&header).map(|r| r.resolve(size)) {
                            assert!(start < end && end <= size, "{header} of {size}: {start}..{end}");
                        }
                    }
                }
            }
        }
    }
}
