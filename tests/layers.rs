//! The layers of ARCHITECTURE.md, enforced: every `crate::X` path in a file under `src/` names
//! a layer that the file's own layer may import (or its own).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;

/// (layer, the layers it may import), bottom first, as ARCHITECTURE.md's table.
const LAYERS: &[(&str, &[&str])] = &[
    ("tls", &[]),
    ("config", &["tls"]),
    ("observe", &["config"]),
    ("pool", &["config", "observe"]),
    ("edge", &["config", "observe", "pool"]),
    ("route", &["config"]),
    ("runtime", &["config", "observe", "pool", "edge", "route"]),
    (
        "serve",
        &[
            "config", "observe", "pool", "edge", "route", "runtime", "tls",
        ],
    ),
    (
        "operate",
        &[
            "config", "observe", "pool", "edge", "route", "runtime", "serve", "tls",
        ],
    ),
    ("cli", &["config", "ctl"]),
];

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_file_imports_only_its_own_and_lower_layers() {
    let mut all = Vec::new();
    files(Path::new("src"), &mut all);
    assert!(all.len() > 50, "{} files", all.len());
    let mut wrong = Vec::new();
    for path in &all {
        let rel = path.strip_prefix("src").unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let layer = top.trim_end_matches(".rs");
        let Some((_, allowed)) = LAYERS.iter().find(|(l, _)| *l == layer) else {
            // lib.rs and main.rs tie the layers together.
            assert!(["lib", "main"].contains(&layer), "{layer} is in no layer");
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let name: String = rest[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != layer && !allowed.contains(&name.as_str()) {
                    wrong.push(format!(
                        "{}:{}: {layer} uses crate::{name}",
                        path.display(),
                        n + 1
                    ));
                }
                rest = &rest[at + 7..];
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
