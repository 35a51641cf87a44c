//! The configuration loader fed with mutated YAML: the two shipped files (`conf/fulcrum.yaml`,
//! `conf/demo.yaml`) with lines deleted, duplicated and swapped, scalars changed to other
//! types, garbage characters inserted, deep nesting, huge numbers and Unicode. Whatever the
//! text, `fulcrum::config::parse` returns (never panics), and every error it reports is
//! located (line >= 1, within the file) with a message. A mutation that keeps the file valid
//! (a weight within 1..=256) keeps it valid. Only the two files are read, once; the cases
//! themselves do no I/O of their own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fulcrum::config::{parse, LoadError};
use proptest::prelude::*;

fn files() -> &'static [(&'static str, String); 2] {
    static FILES: OnceLock<[(&'static str, String); 2]> = OnceLock::new();
    FILES.get_or_init(|| {
        let read = |name: &'static str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
            (name, std::fs::read_to_string(path).expect("conf file"))
        };
        [read("conf/fulcrum.yaml"), read("conf/demo.yaml")]
    })
}

/// One edit of the file's lines. Indices are taken modulo the number of lines.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replace the value after the line's first `: ` (or the whole line) with another scalar,
    /// collection or YAML oddity.
    Scalar(usize, String),
    /// Insert these characters at a byte offset (rounded down to a character boundary).
    Garbage(usize, usize, String),
    /// Replace the value with brackets nested this deep.
    Nest(usize, usize, bool),
    /// Indent the line by this many more spaces, or a tab.
    Indent(usize, usize, bool),
    /// Cut the file here (a byte offset, rounded down to a character boundary).
    Truncate(usize),
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "-1",
            "0",
            "65536",
            "99999999999999999999999999999999999999",
            "18446744073709551616",
            "-9223372036854775809",
            "1e400",
            "-.inf",
            ".nan",
            "0x7fffffffffffffff",
            "0o777",
            "3.5",
            "null",
            "~",
            "true",
            "no",
            "''",
            "\"\"",
            "[]",
            "{}",
            "[1, [2, {a: b}]]",
            "{address: 1, weight: x}",
            "!!binary AAAA",
            "!!str 5",
            "!custom x",
            "&a 1",
            "*a",
            "*undefined",
            "<<: *a",
            "|\n  block",
            ">-",
            "- a",
            "? complex",
            "\"é✓ 𝄞 \\u0000\"",
            "\u{feff}bom",
            "\"\\xff\"",
            "'unterminated",
            "\"unterminated",
            "[unterminated",
            "{unterminated",
            "999ms",
            "1h1h",
            "-5s",
            "18446744073709551615s",
            "0s",
            "256.0.0.1:80",
            "[::1]:99999",
            "127.0.0.1:0",
        ])
        .prop_map(String::from),
        "\\PC{0,20}",
        any::<i128>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        3 => (any::<usize>(), scalar()).prop_map(|(i, s)| Mutation::Scalar(i, s)),
        2 => (any::<usize>(), any::<usize>(), "[\\x00-\\x1f:{}\\[\\]#&*!|>'\"%@`,?\\-é✓\u{7f}\u{85}\u{2028}\u{feff} ]{1,6}")
            .prop_map(|(i, at, g)| Mutation::Garbage(i, at, g)),
        1 => (any::<usize>(), 1usize..300, any::<bool>()).prop_map(|(i, d, flow)| Mutation::Nest(i, d, flow)),
        1 => (any::<usize>(), 1usize..6, any::<bool>()).prop_map(|(i, n, tab)| Mutation::Indent(i, n, tab)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::Swap(a, b) => lines.swap(a % n, b % n),
            Mutation::Scalar(i, value) => {
                let line = &mut lines[i % n];
                *line = match line.find(": ") {
                    Some(colon) => format!("{}: {value}", &line[..colon]),
                    None => value.clone(),
                };
            }
            Mutation::Garbage(i, at, garbage) => {
                let line = &mut lines[i % n];
                let at = floor_boundary(line, *at);
                line.insert_str(at, garbage);
            }
            Mutation::Nest(i, depth, flow) => {
                let line = &mut lines[i % n];
                let key = line
                    .find(": ")
                    .map_or(String::new(), |c| line[..c + 2].to_string());
                let value = if *flow {
                    format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth))
                } else {
                    format!("{}1{}", "{a: ".repeat(*depth), "}".repeat(*depth))
                };
                *line = format!("{key}{value}");
            }
            Mutation::Indent(i, spaces, tab) => {
                let pad = if *tab {
                    "\t".to_string()
                } else {
                    " ".repeat(*spaces)
                };
                lines[i % n].insert_str(0, &pad);
            }
            Mutation::Truncate(at) => {
                let joined = lines.join("\n");
                let at = floor_boundary(&joined, *at);
                lines = joined[..at].lines().map(str::to_string).collect();
            }
        }
    }
    lines.join("\n") + "\n"
}

