//! fulcrum's own `BackendSelection` implementations, where Pingora's fall short.

pub mod ketama;
pub mod least_conn;
pub mod smooth;

pub use ketama::Ketama;
pub use least_conn::LeastConnections;
pub use smooth::SmoothWeighted;
