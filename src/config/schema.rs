//! The JSON Schema of the YAML file (`fulcrum schema`), generated from the serde mirror in
//! `raw.rs` (schemars), for editors: YAML language servers complete keys and flag mistakes
//! while typing. `fulcrum -t` stays the authority: the schema checks shape (keys, types,
//! enumerations, ranges), not meaning (addresses, durations, references between pools and
//! routes). The values `raw.rs` keeps as YAML to check by hand are described here with what
//! the validator accepts.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::raw::{RawAccessLog, RawAdmin, RawBackend, RawListener, RawPassiveHealth, RawPool};
use super::raw::{RawRoute, RawServer};

/// The whole file, as `validate` reads it.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "fulcrum configuration",
    description = "fulcrum's YAML configuration (see conf/fulcrum.yaml, the commented reference). Durations are strings such as 500ms, 2s, 1m, 1h. `fulcrum -c FILE -t` checks everything this schema cannot: addresses, durations, references."
)]
struct RawConfig {
    /// Pingora's process settings (threads, pid_file, upgrade_sock, grace periods, ...).
    server: Option<RawServer>,
    /// The admin listener: GET /metrics, /healthz, /status. Off unless set.
    admin: Option<RawAdmin>,
    /// One JSON object per request. Off unless set.
    access_log: Option<RawAccessLog>,
    /// Where clients connect; names are used in metrics.
    #[schemars(length(min = 1))]
    listeners: Vec<RawListener>,
    /// Checked in order, first match wins; a route without `match` catches everything.
    #[schemars(length(min = 1))]
    routes: Vec<RawRoute>,
    /// Pools of backends, by name.
    #[schemars(extend("minProperties" = 1))]
    pools: BTreeMap<String, RawPool>,
    /// DNS servers for backends given by name and `discover:` (IP or IP:PORT); default: the
    /// system's (/etc/resolv.conf).
    resolvers: Option<Vec<String>>,
}

/// The JSON Schema (draft 2020-12) of the configuration file.
pub fn schema() -> Schema {
    schemars::schema_for!(RawConfig)
}

/// The schema as pretty JSON, as `fulcrum schema` prints it.
pub fn schema_json() -> String {
    serde_json::to_string_pretty(&schema()).unwrap_or_default()
}

/// `{KEY: NAME}`: a map of one key to a non-empty string (`{header: X-User}`, ...).
pub fn named(key: &str) -> Schema {
    json_schema!({
        "type": "object",
        "properties": {key: {"type": "string", "minLength": 1}},
        "required": [key],
        "additionalProperties": false,
    })
}

/// `hash_key:` of a pool.
pub fn hash_key(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What consistent_hash hashes: client_ip, path, uri, or one of {header: NAME}, {cookie: NAME}, {query: NAME}.",
        "oneOf": [
            {"type": "null"},
            {"enum": ["client_ip", "path", "uri"]},
            named("header"),
            named("cookie"),
            named("query"),
        ],
    })
}

/// `backends:` of a pool: a list of backends (each is checked on its own by the validator).
pub fn backends(generator: &mut SchemaGenerator) -> Schema {
    let backend = generator.subschema_for::<RawBackend>();
    json_schema!({
        "description": "The pool's backends (at most 10,000): {address: IP:PORT or NAME:PORT (A/AAAA, re-resolved in the background), weight: 1..256 (default 1), name: NAME (default: the address), required: true|false (names only)}.",
        "type": "array",
        "maxItems": super::validate::MAX_BACKENDS,
        "items": backend,
    })
}

/// `passive_health:` of a pool: `off` (or false), or a map; on with defaults when absent.
pub fn passive_health(generator: &mut SchemaGenerator) -> Schema {
    let map = generator.subschema_for::<RawPassiveHealth>();
    json_schema!({
        "description": "Passive health (on by default: 3 failures in a row eject for 10s): `off` turns it off, a map sets any of its keys.",
        "oneOf": [
            {"type": "null"},
            {"const": "off"},
            {"const": false},
            map,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_every_top_level_key_and_forbids_others() {
        let s = serde_json::to_value(schema()).unwrap();
        let props = s["properties"].as_object().unwrap();
        for key in [
            "server",
            "admin",
            "access_log",
            "listeners",
            "routes",
            "pools",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
        assert_eq!(s["additionalProperties"], false);
    }
}
