//! fulcrum: an HTTP load balancer and reverse proxy on Pingora. Data flows one way:
//! YAML -> `config` -> `runtime::Runtime` (routes + pools) -> the request path in `serve`.
//! Layers import only downward; ARCHITECTURE.md draws them.

pub mod cli;
pub mod config;
pub mod observe;
pub mod operate;
pub mod pool;
pub mod route;
pub mod runtime;
pub mod serve;
pub mod tls;
