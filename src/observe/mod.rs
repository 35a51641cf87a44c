//! What fulcrum tells the operator: Prometheus metrics, the access log, its own log lines and
//! how often it repeats them. Knows no runtime or request-path types.

pub mod access_log;
pub mod dns_report;
pub mod edge_metrics;
pub mod log_limit;
pub mod logging;
pub mod metrics;
