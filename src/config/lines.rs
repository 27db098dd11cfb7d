//! Finds the line of a path such as `providers.openai.keys[0].weight` in block-style YAML text.
//! When a segment cannot be found (flow style, or a missing key), the parent's line is returned.

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some((n, tail)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Seg::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

impl Line<'_> {
    /// The content after any `- ` list markers, and its column.
    fn inner(&self) -> (usize, &str) {
        let mut col = self.indent;
        let mut text = self.text;
        while let Some(rest) = text.strip_prefix("- ") {
            let trimmed = rest.trim_start();
            col += 2 + rest.len() - trimmed.len();
            text = trimmed;
        }
        (col, text)
    }

    fn has_key(&self, key: &str) -> bool {
        let (_, text) = self.inner();
        [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .any(|p| text.starts_with(p.as_str()))
    }
}

pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let trimmed = l.trim_start();
            (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| Line {
                number: i + 1,
                indent: l.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect();

    let mut found = None;
    let mut pos = 0;
    let mut parent: Option<usize> = None; // indent of the enclosing block
    let mut same_line = false; // after an index, the item's first key is on the dash line
    for seg in segments(path) {
        let inside = |l: &Line, first: bool| match parent {
            None => true,
            Some(p) => l.indent > p || (first && same_line),
        };
        let hit = match seg {
            Seg::Key(key) => lines[pos.min(lines.len())..]
                .iter()
                .enumerate()
                .take_while(|(i, l)| inside(l, *i == 0))
                .find(|(_, l)| l.has_key(key))
                .map(|(i, l)| (pos + i, l.inner().0, false)),
            Seg::Index(n) => {
                // Items are the dash lines at the list's own indent (a list may sit at its key's
                // indent); deeper dash lines belong to lists inside the items.
                let block = &lines[pos.min(lines.len())..];
                let in_list = |l: &Line, first: bool| {
                    inside(l, first) || (parent == Some(l.indent) && l.text.starts_with("- "))
                };
                let item_indent = block
                    .iter()
                    .enumerate()
                    .take_while(|(i, l)| in_list(l, *i == 0))
                    .find(|(_, l)| l.text.starts_with("- "))
                    .map(|(_, l)| l.indent);
                block
                    .iter()
                    .enumerate()
                    .take_while(|(i, l)| in_list(l, *i == 0))
                    .filter(|(_, l)| l.text.starts_with("- ") && Some(l.indent) == item_indent)
                    .nth(n)
                    .map(|(i, l)| (pos + i, l.indent, true))
            }
        };
        let Some((idx, indent, is_index)) = hit else {
            break;
        };
        found = Some(lines[idx].number);
        parent = Some(indent);
        same_line = is_index;
        pos = if is_index { idx } else { idx + 1 };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "\
# comment
listen: x
providers:
  openai:
    kind: openai
    keys:
      - key: a
        weight: 2
      - key: b
  azure:
    kind: azure
models:
  - id: a/b
  - id: c/d
    aliases: [x, y]
";

    #[test]
    fn finds_nested_paths() {
        assert_eq!(line_of(TEXT, "listen"), Some(2));
        assert_eq!(line_of(TEXT, "providers.openai.kind"), Some(5));
        assert_eq!(line_of(TEXT, "providers.openai.keys[0].weight"), Some(8));
        assert_eq!(line_of(TEXT, "providers.openai.keys[1].key"), Some(9));
        assert_eq!(line_of(TEXT, "providers.azure.kind"), Some(11));
        assert_eq!(line_of(TEXT, "models[1].id"), Some(14));
        assert_eq!(line_of(TEXT, "models[1].aliases[1]"), Some(15));
    }

    const RULES: &str = "\
rules:
  - name: a
    match: {model: x}
    targets:
      - to: p/one
      - to: p/two
    fallback: [p/three]
  - name: b
    match:
      type: chatt
    targets:
      - to: p/four
rules2:
- name: c
- name: d
  targets:
  - to: p/five
";

    #[test]
    fn list_items_are_counted_at_their_own_indent() {
        assert_eq!(line_of(RULES, "rules[0].targets[1].to"), Some(6));
        assert_eq!(line_of(RULES, "rules[1].match.type"), Some(10));
        assert_eq!(line_of(RULES, "rules[1].targets[0].to"), Some(12));
        assert_eq!(line_of(RULES, "rules2[1].name"), Some(15));
        assert_eq!(line_of(RULES, "rules2[1].targets[0].to"), Some(17));
    }

    #[test]
    fn missing_key_falls_back_to_parent() {
        assert_eq!(line_of(TEXT, "providers.openai.keys[1].weight"), Some(9));
        assert_eq!(line_of(TEXT, "providers.azure.base_url"), Some(10));
        assert_eq!(line_of(TEXT, "nothing"), None);
    }
}
