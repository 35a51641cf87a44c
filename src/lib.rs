//! fulcrum: an HTTP load balancer and reverse proxy on Pingora. Data flows one way:
//! YAML -> `config` -> `runtime::Runtime` (routes + pools) -> the request path in `serve`.
//! Layers import only downward; ARCHITECTURE.md draws them.

pub mod cli;
pub mod config;
pub(crate) mod observe;
pub(crate) mod operate;
pub mod pool;
pub(crate) mod route;
pub(crate) mod runtime;
pub(crate) mod serve;
pub(crate) mod tls;

/// What the binary calls: logging setup, the demo, and running a validated configuration.
pub use observe::logging::init as init_logging;
pub use operate::app::run;
pub use operate::ctl;
pub use operate::demo::run as run_demo;
pub use operate::diff::describe as describe_changes;
pub use operate::discovery::check_names;
