//! Assembles the Pingora server from a validated `Config`: the ServerConf, the proxy service
//! with its listeners, and the shared runtime snapshot.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use std::sync::atomic::AtomicBool;

use pingora::services::listening::Service;
use pingora::services::ServiceHandle;

use crate::access_log;
use crate::admin::{AdminApp, DrainWatch};
use crate::config::{Config, ServerSettings};
use crate::health::HealthService;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::ReloadService;
use crate::runtime::{Runtime, SharedRuntime};

/// fulcrum's defaults where Pingora's do not suit a load balancer (see README, "server").
pub fn server_conf(s: &ServerSettings) -> ServerConf {
    let d = ServerConf::default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ServerConf {
        threads: s.threads.unwrap_or(cpus),
        work_stealing: s.work_stealing.unwrap_or(false),
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| "/run/fulcrum/fulcrum.pid".into()),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/run/fulcrum/upgrade.sock".into()),
        error_log: s.error_log.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        grace_period_seconds: Some(s.grace_period_seconds.unwrap_or(10)),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds.unwrap_or(5)),
        // -d returns once the new process is ready: what `systemctl reload` relies on.
        daemon_wait_for_ready: s.daemon_wait_for_ready.unwrap_or(true),
        daemon_ready_timeout_seconds: s
            .daemon_ready_timeout_seconds
            .and_then(std::num::NonZeroU64::new),
        upstream_keepalive_pool_size: s
            .upstream_keepalive_pool_size
            .unwrap_or(d.upstream_keepalive_pool_size),
        listener_tasks_per_fd: s.listener_tasks_per_fd.unwrap_or(d.listener_tasks_per_fd),
        ..d
    }
}

/// A server with every service for `config` added (but SIGHUP reload), ready to run.
pub fn build_server(opt: Opt, config: &Config) -> Result<Assembled, String> {
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config.server));
    // Bootstrap (taking over the listening sockets on an upgrade) runs as a service, after a
    // daemon has forked: only then can `daemon_wait_for_ready` tell the parent it is ready.
    let bootstrap = server.bootstrap_as_a_service();
    let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime::build(config, &metrics)));
    metrics
        .watch(runtime.clone())
        .map_err(|e| format!("metrics: {e}"))?;

    let access_log = config.access_log.clone().map(|target| {
        let (log, writer) = access_log::channel(target);
        server.add_service(background_service("access log", writer));
        Arc::new(log)
    });
    // Draining starts with a graceful shutdown or upgrade (the proxy and /healthz follow it).
    let draining = Arc::new(AtomicBool::new(false));
    server.add_service(background_service(
        "drain watch",
        DrainWatch::new(server.watch_execution_phase(), draining.clone()),
    ));
    let mut proxy = http_proxy_service(
        &server.configuration,
        Proxy::new(runtime.clone(), access_log, draining.clone()),
    );
    for listener in &config.listeners {
        proxy.add_tcp(&listener.addr.to_string());
    }
    // The proxy starts accepting once the first round of health checks is done.
    let health = server.add_service(background_service(
        "health checks",
        HealthService::new(runtime.clone()),
    ));
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&health);
    proxy.add_dependency(&bootstrap);
    health.add_dependency(&bootstrap);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp::new(metrics.clone(), runtime.clone(), draining),
        );
        service.add_tcp(&admin.listen.to_string());
        server.add_service(service).add_dependency(&bootstrap);
    }
    Ok(Assembled {
        server,
        runtime,
        metrics,
        bootstrap,
    })
}

/// A server ready to run, with the pieces that outlive its construction.
pub struct Assembled {
    pub server: Server,
    pub runtime: SharedRuntime,
    pub metrics: Arc<Metrics>,
    /// Services that listen must start after it.
    pub bootstrap: ServiceHandle,
}

/// Run the proxy for `config` until shutdown; returns only if it cannot start.
pub fn run(opt: Opt, config: &Config) -> Result<std::convert::Infallible, String> {
    let Assembled {
        mut server,
        runtime,
        metrics,
        ..
    } = build_server(opt, config)?;
    server.add_service(background_service(
        "reload",
        ReloadService::new(config, runtime, metrics),
    ));
    for l in &config.listeners {
        tracing::info!("listener {} on {}", l.name, l.addr);
    }
    if let Some(a) = &config.admin {
        tracing::info!("admin on {}", a.listen);
    }
    server.run_forever()
}
