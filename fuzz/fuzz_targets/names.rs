//! The names and types a client chooses: data categories, labels, file names (as recorded
//! and as written into an export archive) and sniffed content types. Never a panic, and what
//! comes out always keeps the promises the rest of the service relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udim::formats::archive::package_path;
use udim::formats::content::sniff;
use udim::formats::input::{DataCategory, FileName, Label};

fn bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fuzz_target!(|input: (&str, &[u8], [u8; 16])| {
    let (text, bytes, id) = input;

    if let Ok(category) = DataCategory::parse(text) {
        let category: String = category.into();
        assert!((1..=64).contains(&category.len()), "{category:?}");
        assert!(category.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
    }
    if let Ok(label) = Label::parse(text) {
        let label: String = label.into();
        assert!(!label.is_empty() && label.trim() == label && !label.chars().any(char::is_control));
    }

    let name: String = FileName::sanitize(text).into();
    assert!(!name.is_empty() && name.len() <= 255, "{text:?} gave {name:?}");
    assert!(name.trim() == name && name != "." && name != "..", "{text:?} gave {name:?}");
    assert!(!name.contains(['/', '\\']), "{text:?} gave a path: {name:?}");
    assert!(!name.chars().any(|c| c.is_control() || bidi_control(c)), "{text:?} gave {name:?}");

    let id = uuid::Uuid::from_bytes(id);
    let path = package_path(id, &name);
    let rest = path
        .strip_prefix(&format!("files/{id}"))
        .unwrap_or_else(|| panic!("{path:?} is not under files/{id}"));
    if let Some(safe) = rest.strip_prefix('-') {
        assert!(!safe.is_empty() && !safe.starts_with('.'), "{path:?}");
        assert!(safe.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{path:?}");
    } else {
        assert!(rest.is_empty(), "{path:?}");
    }

    if let Some(media_type) = sniff(bytes) {
        assert!(media_type.contains('/'), "{media_type:?}");
    }
});
