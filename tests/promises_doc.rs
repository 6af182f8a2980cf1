//! `docs/promises.md` names real tests: every `file::test` it cites is a test function in
//! `tests/<file>.rs` (a name ending in `…` is a prefix), so the map cannot silently point at
//! tests that were renamed or removed.

use std::path::Path;

#[test]
fn every_test_the_promises_map_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/promises.md")).unwrap();
    let mut cited = 0;
    for quoted in doc.split('`').skip(1).step_by(2) {
        let Some((file, name)) = quoted.split_once("::") else {
            continue;
        };
        if !file.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let source = root.join("tests").join(format!("{file}.rs"));
        let Ok(source) = std::fs::read_to_string(&source) else {
            panic!("docs/promises.md cites `{quoted}`, but there is no tests/{file}.rs");
        };
        let name = name.trim_start_matches("sqlite::").trim_start_matches("postgres::");
        let found = match name.strip_suffix('…') {
            Some(prefix) => source.contains(&format!("fn {prefix}")),
            None => source.contains(&format!("fn {name}(")),
        };
        assert!(
            found,
            "docs/promises.md cites `{quoted}`, which tests/{file}.rs does not define"
        );
        cited += 1;
    }
    assert!(cited > 40, "the map cites {cited} tests");
}
