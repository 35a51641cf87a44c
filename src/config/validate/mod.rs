//! The validator's entry point: turns the YAML text into a `Config`, collecting every problem
//! (syntax, shape and meaning) with its location instead of stopping at the first. Each
//! section of the file is checked by its own module.

mod acme;
mod affinity;
mod balancing;
mod edge;
mod health;
mod jwt;
mod listeners;
mod parse;
mod pools;
mod process;
mod routes;
mod shape;
mod tls;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde_norway::{Mapping, Value};

use super::locate::{Location, LocationIndex};
use super::model::*;

pub use affinity::MIN_KEY_LEN;
pub use balancing::MAX_BALANCE_FACTOR;
pub use pools::{MAX_BACKENDS, MAX_RETRIES, MAX_WEIGHT};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Key path, e.g. `pools.web.backends[0].weight`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one file; `Display` prints one per line as `FILE:LINE:COL: PATH: message`.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", render(&self.file, p))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn render(file: &str, p: &Problem) -> String {
    let path = if p.path.is_empty() { "(top)" } else { &p.path };
    format!(
        "{file}:{}:{}: {path}: {}",
        p.location.line, p.location.col, p.message
    )
}

/// Collects problems and warnings, locating each by its key path.
struct Checker<'a> {
    index: &'a LocationIndex,
    /// The configuration file's directory: relative file names in it are resolved from here.
    base: std::path::PathBuf,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Key paths whose value had the wrong shape (reported, then read as absent): checks that
    /// compare another key with one of these are skipped rather than judge a default.
    unreadable: HashSet<String>,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let location = self.index.find(&path);
        self.problems.push(Problem {
            location,
            path,
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let location = self.index.find(&path);
        self.warnings.push(Problem {
            location,
            path,
            message: message.into(),
        });
    }

    /// Whether the value at `path` had the wrong shape (see `unreadable`).
    fn unreadable(&self, path: &str) -> bool {
        self.unreadable.contains(path)
    }
}

/// Parse and validate `text` (read from `file`) into a `Config`.
pub fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let file_name = file.display().to_string();
    let fail = |problems| ConfigErrors {
        file: file_name.clone(),
        problems,
    };
    if let Err((location, message)) = super::bounds::check(text) {
        return Err(fail(vec![Problem {
            location,
            path: String::new(),
            message,
        }]));
    }
    let doc: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let location = e
                .location()
                .map(|l| Location {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or(Location::START);
            return Err(fail(vec![Problem {
                location,
                path: String::new(),
                message: format!("invalid YAML: {e}"),
            }]));
        }
    };
    let index = LocationIndex::build(text);
    let mut ck = Checker {
        index: &index,
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        problems: Vec::new(),
        warnings: Vec::new(),
        unreadable: HashSet::new(),
    };
    let config = check_document(&mut ck, file, doc);
    if !ck.problems.is_empty() {
        let mut problems = ck.problems;
        problems.sort_by_key(|p| (p.location.line, p.location.col));
        return Err(fail(problems));
    }
    let mut config = config.ok_or_else(|| fail(Vec::new()))?;
    config.hash = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    config.text = std::sync::Arc::from(text);
    config.warnings = ck.warnings.iter().map(|w| render(&file_name, w)).collect();
    Ok(config)
}

