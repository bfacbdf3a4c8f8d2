//! [`RangeSet`] against the naive model of what an owner holds: one lock type (or none) per
//! byte. Random sequences of lock and unlock requests, including ranges to the end of the file
//! in both of FUSE's spellings and empty ranges, must leave the same bytes held as the model,
//! in canonical form (sorted, disjoint, neighbours of one type merged), and `held_within`
//! must answer what the model holds in any range (docs/testing.md, "Property tests").

use proptest::prelude::*;

use crate::rangeset::{EOF, RDLCK, RangeSet, UNLCK, WRLCK};

/// Bytes `0..TAIL` one by one; slot `TAIL` stands for every byte from `TAIL` to the end of the
/// file. Requests start below `TAIL`, so those bytes always share one state.
const TAIL: u64 = 24;

type Model = [Option<i32>; TAIL as usize + 1];

fn slots(start: u64, end: u64) -> std::ops::RangeInclusive<usize> {
    start as usize..=end.min(TAIL) as usize
}

/// A range end as the kernel may send it: a byte below the tail, or the end of the file.
fn end_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..TAIL,
        1 => Just(i64::MAX as u64),
        1 => Just(u64::MAX),
    ]
}

fn request() -> impl Strategy<Value = (u64, u64, i32)> {
    (
        0..TAIL,
        end_strategy(),
        prop_oneof![Just(RDLCK), Just(WRLCK), Just(UNLCK)],
    )
}

fn expand(set: &RangeSet) -> Model {
    let mut m: Model = [None; TAIL as usize + 1];
    for s in set.segments() {
        assert!(
            s.end == EOF || s.end < TAIL,
            "segment end {} is neither a request's end nor the file's end",
            s.end
        );
        for slot in slots(s.start, s.end) {
            m[slot] = Some(s.typ);
        }
    }
    m
}

fn assert_canonical(set: &RangeSet) {
    let segs = set.segments();
    for s in segs {
        assert!(s.start <= s.end, "{s:?}");
        assert!(s.typ == RDLCK || s.typ == WRLCK, "{s:?}");
    }
    for w in segs.windows(2) {
        assert!(w[0].end < w[1].start, "overlap or disorder: {segs:?}");
        assert!(
            !(w[0].typ == w[1].typ && w[0].end + 1 == w[1].start),
            "adjacent segments of one type not merged: {segs:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rangeset_matches_a_byte_model(
        ops in prop::collection::vec(request(), 0..24),
        probes in prop::collection::vec((0..TAIL, end_strategy()), 4),
    ) {
        let mut set = RangeSet::default();
        let mut model: Model = [None; TAIL as usize + 1];
        for (start, end, typ) in ops {
            set.apply(start, end, typ);
            let end = if end >= i64::MAX as u64 { EOF } else { end };
            if start <= end {
                for slot in slots(start, end) {
                    model[slot] = (typ != UNLCK).then_some(typ);
                }
            }
            assert_canonical(&set);
            prop_assert_eq!(expand(&set), model, "after {:?}", (start, end, typ));
            prop_assert_eq!(set.is_empty(), model.iter().all(Option::is_none));
        }
        for (start, end) in probes {
            let held = set.held_within(start, end);
            let mut want: Model = [None; TAIL as usize + 1];
            let end_n = if end >= i64::MAX as u64 { EOF } else { end };
            if start <= end_n {
                for slot in slots(start, end_n) {
                    want[slot] = model[slot];
                }
            }
            let mut got: Model = [None; TAIL as usize + 1];
            for s in &held {
                prop_assert!(s.start <= s.end, "empty segment {:?} from held_within({}, {})", s, start, end);
                prop_assert!(s.start >= start && s.end <= end_n, "{:?} outside {}..={}", s, start, end_n);
                for slot in slots(s.start, s.end) {
                    got[slot] = Some(s.typ);
                }
            }
            prop_assert_eq!(got, want, "held_within({}, {})", start, end);
        }
    }
}
