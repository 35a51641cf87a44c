//! The request path: the connection loop, the checks on what a client sends, and the
//! `ProxyHttp` implementation that forwards a request to a backend picked by its pool.

pub mod cache;
pub mod challenge;
pub mod debug_header;
pub mod edge;
pub mod forwarding;
pub mod idle;
pub mod keepalive;
pub mod limits;
pub mod own_response;
pub mod proxy;
pub mod resets;
pub mod strict;
