//! Small user-supplied values, parsed into types that cannot hold an invalid one (pure).
//!
//! Each type's only constructor checks its rules, so a `DataCategory` or a `UserId` that
//! reaches the pipeline or a port is valid by construction; they dereference to `str` for the
//! ports, which store them as text.

use std::fmt;
use std::ops::Deref;

/// The shared plumbing of a string newtype: read access, display, serialization as the
/// plain string.
macro_rules! string_value {
    ($name:ident) => {
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

/// A data category: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataCategory(String);
string_value!(DataCategory);

impl DataCategory {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
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
        Ok(Self(s.to_owned()))
    }
}

/// A free-text label (purpose, recipient, policy version, jurisdiction, ...): 1–256
/// characters, no control characters, no surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(String);
string_value!(Label);

impl Label {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || s.len() > 256 {
            return Err("must be 1-256 characters");
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        if s.trim() != s {
            return Err("must not start or end with whitespace");
        }
        Ok(Self(s.to_owned()))
    }
}

/// The person a request acts for: a JWT `sub`, 1–255 printable characters. Every query is
/// scoped to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);
string_value!(UserId);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() > 255 {
            return Err("must be at most 255 bytes");
        }
        Label::parse(s).map(|label| Self(label.0))
    }
}

/// A client's retry key for a simple upload (`Idempotency-Key`): 1–255 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);
string_value!(IdempotencyKey);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match Label::parse(s) {
            Ok(label) if label.len() <= 255 => Ok(Self(label.0)),
            _ => Err("must be 1-255 printable characters"),
        }
    }
}

/// The file name to record for an upload: Unicode NFC, the last path component, control and
/// bidirectional-override characters removed, at most 255 bytes (cut at a character
/// boundary). Never empty: anything can be made into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName(String);
string_value!(FileName);

impl FileName {
    pub fn sanitize(raw: &str) -> Self {
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
        // The cut may end on a space; `cleaned` starts with none, so something is left.
        Self(cleaned[..end].trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_categories_are_a_small_safe_alphabet() {
        assert!(DataCategory::parse("audio").is_ok());
        assert!(DataCategory::parse("text.chat-export_2").is_ok());
        for bad in ["", "Audio", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(DataCategory::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_user_ids_and_idempotency_keys_refuse_control_characters_and_padding() {
        for bad in ["", " x", "x ", "a\u{7}b", "a\nb"] {
            assert!(Label::parse(bad).is_err(), "{bad:?}");
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Label::parse(&"x".repeat(256)).is_ok());
        assert!(UserId::parse(&"x".repeat(256)).is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(256)).is_err());
        assert_eq!(&*UserId::parse("auth0|alice").unwrap(), "auth0|alice");
    }

    fn file_name(raw: &str) -> String {
        FileName::sanitize(raw).into()
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
