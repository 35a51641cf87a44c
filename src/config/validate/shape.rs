//! Shape errors, in fulcrum's words: each section element is deserialized into its raw serde
//! type; a key of the wrong type or an unknown key is reported (`retries: a whole number from 0
//! to 10, got -1`), taken out, and the element read again, so that one bad key hides none of
//! the element's other problems. Also the ranges of whole-number settings, worded the same for
//! a value of the wrong type and a number out of range.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_norway::Value;
use serde_path_to_error::Segment;

use super::parse::join;
use super::Checker;

/// Most keys taken out of one element before giving up on it: each round reads the element
/// again (a pool's backends included), and a hundred problems in one map are plenty to show.
const MAX_ROUNDS: usize = 100;

/// One step of a key path below an element.
enum Seg {
    Key(String),
    Index(usize),
}

fn path_of(base: &str, segs: &[Seg]) -> String {
    segs.iter().fold(base.to_string(), |p, s| match s {
        Seg::Key(k) => join(&p, k),
        Seg::Index(i) => format!("{p}[{i}]"),
    })
}

impl Checker<'_> {
    /// Deserialize one section element (at `path`) into its raw type. Every shape error is
    /// reported at its key, which is then read as absent (and noted as unreadable), so the
    /// element's other keys are still checked. None only when the element cannot be read at
    /// all: it is not a map, or a required key is missing.
    pub(super) fn parse<T: DeserializeOwned>(&mut self, path: &str, mut value: Value) -> Option<T> {
        for _ in 0..MAX_ROUNDS {
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut segs: Vec<Seg> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Map { key } => Some(Seg::Key(key.clone())),
                    _ => None,
                })
                .collect();
            let message = err.into_inner().to_string();
            let problem = if let Some(field) = quoted_after(&message, "unknown field `") {
                if !matches!(segs.last(), Some(Seg::Key(k)) if k == field) {
                    segs.push(Seg::Key(field.to_string()));
                }
                Some(match message.split_once(", expected ") {
                    Some((_, keys)) => format!("unknown key `{field}`, expected {keys}"),
                    None => format!("unknown key `{field}`: this map takes no keys"),
                })
            } else if let Some(field) = quoted_after(&message, "missing field `") {
                // Missing because its value was taken out above: already reported.
                let taken = path_of(&path_of(path, &segs), &[Seg::Key(field.to_string())]);
                (!self.unreadable(&taken)).then(|| format!("`{field}` is required"))
                // The map that lacks it is taken out below (the element, if it is the element).
            } else if message.ends_with(", expected field identifier") {
                Some("every key must be a string".to_string())
            } else if let Some((_, expected)) = message.rsplit_once(", expected ") {
                // The key whose value is wrong ("": the element itself, worded by its type).
                let key = segs
                    .iter()
                    .rev()
                    .find_map(|s| match s {
                        Seg::Key(k) => Some(k.as_str()),
                        Seg::Index(_) => None,
                    })
                    .unwrap_or("");
                let item = matches!(segs.last(), Some(Seg::Index(_)));
                let got = node(&value, &segs).map_or_else(|| "something else".into(), describe);
                Some(format!("{}, got {got}", expectation(key, item, expected)))
            } else {
                Some(message)
            };
            if let Some(problem) = problem {
                self.error(path_of(path, &segs), problem);
            }
            // Take out the key in error (for an item of a list: the whole list), read again.
            let k = segs.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
            let (parent, rest) = segs.split_at(k);
            let Some(Seg::Key(key)) = rest.first() else {
                return None;
            };
            node_mut(&mut value, parent)
                .and_then(Value::as_mapping_mut)
                .and_then(|m| m.remove(key.as_str()))?;
            self.unreadable
                .insert(path_of(path, segs.get(..=k).unwrap_or(&segs)));
        }
        None
    }

    /// Check a whole-number setting against its range (see `whole`); false when it is out of
    /// range (then reported).
    pub(super) fn in_range(&mut self, path: &str, value: i128) -> bool {
        let key = path.rsplit('.').next().unwrap_or(path);
        match whole(key) {
            Some(w) if !w.contains(value) => {
                self.error(path, format!("{w}, got {value}"));
                false
            }
            _ => true,
        }
    }
}

/// The name in `prefix NAME\`...` (serde's "unknown field `x`", "missing field `x`").
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

fn node<'v>(value: &'v Value, segs: &[Seg]) -> Option<&'v Value> {
    segs.iter().try_fold(value, |v, s| match s {
        Seg::Key(k) => v.get(k.as_str()),
        Seg::Index(i) => v.get(*i),
    })
}

