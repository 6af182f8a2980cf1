//! tus request headers: `Upload-Metadata`, `Upload-Offset` / `Upload-Length`, `Upload-Checksum`.
//! None may panic; metadata that parses survives encoding and parsing again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udim::formats::tus;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Ok(pairs) = tus::parse_metadata(value) {
        let encoded = tus::encode_metadata(&pairs);
        assert_eq!(tus::parse_metadata(&encoded).as_ref(), Ok(&pairs), "{encoded}");
    }
    if let Ok(size) = tus::parse_size("Upload-Offset", value) {
        assert_eq!(size.to_string().trim_start_matches('0'), value.trim_start_matches('0'));
    }
    let _ = tus::parse_checksum(value);
});