fn check_document(ck: &mut Checker, file: &Path, doc: Value) -> Option<Config> {
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            ck.error(
                "",
                "the file must be a mapping with listeners, routes and pools",
            );
            return None;
        }
    };
    let mut server = None;
    let mut admin = None;
    let mut access_log = None;
    let mut listeners = None;
    let mut routes = None;
    let mut pools = None;
    let mut resolvers = Vec::new();
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_string) else {
            ck.error("", "top-level keys must be strings");
            continue;
        };
        match key.as_str() {
            "server" => server = Some(value),
            "admin" => admin = Some(value),
            "access_log" => access_log = Some(value),
            "listeners" => listeners = Some(value),
            "routes" => routes = Some(value),
            "pools" => pools = Some(value),
            "resolvers" => {
                resolvers =
                    crate::config::discovery::check_resolvers(value, &mut |p, m| ck.error(p, m))
            }
            other => ck.error(
                other,
                format!("unknown key `{other}`, expected one of `server`, `admin`, `access_log`, `listeners`, `routes`, `pools`, `resolvers`"),
            ),
        }
    }
    let server = process::check_server(ck, server);
    let listeners = listeners::check_listeners(ck, listeners);
    let admin = process::check_admin(ck, admin, listeners.as_deref().unwrap_or_default());
    let access_log = process::check_access_log(ck, access_log);
    let (pools, pool_index) = pools::check_pools(ck, pools);
    let routes = routes::check_routes(ck, routes, &pool_index);
    if let (Some(routes), Some(pools)) = (&routes, &pools) {
        let used: HashSet<usize> = routes.iter().map(|r| r.pool).collect();
        for (i, p) in pools.iter().enumerate() {
            if !used.contains(&i) {
                ck.warn(format!("pools.{}", p.name), "no route uses this pool");
            }
        }
    }
    Some(Config {
        source: file.to_path_buf(),
        server: server?,
        listeners: listeners?,
        routes: routes?,
        pools: pools?,
        warnings: Vec::new(),
        hash: String::new(),
        text: std::sync::Arc::from(""),
        admin: admin?,
        access_log: access_log?,
        resolvers,
    })
}

/// The items of a list-valued section; an absent or empty section is reported.
fn list_items(ck: &mut Checker, key: &str, value: Option<Value>) -> Option<Vec<Value>> {
    match value {
        None | Some(Value::Null) => {
            ck.error(key, format!("`{key}` is required and must not be empty"));
            None
        }
        Some(Value::Sequence(items)) if items.is_empty() => {
            ck.error(key, format!("`{key}` must not be empty"));
            None
        }
        Some(Value::Sequence(items)) => Some(items),
        Some(_) => {
            ck.error(key, format!("`{key}` must be a list"));
            None
        }
    }
}

/// Helpers for the sections' unit tests: validate YAML text, read the located problems.
#[cfg(test)]
mod testing {
    use std::path::Path;

    /// A listener and a catch-all route to pool `p`: prepend to a `pools:` section.
    pub const FRONT: &str =
        "listeners: [{name: main, listen: 127.0.0.1:8080}]\nroutes: [{pool: p}]\n";

    /// The problems of `text`, each as `LINE:COL: PATH: message` (empty when it is valid).
    pub fn problems(text: &str) -> Vec<String> {
        problems_in(Path::new("f.yaml"), text)
    }

    /// As `problems`, for a file in `path`'s directory (relative file names resolve there).
    pub fn problems_in(path: &Path, text: &str) -> Vec<String> {
        match super::validate(path, text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}: {}: {}",
                        p.location.line, p.location.col, p.path, p.message
                    )
                })
                .collect(),
        }
    }

    /// The configuration of `text`, which must be valid.
    pub fn valid(text: &str) -> super::Config {
        match super::validate(Path::new("f.yaml"), text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;

    #[test]
    fn unknown_top_level_keys_and_missing_sections_are_located() {
        assert_eq!(
            problems("listeners: [{name: main, listen: 127.0.0.1:8080}]\nextra: 1\n"),
            [
                "1:1: pools: `pools` is required and must not be empty",
                "1:1: routes: `routes` is required and must not be empty",
                "2:1: extra: unknown key `extra`, expected one of `server`, `admin`, `access_log`, `listeners`, `routes`, `pools`, `resolvers`",
            ]
        );
    }

    #[test]
    fn a_syntax_error_is_located() {
        let p = problems("listeners: [\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("2:1: : invalid YAML:"), "{p:?}");
    }

    #[test]
    fn a_valid_file_carries_its_hash_and_warnings() {
        let c = valid(&format!(
            "{FRONT}pools:\n  p: {{backends: [{{address: 127.0.0.1:9}}]}}\n  q: {{backends: [{{address: 127.0.0.1:9}}]}}\n"
        ));
        assert_eq!(c.hash.len(), 64);
        assert_eq!(c.warnings, ["f.yaml:5:3: pools.q: no route uses this pool"]);
    }
}
