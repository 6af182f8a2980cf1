//! Parsing of small user-supplied strings (pure).

/// A data category: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn data_category(s: &str) -> Result<(), &'static str> {
    let ok_start = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if s.is_empty() || s.len() > 64 || !ok_start || !ok_chars {
        return Err("must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit");
    }
    Ok(())
}

/// A free-text label (purpose, policy version, jurisdiction, ...): 1–256 characters, no
/// control characters, no surrounding whitespace.
pub fn label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 256 {
        return Err("must be 1-256 characters");
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if s.trim() != s {
        return Err("must not start or end with whitespace");
    }
    Ok(())
}

/// The file name to record for an upload: Unicode NFC, the last path component, control and
/// bidirectional-override characters removed, at most 255 bytes (cut at a character
/// boundary). Never empty.
pub fn file_name(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let normalized: String = raw.nfc().collect();
    let last = normalized.rsplit(['/', '\\']).next().unwrap_or_default();
    // Bidi controls can make `exe.pdf` display as `fdp.exe`; they have no place in a name.
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let cleaned = cleaned.trim();
    let cleaned = if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload"
    } else {
        cleaned
    };
    let mut end = cleaned.len().min(255);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    cleaned[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_categories_are_a_small_safe_alphabet() {
        assert!(data_category("audio").is_ok());
        assert!(data_category("text.chat-export_2").is_ok());
        for bad in ["", "Audio", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(data_category(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_lose_paths_and_control_characters() {
        assert_eq!(file_name("../../etc/passwd"), "passwd");
        assert_eq!(file_name("C:\\Users\\a\\cv.pdf"), "cv.pdf");
        assert_eq!(file_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(file_name(".."), "upload");
        assert_eq!(file_name("cafe\u{301}.txt"), "caf\u{e9}.txt", "NFC");
        assert_eq!(
            file_name("invoice\u{202e}fdp.exe"),
            "invoicefdp.exe",
            "no bidi override"
        );
        assert_eq!(file_name(""), "upload");
        let long = "é".repeat(200);
        let cut = file_name(&long);
        assert!(cut.len() <= 255 && cut.chars().all(|c| c == 'é'));
    }
}
