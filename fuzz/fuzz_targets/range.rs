//! `Range` headers against representations of any size: never a panic, and a part that is
//! served always lies inside the representation and is not empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udim::formats::range::ByteRange;

fuzz_target!(|input: (u64, &str)| {
    let (size, header) = input;
    let Some(range) = ByteRange::parse(header) else { return };
    if let Ok(Some((start, end))) = range.resolve(size) {
        assert!(start < end && end <= size, "{header:?} of {size}: {start}..{end}");
    }
});
