//! Bounds checked on a configuration's text before the YAML parser sees it: its size and how
//! deeply it nests. The parser's time grows with the square of the nesting depth (a 200 KB file
//! of nested brackets took 110 s to be refused), and a reload must never spend that long.

use super::locate::Location;

/// Largest configuration file accepted: ample for 10,000 backends with comments.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting accepted, counting flow brackets (`[`, `{`) and block indentation levels.
/// fulcrum's own schema nests about eight deep.
pub const MAX_DEPTH: usize = 64;

/// Where and why `text` is out of bounds, if it is.
pub fn check(text: &str) -> Result<(), (Location, String)> {
    if text.len() > MAX_BYTES {
        return Err((
            Location::START,
            format!(
                "the file is {} bytes, more than the {MAX_BYTES} a configuration may have",
                text.len()
            ),
        ));
    }
    let too_deep = |line: usize, col: usize| {
        Err((
            Location { line, col },
            format!("nested more than {MAX_DEPTH} levels deep"),
        ))
    };
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            if indents.len() > MAX_DEPTH {
                return too_deep(n + 1, indent + 1);
            }
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for (col, c) in line.char_indices() {
            match quote {
                Some(q) if c == q && !(q == '"' && prev == '\\') => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev == ' ' || prev == '\t' || col == 0 => break,
                    '"' | '\'' if flow > 0 || matches!(prev, ' ' | '[' | '{' | ',' | ':') => {
                        quote = Some(c)
                    }
                    '[' | '{' => {
                        flow += 1;
                        if flow + indents.len() > MAX_DEPTH {
                            return too_deep(n + 1, col + 1);
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_configs_pass() {
        for f in ["conf/fulcrum.yaml", "conf/demo.yaml"] {
            let text = std::fs::read_to_string(f).unwrap();
            assert_eq!(check(&text), Ok(()), "{f}");
        }
        assert_eq!(check("a: \"[[[[\"\nb: '{{{{' # [[[[\n"), Ok(()));
    }

    #[test]
    fn deep_brackets_are_refused_where_they_get_too_deep() {
        let text = format!("pools:\n  p: {}", "[".repeat(100_000));
        let (at, msg) = check(&text).unwrap_err();
        assert_eq!(
            at,
            Location {
                line: 2,
                col: 6 + MAX_DEPTH - 2
            }
        );
        assert!(msg.contains("nested more than 64"), "{msg}");
    }

    #[test]
    fn deep_indentation_is_refused() {
        let text: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let (at, _) = check(&text).unwrap_err();
        assert_eq!(at.line, MAX_DEPTH + 1);
    }

    #[test]
    fn huge_files_are_refused() {
        let text = "#".repeat(MAX_BYTES + 1);
        assert!(check(&text).unwrap_err().1.contains("more than"));
    }
}
