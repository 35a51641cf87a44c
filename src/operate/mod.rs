//! Running the process: assembling the Pingora server, reload, upgrade hand-over, shutdown,
//! systemd, the admin listener, the health-check service, and the demo.

pub mod acme;
pub mod admin;
pub mod api;
pub mod app;
pub mod backend_metrics;
pub mod certificates;
pub mod ctl;
pub mod demo;
pub mod diff;
pub mod discovery;
pub mod dns;
pub mod health;
pub mod parent_ready;
pub mod ready_line;
pub mod reload;
pub mod shutdown;
pub mod status_page;
pub mod systemd;