fn node_mut<'v>(value: &'v mut Value, segs: &[Seg]) -> Option<&'v mut Value> {
    segs.iter().try_fold(value, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

/// A YAML value as a problem quotes it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("`{}...`", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a map".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// The keys whose values are durations.
const DURATIONS: &[&str] = &[
    "keepalive_timeout",
    "header_timeout",
    "body_timeout",
    "slow_start",
    "ewma_decay",
    "max_age",
    "interval",
    "timeout",
    "ejection_time",
    "max_ejection_time",
    "window",
    "connect",
    "read",
    "write",
    "idle",
    "request",
];

/// What the value of `key` must be; `item`: of an item of its list. `expected` is serde's
/// name of the type, the fallback.
fn expectation(key: &str, item: bool, expected: &str) -> String {
    if matches!(key, "expect_status" | "fail_on_status") {
        return if item {
            "an HTTP status (100-599)".into()
        } else {
            "a list of HTTP statuses (100-599)".into()
        };
    }
    if let Some(w) = whole(key) {
        return w.to_string();
    }
    if DURATIONS.contains(&key) {
        return "a duration such as `500ms`, `2s`, `1m` or `1h`".into();
    }
    match key {
        "balance_factor" => {
            return format!(
                "a number above 1 and at most {}",
                super::balancing::MAX_BALANCE_FACTOR
            )
        }
        "ratio" => return "a number from 0 to 1".into(),
        _ => {}
    }
    match expected {
        "a string" => "a string",
        "a boolean" => "true or false",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        e if e.starts_with("struct ") || e == "a map" => "a map",
        other => other,
    }
    .to_string()
}

/// The accepted range of a whole-number setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Whole {
    pub min: u64,
    /// `u64::MAX`: no upper bound of fulcrum's own.
    pub max: u64,
}

impl Whole {
    pub fn contains(self, v: i128) -> bool {
        (i128::from(self.min)..=i128::from(self.max)).contains(&v)
    }
}

impl fmt::Display for Whole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max == u64::MAX {
            write!(f, "a whole number, at least {}", self.min)
        } else {
            write!(f, "a whole number from {} to {}", self.min, self.max)
        }
    }
}

/// The range of each whole-number key: the one the sections enforce, so that `retries: -1` and
/// `retries: 11` read alike.
pub(super) fn whole(key: &str) -> Option<Whole> {
    use super::health::{MAX_EJECTED_PERCENT, MAX_THRESHOLD};
    use super::listeners::{MAX_CONNECTIONS, MAX_HEADERS, MAX_HEADER_BYTES, MIN_HEADER_BYTES};
    use super::pools::{MAX_H2_STREAMS, MAX_MIN_PER_SECOND, MAX_RETRIES, MAX_WEIGHT};
    let (min, max) = match key {
        "retries" => (0, u64::from(MAX_RETRIES)),
        "weight" => (1, MAX_WEIGHT as u64),
        "threads" | "upstream_keepalive_pool_size" | "listener_tasks_per_fd" => (1, u64::MAX),
        "grace_period_seconds"
        | "graceful_shutdown_timeout_seconds"
        | "daemon_ready_timeout_seconds" => (0, u64::MAX),
        "healthy_threshold" | "unhealthy_threshold" => (1, u64::from(MAX_THRESHOLD)),
        "consecutive_failures" => (1, u64::MAX),
        "max_ejected_percent" => (0, u64::from(MAX_EJECTED_PERCENT)),
        "min_per_second" => (0, u64::from(MAX_MIN_PER_SECOND)),
        "max_h2_streams" => (1, MAX_H2_STREAMS as u64),
        "max_header_bytes" => (MIN_HEADER_BYTES, MAX_HEADER_BYTES),
        "max_headers" => (1, MAX_HEADERS),
        "max_connections" | "max_connections_per_ip" => (1, MAX_CONNECTIONS),
        _ => return None,
    };
    Some(Whole { min, max })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn nested_shape_errors_are_each_reported_once() {
        let p = problems(&format!(
            "{FRONT}pools:\n  p:\n    backends: 5\n    health_check: {{1: x, tcp: {{}}}}\n    timeouts: {{connect: [1s]}}\n    affinity: {{cookie: [a]}}\n    passive_health: {{ejection_time: {{a: b}}, max_ejection_time: 1s}}\n"
        ));
        assert_eq!(
            p,
            [
                "5:5: pools.p.backends: a list, got 5",
                "6:5: pools.p.health_check: every key must be a string",
                "7:16: pools.p.timeouts.connect: a duration such as `500ms`, `2s`, `1m` or `1h`, got a list",
                // taken out, `cookie` is not reported missing as well
                "8:16: pools.p.affinity.cookie: a string, got a list",
                // nor is `max_ejection_time` compared with a default `ejection_time`
                "9:22: pools.p.passive_health.ejection_time: a duration such as `500ms`, `2s`, `1m` or `1h`, got a map",
            ]
        );
    }

    #[test]
    fn an_element_of_the_wrong_type_is_worded_by_its_type_not_its_name() {
        let p = problems(&format!(
            "{FRONT}pools: {{p: {{backends: [{{address: 127.0.0.1:9}}]}}, retries: 5}}\n"
        ));
        assert_eq!(p, ["3:50: pools.retries: a map, got 5"]);
    }

    #[test]
    fn a_missing_key_is_located_at_its_map() {
        let p = problems(
            "listeners: [{name: main, listen: 127.0.0.1:8080, tls: {certificates: [{cert: a}]}}, {name: x}]\nroutes: [{pool: p}]\npools: {p: {backends: [{address: 127.0.0.1:9}]}}\n",
        );
        assert_eq!(
            p,
            [
                "1:71: listeners[0].tls.certificates[0]: `key` is required",
                "1:85: listeners[1]: `listen` is required",
            ]
        );
    }
}
