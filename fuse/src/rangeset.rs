//! What one lock owner holds on one file: POSIX byte-range lock semantics in miniature.
//!
//! The shim needs its own record because the lower filesystem cannot be asked "what does this
//! owner hold" — and LiteFS does not undo a multi-byte lock request that fails partway, so after a
//! failure the shim restores exactly the bytes the owner held before (see `locks.rs`).

use smallvec::SmallVec;

/// Lock types, as in `fcntl`.
#[cfg(test)]
pub const RDLCK: i32 = libc::F_RDLCK;
#[cfg(test)]
pub const WRLCK: i32 = libc::F_WRLCK;
pub const UNLCK: i32 = libc::F_UNLCK;

/// The end of a range that extends to the end of the file. FUSE sends `OFFSET_MAX`
/// (`i64::MAX`); both spellings are normalised to this.
pub const EOF: u64 = u64::MAX;

pub fn normalise_end(end: u64) -> u64 {
    if end >= i64::MAX as u64 { EOF } else { end }
}

/// One held segment: bytes `start..=end` with lock type `typ` (RDLCK or WRLCK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

/// Sorted, non-overlapping, with adjacent segments of equal type merged.
/// SQLite holds at most a handful of ranges per file: inline storage, no heap allocation on
/// the lock path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    segs: Segs,
}

type Segs = SmallVec<[Segment; 4]>;

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Applies a successful lock or unlock of `start..=end`.
    pub fn apply(&mut self, start: u64, end: u64, typ: i32) {
        let end = normalise_end(end);
        if start > end {
            return;
        }
        // Cut the existing segments around the new range, then insert it.
        let mut out: SmallVec<[Segment; 8]> = SmallVec::new();
        for s in self.segs.drain(..) {
            if s.end < start || s.start > end {
                out.push(s);
                continue;
            }
            if s.start < start {
                out.push(Segment {
                    start: s.start,
                    end: start - 1,
                    typ: s.typ,
                });
            }
            if s.end > end {
                out.push(Segment {
                    start: end + 1,
                    end: s.end,
                    typ: s.typ,
                });
            }
        }
        if typ != UNLCK {
            out.push(Segment { start, end, typ });
        }
        out.sort_unstable_by_key(|s| s.start);
        // Merge neighbours of the same type.
        let mut merged = Segs::new();
        for s in out {
            if let Some(last) = merged.last_mut()
                && last.typ == s.typ
                && last.end != EOF
                && last.end + 1 == s.start
            {
                last.end = s.end;
                continue;
            }
            merged.push(s);
        }
        self.segs = merged;
    }

    /// The parts of `start..=end` this owner holds, clipped to that range.
    pub fn held_within(&self, start: u64, end: u64) -> Segs {
        let end = normalise_end(end);
        // An empty range holds nothing (clipping to it would invert segments).
        if start > end {
            return Segs::new();
        }
        self.segs
            .iter()
            .filter(|s| s.end >= start && s.start <= end)
            .map(|s| Segment {
                start: s.start.max(start),
                end: s.end.min(end),
                typ: s.typ,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, end: u64, typ: i32) -> Segment {
        Segment { start, end, typ }
    }

    #[test]
    fn lock_and_unlock() {
        let mut s = RangeSet::default();
        s.apply(10, 19, RDLCK);
        assert_eq!(s.segments(), &[seg(10, 19, RDLCK)]);
        s.apply(10, 19, UNLCK);
        assert!(s.is_empty());
    }

    #[test]
    fn split_and_merge() {
        let mut s = RangeSet::default();
        s.apply(0, 99, RDLCK);
        s.apply(40, 49, WRLCK);
        assert_eq!(
            s.segments(),
            &[seg(0, 39, RDLCK), seg(40, 49, WRLCK), seg(50, 99, RDLCK)]
        );
        s.apply(40, 49, RDLCK);
        assert_eq!(s.segments(), &[seg(0, 99, RDLCK)]);
        s.apply(50, 59, UNLCK);
        assert_eq!(s.segments(), &[seg(0, 49, RDLCK), seg(60, 99, RDLCK)]);
    }

    #[test]
    fn to_end_of_file() {
        let mut s = RangeSet::default();
        s.apply(0x4000_0000, 0x4000_0000, WRLCK);
        s.apply(0x4000_0002, 0x4000_0002 + 509, RDLCK);
        s.apply(0, i64::MAX as u64, UNLCK);
        assert!(s.is_empty());
        s.apply(5, u64::MAX, WRLCK);
        s.apply(7, 7, UNLCK);
        assert_eq!(s.segments(), &[seg(5, 6, WRLCK), seg(8, EOF, WRLCK)]);
    }

    #[test]
    fn held_within_clips() {
        let mut s = RangeSet::default();
        s.apply(120, 120, WRLCK);
        s.apply(123, 127, RDLCK);
        assert_eq!(s.held_within(122, 125).as_slice(), &[seg(123, 125, RDLCK)]);
        assert_eq!(s.held_within(0, EOF).len(), 2);
        assert!(s.held_within(0, 100).is_empty());
    }

    /// Found by the property test (rangeset_props.rs): an empty range (`start > end`) returned
    /// the covering segment clipped to `start..=end`, i.e. inverted (`20..=0`).
    #[test]
    fn held_within_an_empty_range_is_empty() {
        let mut s = RangeSet::default();
        s.apply(0, EOF, WRLCK);
        assert!(s.held_within(20, 0).is_empty());
    }

    /// Compare against a byte-array model over a small universe.
    #[test]
    fn matches_a_byte_model() {
        let mut model = [UNLCK; 64];
        let mut set = RangeSet::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = x % 64;
            let b = (x >> 8) % 64;
            let (start, end) = (a.min(b), a.max(b));
            let typ = [RDLCK, WRLCK, UNLCK][((x >> 16) % 3) as usize];
            set.apply(start, end, typ);
            for slot in &mut model[start as usize..=end as usize] {
                *slot = typ;
            }
            let mut rebuilt = [UNLCK; 64];
            for s in set.segments() {
                for slot in &mut rebuilt[s.start as usize..=s.end as usize] {
                    *slot = s.typ;
                }
            }
            assert_eq!(model, rebuilt);
            // Canonical form: sorted, disjoint, merged.
            for w in set.segments().windows(2) {
                assert!(w[0].end < w[1].start);
                assert!(!(w[0].typ == w[1].typ && w[0].end + 1 == w[1].start));
            }
        }
    }
}
