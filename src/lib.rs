//! fulcrum: an HTTP load balancer and reverse proxy on Pingora. Data flows one way:
//! YAML -> `config` -> `runtime::Runtime` (routes + pools) -> the request path in `proxy`.

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod health;
pub mod keepalive;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mix;
pub mod parent_ready;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod shutdown;
pub mod strict;
pub mod systemd;
pub mod tls;
