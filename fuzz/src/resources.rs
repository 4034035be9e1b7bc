//! Resource files as `posternctl apply` and the control API read them: multi-document YAML
//! (or JSON) into typed resources, then structural validation.
//!
//! Properties: every parse error names a line inside the file (lines as YAML counts them); every parsed document's
//! line is inside the file and its location is printable; validation never panics and
//! every finding names a field.

use postern_common::resources::parse_documents;
use postern_common::resources::validate::validate;

/// Lines as YAML counts them: LF, CRLF, a lone CR, NEL, LS and PS each end a line.
fn yaml_lines(text: &str) -> usize {
    let mut breaks = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
            _ => {}
        }
    }
    breaks + 1
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = yaml_lines(&text);
    match parse_documents("fuzz.yaml", &text) {
        Err(e) => {
            let line = e
                .line
                .unwrap_or_else(|| panic!("error without a line: {e}"));
            assert!(
                (1..=lines + 1).contains(&line),
                "line {line} outside a file of {lines} lines: {e}"
            );
        }
        Ok(docs) => {
            for doc in docs {
                assert!(
                    (1..=lines).contains(&doc.line),
                    "document at line {}",
                    doc.line
                );
                let _ = doc.location();
                for finding in validate(&doc.resource) {
                    assert!(!finding.field.is_empty(), "{finding:?}");
                }
            }
        }
    }
}
