//! The JSON Schema printed by `fulcrum schema`, checked with a validator (the jsonschema crate)
//! as an editor's YAML language server would use it: every conf/*.yaml validates; files with
//! shape mistakes do not. Also `fulcrum man` and `fulcrum completions`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::BIN;

fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "fulcrum {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(&run(&["schema"])).unwrap();
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_norway::from_str(yaml).unwrap();
    v.iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_configuration_validates() {
    let v = validator();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&path).unwrap();
            let errs = errors(&v, &yaml);
            assert!(errs.is_empty(), "{}: {errs:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} files in conf/");
}

const BASE: &str = "listeners: [{name: main, listen: 127.0.0.1:8080}]\nroutes: [{pool: web}]\n";

#[test]
fn shape_mistakes_do_not_validate() {
    let v = validator();
    let pools = |pool: &str| format!("{BASE}pools:\n  web: {pool}\n");
    // A valid one first, with the hand-checked values in every accepted form.
    for ok in [
        pools("{backends: [{address: 10.0.0.1:80, weight: 3, name: a}]}"),
        pools("{algorithm: consistent_hash, hash_key: {header: X-User}, backends: [{address: 10.0.0.1:80}]}"),
        pools("{algorithm: ip_hash, hash_key: client_ip, backends: [{address: 10.0.0.1:80}]}"),
        pools("{passive_health: off, backends: [{address: 10.0.0.1:80}]}"),
        pools("{passive_health: {consecutive_failures: 5}, backends: [{address: 10.0.0.1:80}]}"),
        pools("{backends: [{address: app.internal:80, required: true}], discover: {min_ttl: 1s, max_ttl: 5m}}"),
        format!("{}resolvers: [127.0.0.1:8600]\n", pools("{discover: {srv: _http._tcp.app.service.consul, required: false}}")),
    ] {
        assert_eq!(errors(&v, &ok), Vec::<String>::new(), "{ok}");
    }
    for (bad, why) in [
        (format!("{BASE}pools: {{web: {{backends: [{{address: 10.0.0.1:80}}]}}}}\nlistner: []\n"), "unknown top-level key"),
        (pools("{backends: [{address: 10.0.0.1:80, wieght: 2}]}"), "unknown backend key"),
        (pools("{backends: [{address: 10.0.0.1:80, weight: 0}]}"), "weight below 1"),
        (pools("{backends: [{address: 10.0.0.1:80, weight: 300}]}"), "weight above 256"),
        (pools("{backends: [{weight: 1}]}"), "backend without address"),
        (pools("{retries: two, backends: [{address: 10.0.0.1:80}]}"), "retries not a number"),
        (pools("{hash_key: {header: X, cookie: y}, backends: [{address: 10.0.0.1:80}]}"), "two hash keys"),
        (pools("{hash_key: host, backends: [{address: 10.0.0.1:80}]}"), "unknown hash key"),
        (pools("{passive_health: on, backends: [{address: 10.0.0.1:80}]}"), "passive_health: on"),
        (pools("{health_check: {http: {path: /}, intervall: 2s}, backends: [{address: 10.0.0.1:80}]}"), "unknown health_check key"),
        (format!("{BASE}pools: {{}}\n"), "no pool"),
        (pools("{discover: {srv: x.consul, ttl: 5s}}"), "unknown discover key"),
        (pools("{discover: {srv: x.consul, required: yes please}}"), "required not a boolean"),
        (format!("{}resolvers: 127.0.0.1\n", pools("{discover: {srv: x.consul}}")), "resolvers not a list"),
        ("routes: [{pool: web}]\npools: {web: {backends: []}}\nlisteners: []\n".to_string(), "no listener"),
        ("listeners: [{name: main}]\nroutes: [{pool: web}]\npools: {web: {}}\n".to_string(), "listener without listen"),
        ("listeners: [{name: main, listen: 127.0.0.1:80, max_headers: 0}]\nroutes: [{pool: web}]\npools: {web: {backends: [{address: 10.0.0.1:80}]}}\n".to_string(), "max_headers below 1"),
        ("listeners: [{name: main, listen: 127.0.0.1:80, max_header_bytes: 100}]\nroutes: [{pool: web}]\npools: {web: {backends: [{address: 10.0.0.1:80}]}}\n".to_string(), "max_header_bytes below 1 KiB"),
        (pools("{algorithm: fastest, backends: [{address: 10.0.0.1:80}]}"), "unknown algorithm"),
    ] {
        assert!(!errors(&v, &bad).is_empty(), "{why} validated:\n{bad}");
    }
}

#[test]
fn man_page_and_completions() {
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH fulcrum"),
        "{man}"
    );
    for section in ["EXAMPLES", "SIGNALS", "EXIT STATUS", "FILES"] {
        assert!(man.contains(&format!(".SH \"{section}\"")), "{section}");
    }
    assert!(run(&["completions", "bash"]).contains("complete -F"));
    assert!(run(&["completions", "zsh"]).contains("#compdef fulcrum"));
    assert!(run(&["completions", "fish"]).contains("complete -c fulcrum"));
    let help = run(&["--help"]);
    assert!(help.contains("Examples:") && help.contains("Exit status:"));
}

/// The invalid examples of `-t` (tests/invalid/) against the schema: each file says whether an
/// editor would already flag it (`# schema: rejects`: a shape mistake: unknown key, wrong type,
/// out-of-range number) or whether only fulcrum's validation finds its errors (`# schema:
/// accepts`: references between sections, duration ranges, names, files). The schema must agree
/// with every file's line, so a schema that stops catching a shape mistake fails here.
#[test]
fn the_invalid_examples_are_judged_as_they_say() {
    let v = validator();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let yaml = std::fs::read_to_string(&path).unwrap();
        let verdict = yaml
            .lines()
            .find_map(|l| l.strip_prefix("# schema: "))
            .unwrap_or_else(|| panic!("{}: no `# schema:` line", path.display()));
        let Ok(doc) = serde_norway::from_str::<serde_json::Value>(&yaml) else {
            assert!(
                verdict.starts_with("unparsable"),
                "{}: not YAML, but says `{verdict}`",
                path.display()
            );
            checked += 1;
            continue;
        };
        let errs: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        eprintln!("{}: {} schema errors", path.display(), errs.len());
        if verdict.starts_with("rejects") {
            assert!(
                !errs.is_empty(),
                "{}: the schema accepts it",
                path.display()
            );
        } else {
            assert!(
                verdict.starts_with("accepts"),
                "{}: `# schema: {verdict}`",
                path.display()
            );
            assert!(errs.is_empty(), "{}: {errs:#?}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} files in tests/invalid/");
}
