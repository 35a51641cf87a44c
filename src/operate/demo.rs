//! `fulcrum demo`: three small backends in-process on loopback, each answering with its name,
//! and the proxy on 127.0.0.1:8080 with the embedded demo configuration (conf/demo.yaml).

use std::path::Path;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::Opt;
use pingora::services::listening::Service;

use crate::config;

/// The demo configuration, validated like any file.
pub const DEMO_YAML: &str = include_str!("../../conf/demo.yaml");

/// A backend that answers every request with its name.
struct NamedBackend {
    name: String,
}

#[async_trait]
impl ServeHttp for NamedBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let body = format!("hello from {} (you asked for {path})\n", self.name).into_bytes();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len())
            .header("x-backend", self.name.as_str())
            .body(body)
            .unwrap_or_default()
    }
}

/// Run the demo until interrupted; returns only if it cannot start.
pub fn run() -> Result<std::convert::Infallible, String> {
    let config = config::parse(Path::new("<demo>"), DEMO_YAML).map_err(|e| e.to_string())?;
    let crate::operate::app::Assembled {
        mut server,
        bootstrap,
        ..
    } = crate::operate::app::build_server(Opt::default(), &config)?;
    let pool = config
        .pools
        .first()
        .ok_or("the demo configuration has no pool")?;
    for b in &pool.backends {
        let app = NamedBackend {
            name: b.name.clone(),
        };
        let mut svc = Service::new(format!("demo {}", b.name), app);
        svc.add_tcp(&b.addr.to_string());
        server.add_service(svc).add_dependency(&bootstrap);
    }
    let listen = config
        .listeners
        .first()
        .map(|l| l.addr.to_string())
        .unwrap_or_default();
    let admin = config
        .admin
        .as_ref()
        .map(|a| a.listen.to_string())
        .unwrap_or_default();
    println!(
        "fulcrum demo: proxy on http://{listen}/ balancing over {} built-in backends\n\
         try:     for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done\n\
         metrics: curl -s http://{admin}/metrics | grep ^fulcrum_\n\
         status:  curl -s http://{admin}/status\n\
         stop:    Ctrl-C",
        pool.backends.len()
    );
    server.run_forever()
}
