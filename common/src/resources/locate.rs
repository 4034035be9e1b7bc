//! Finds the line of a field path (`spec.rules[0].condition.match`) in a block-style YAML
//! document, so errors found after parsing (a CEL compile error, a missing Policy) can
//! point at the line as well as the field.

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            out.push(Segment::Index(n.parse().ok()?));
            rest = after;
        }
    }
    Some(out)
}

/// Indentation of a line and its content after any `- ` list markers, with the indentation
/// the content's keys have.
fn shape(line: &str) -> (usize, bool, usize, &str) {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let mut content = &line[indent..];
    let dash = content.starts_with("- ") || content == "-";
    let mut key_indent = indent;
    while let Some(rest) = content.strip_prefix("- ") {
        let spaces = rest.len() - rest.trim_start_matches(' ').len();
        key_indent += 2 + spaces;
        content = &rest[spaces..];
    }
    (indent, dash, key_indent, content)
}

fn is_key(content: &str, key: &str) -> bool {
    let unquoted = content
        .strip_prefix(key)
        .or_else(|| content.strip_prefix(&format!("\"{key}\"")))
        .or_else(|| content.strip_prefix(&format!("'{key}'")));
    unquoted.is_some_and(|r| r.starts_with(':'))
}

/// The 0-based line of `path` within `doc`, or `None` when the document is not laid out in
/// block style deep enough to tell.
pub fn locate_field(doc: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut from = 0usize;
    let mut parent: isize = -1;
    let mut found = None;
    for seg in segments(path)? {
        match seg {
            Segment::Key(k) => {
                let mut hit = None;
                for (j, line) in lines.iter().enumerate().skip(from) {
                    let t = line.trim_start();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let (indent, _, key_indent, content) = shape(line);
                    let effective = if j == from {
                        key_indent
                    } else {
                        indent.max(key_indent)
                    };
                    if j != from && (indent as isize) <= parent {
                        break;
                    }
                    if (effective as isize) > parent && is_key(content, k) {
                        hit = Some((j, key_indent));
                        break;
                    }
                }
                let (j, ki) = hit?;
                found = Some(j);
                from = j + 1;
                parent = ki as isize;
            }
            Segment::Index(i) => {
                let mut count = 0;
                let mut hit = None;
                let mut list_indent = None;
                for (j, line) in lines.iter().enumerate().skip(from) {
                    let t = line.trim_start();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let (indent, dash, _, _) = shape(line);
                    if (!dash && (indent as isize) <= parent) || (indent as isize) < parent {
                        break;
                    }
                    if dash && list_indent.is_none_or(|li| li == indent) {
                        list_indent = Some(indent);
                        if count == i {
                            hit = Some((j, indent));
                            break;
                        }
                        count += 1;
                    }
                }
                let (j, indent) = hit?;
                found = Some(j);
                from = j;
                parent = indent as isize;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::locate_field;

    const DOC: &str = "kind: Service
metadata:
  name: s
spec:
  config:
    upstream:
      url: http://x
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: a
            - effect: DENY
              condition:
                all:
                  of:
                    - match: b
                    - match: c
";

    #[test]
    fn finds_nested_keys_and_list_items() {
        assert_eq!(locate_field(DOC, "spec.config.upstream.url"), Some(6));
        assert_eq!(
            locate_field(
                DOC,
                "spec.authorization.inlinePolicies[0].spec.rules[0].condition.match"
            ),
            Some(13)
        );
        assert_eq!(
            locate_field(
                DOC,
                "spec.authorization.inlinePolicies[0].spec.rules[1].condition.all.of[1].match"
            ),
            Some(19)
        );
        assert_eq!(
            locate_field(DOC, "spec.authorization.inlinePolicies[0].spec.rules[2]"),
            None
        );
        assert_eq!(locate_field(DOC, "spec.nope"), None);
    }

    #[test]
    fn lists_at_the_parent_indentation() {
        let doc = "spec:\n  rules:\n  - effect: ALLOW\n    condition:\n      match: x\n  - effect: DENY\n    condition:\n      not: y\n";
        assert_eq!(locate_field(doc, "spec.rules[1].condition.not"), Some(7));
        assert_eq!(locate_field(doc, "spec.rules[0].condition.match"), Some(4));
    }
}
