//! Content validation (pure): the real type sniffed from magic bytes, checked against a
//! per-data-category allow-list, with per-category size caps.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Bytes of an upload inspected to sniff its type.
pub const SNIFF_LEN: usize = 8192;

/// What one data category admits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CategoryPolicy {
    /// Media types or `type/*` patterns; `*/*` admits anything.
    pub allowed_types: Vec<String>,
    /// A cap below the global `upload.max_bytes`.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Packages of this category are erased this many days after their upload.
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// What happens when the declared `Content-Type` and the sniffed type disagree.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MismatchPolicy {
    /// Admit (if the sniffed type is allowed) and record both types.
    #[default]
    Record,
    /// Refuse with 415.
    Reject,
}

/// Why content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentRejection {
    #[error("content of type `{found}` is not accepted for data category `{category}`")]
    TypeNotAllowed { category: String, found: String },
    #[error("the declared type `{declared}` does not match the content, which is `{sniffed}`")]
    Mismatch { declared: String, sniffed: String },
}

/// The content rules of every category.
#[derive(Debug, Clone, Default)]
pub struct ContentPolicy {
    pub categories: BTreeMap<String, CategoryPolicy>,
    pub mismatch: MismatchPolicy,
}

fn matches(pattern: &str, media_type: &str) -> bool {
    match pattern.split_once('/') {
        Some(("*", "*")) => true,
        Some((top, "*")) => media_type.split_once('/').is_some_and(|(t, _)| t == top),
        _ => pattern == media_type,
    }
}

/// The type of `prefix` (the first bytes of a file) from its magic bytes; UTF-8 text without
/// control characters is `text/plain`. `None` when nothing is recognized.
pub fn sniff(prefix: &[u8]) -> Option<String> {
    if let Some(kind) = infer::get(prefix) {
        return Some(kind.mime_type().to_owned());
    }
    if prefix.is_empty() {
        return None;
    }
    // A multi-byte character may be cut at the end of the prefix.
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&prefix[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    if text.is_empty() {
        return None;
    }
    let binary = text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}'));
    (!binary).then(|| "text/plain".to_owned())
}

impl ContentPolicy {
    /// The category's own size cap, if it has one.
    pub fn max_bytes(&self, category: &str) -> Option<u64> {
        self.categories.get(category).and_then(|c| c.max_bytes)
    }

    /// Checks an upload's declared and sniffed types. Categories without rules admit any
    /// type. `application/octet-stream` declares nothing, so it never mismatches.
    pub fn check(&self, category: &str, declared: &str, sniffed: Option<&str>) -> Result<(), ContentRejection> {
        if let (MismatchPolicy::Reject, Some(sniffed)) = (self.mismatch, sniffed)
            && declared != "application/octet-stream"
            && declared != sniffed
        {
            return Err(ContentRejection::Mismatch {
                declared: declared.to_owned(),
                sniffed: sniffed.to_owned(),
            });
        }
        let Some(rules) = self.categories.get(category) else {
            return Ok(());
        };
        let effective = sniffed.unwrap_or(declared);
        if rules.allowed_types.iter().any(|p| matches(p, effective)) {
            Ok(())
        } else {
            Err(ContentRejection::TypeNotAllowed {
                category: category.to_owned(),
                found: effective.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mismatch: MismatchPolicy) -> ContentPolicy {
        let mut categories = BTreeMap::new();
        categories.insert(
            "images".to_owned(),
            CategoryPolicy {
                allowed_types: vec!["image/*".into()],
                max_bytes: Some(10),
                retention_days: None,
            },
        );
        categories.insert(
            "documents".to_owned(),
            CategoryPolicy {
                allowed_types: vec!["application/pdf".into(), "text/*".into()],
                max_bytes: None,
                retention_days: None,
            },
        );
        ContentPolicy { categories, mismatch }
    }

    #[test]
    fn magic_bytes_and_text_are_recognized() {
        assert_eq!(sniff(b"%PDF-1.7\n...").as_deref(), Some("application/pdf"));
        assert_eq!(
            sniff(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0]).as_deref(),
            Some("image/png")
        );
        assert_eq!(sniff("héllo\nwörld".as_bytes()).as_deref(), Some("text/plain"));
        assert_eq!(
            sniff(&"é".as_bytes()[..1]).as_deref(),
            None,
            "a lone cut byte is nothing"
        );
        assert_eq!(sniff(&[0, 1, 2, 3, 0xff]).as_deref(), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn allow_lists_use_the_sniffed_type_and_patterns() {
        let p = policy(MismatchPolicy::Record);
        assert!(p.check("images", "image/png", Some("image/png")).is_ok());
        assert!(
            p.check("images", "image/png", Some("application/pdf")).is_err(),
            "a PDF named .png"
        );
        assert!(
            p.check("documents", "application/octet-stream", Some("text/plain"))
                .is_ok()
        );
        assert!(p.check("documents", "application/x-msdownload", None).is_err());
        assert!(p.check("unconfigured", "anything/at-all", None).is_ok());
        assert_eq!(p.max_bytes("images"), Some(10));
        assert_eq!(p.max_bytes("documents"), None);
    }

    #[test]
    fn a_mismatch_is_refused_only_under_the_reject_policy() {
        let declared_png_is_pdf = ("documents", "image/png", Some("application/pdf"));
        let (c, d, s) = declared_png_is_pdf;
        assert!(policy(MismatchPolicy::Record).check(c, d, s).is_ok());
        assert!(matches!(
            policy(MismatchPolicy::Reject).check(c, d, s),
            Err(ContentRejection::Mismatch { .. })
        ));
        assert!(
            policy(MismatchPolicy::Reject)
                .check(c, "application/octet-stream", s)
                .is_ok()
        );
    }
}