/// Parse `text` as `name`; every error must be located inside the text and say something.
fn check_located(name: &str, text: &str) -> Result<bool, TestCaseError> {
    let start = Instant::now();
    let result = parse(Path::new(name), text);
    let took = start.elapsed();
    // Lines as YAML counts them (a lone CR, NEL, LS and PS break lines too), or as `lines()`
    // does: a location may be in either, and at most one past the last line.
    let yaml_lines = text
        .replace("\r\n", "\n")
        .split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        .count();
    let lines = text.lines().count().max(yaml_lines).max(1);
    match result {
        Ok(_) => Ok(true),
        Err(LoadError::Read(msg)) => Err(TestCaseError::fail(format!(
            "parse reported a read error for text it was given: {msg}"
        ))),
        Err(LoadError::Invalid(errors)) => {
            prop_assert!(
                !errors.problems.is_empty(),
                "invalid without a problem (parse took {took:?})"
            );
            for p in &errors.problems {
                prop_assert!(
                    p.location.line >= 1 && p.location.line <= lines + 1 && p.location.col >= 1,
                    "problem outside the file's {lines} lines: {p:?} (parse took {took:?})\n{text}"
                );
                prop_assert!(
                    !p.message.trim().is_empty(),
                    "problem without a message: {p:?} (parse took {took:?})"
                );
            }
            Ok(false)
        }
    }
}

/// Both shipped files as they are: demo.yaml is valid; fulcrum.yaml is valid today (its TLS
/// listener, which names certificate files, is commented out), and were it to name files this
/// machine lacks, its errors would still have to be located.
#[test]
fn the_shipped_files_parse_or_fail_located() {
    let [(_, reference), (_, demo)] = files();
    let demo_ok = check_located("conf/demo.yaml", demo).expect("demo.yaml");
    assert!(demo_ok, "conf/demo.yaml must be valid");
    check_located("conf/fulcrum.yaml", reference).expect("fulcrum.yaml");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Up to four mutations of either file: never a panic, every error located.
    #[test]
    fn mutated_configurations_fail_located(
        which in 0usize..2,
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let (name, text) = &files()[which];
        let mutated = apply(text, &mutations);
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| check_located(name, &mutated));
        let took = start.elapsed();
        match outcome {
            Ok(result) => {
                result?;
            }
            Err(_) => {
                return Err(TestCaseError::fail(format!(
                    "parse panicked after {took:?} on {mutations:?}:\n{mutated}"
                )));
            }
        }
        // reported, not asserted: a slow case shows in the failure output of any other check
        if took > Duration::from_secs(1) {
            eprintln!("slow case: {took:?} for {mutations:?}");
        }
    }

    /// A whole file of garbage, and huge or deep documents made from scratch.
    #[test]
    fn arbitrary_text_fails_located(text in "\\PC{0,400}") {
        check_located("garbage.yaml", &text)?;
    }

    /// demo.yaml with its weights set to anything in 1..=256 and its backends listed in any
    /// order stays valid.
    #[test]
    fn valid_mutations_stay_valid(
        weights in proptest::array::uniform3(1u32..=256),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
    ) {
        let (_, demo) = &files()[1];
        let lines: Vec<&str> = demo.lines().collect();
        let backend_lines: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("- {address:"))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(backend_lines.len(), 3);
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for (slot, &from) in order.iter().enumerate() {
            let line = lines[backend_lines[from]];
            let line = match line.find(", weight: ") {
                Some(w) => {
                    let end = line[w + 10..].find(|c: char| !c.is_ascii_digit()).map_or(line.len(), |e| w + 10 + e);
                    format!("{}, weight: {}{}", &line[..w], weights[from], &line[end..])
                }
                None => line.replace('}', &format!(", weight: {}}}", weights[from])),
            };
            out[backend_lines[slot]] = line;
        }
        let text = out.join("\n") + "\n";
        prop_assert!(check_located("conf/demo.yaml", &text)?, "became invalid:\n{}", text);
    }
}
