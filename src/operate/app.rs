//! Assembles the Pingora server from a validated `Config`: the ServerConf, the proxy service
//! with its listeners, and the shared runtime snapshot.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::protocols::ALPN;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::services::ServiceHandle;

use crate::config::{Config, ServerSettings};
use crate::observe::access_log;
use crate::observe::metrics::Metrics;
use crate::operate::acme;
use crate::operate::admin::{AdminApp, DrainWatch};
use crate::operate::api::Api;
use crate::operate::backend_metrics::BackendCollector;
use crate::operate::certificates::{AcmeState, CertificateCollector, Certificates, ListenerCerts};
use crate::operate::discovery::{DiscoveryService, Fleet};
use crate::operate::health::HealthService;
use crate::operate::parent_ready::ParentReady;
use crate::operate::ready_line::ReadyLine;
use crate::operate::reload::ReloadService;
use crate::operate::shutdown::ExitWhenDone;
use crate::operate::systemd::{Notifier, NotifyService, RestoreStderr};
use crate::runtime::SharedRuntime;
use crate::serve::challenge::Challenges;
use crate::serve::keepalive::KeepAlive;
use crate::serve::limits::ConnectionLimits;
use crate::serve::proxy::Proxy;
use crate::tls::SniResolver;

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
    let conf = &server.configuration;
    if conf.daemon && conf.daemon_wait_for_ready {
        // The process that will wait for the daemon's SIGUSR1 is this one, before the fork.
        let settle = server.add_service(background_service(
            "daemon parent watch",
            ParentReady::new(std::process::id()),
        ));
        bootstrap.add_dependency(&settle);
    }
    // Names and SRV records are resolved once here (only when the config has any).
    let fleet = Fleet::start(config, metrics.clone())?;
    let runtime: SharedRuntime = fleet.runtime();
    metrics
        .register(Box::new(BackendCollector::new(runtime.clone())))
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
    let limits = ConnectionLimits::new(&config.listeners, metrics.clone());
    server.add_service(background_service(
        "exit when done",
        ExitWhenDone::new(
            server.watch_execution_phase(),
            limits.clone(),
            access_log.clone(),
        ),
    ));
    // ACME HTTP-01 answers, shared by the proxies and the ACME service.
    let challenges = Arc::new(Challenges::new(acme::state_dirs(config)));
    let proxy_logic = || {
        Proxy::new(
            runtime.clone(),
            access_log.clone(),
            draining.clone(),
            limits.clone(),
        )
        .with_challenges(challenges.clone())
    };
    // Pingora turns h2c on per proxy: connections that open with the HTTP/2 preface on an
    // `h2c` listener go to a second proxy with it on (the keep-alive loop tells them apart).
    let mut h2c_proxy = http_proxy(&server.configuration, proxy_logic());
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    h2c_proxy.server_options = Some(options);
    let mut proxy = Service::new(
        "fulcrum".to_string(),
        KeepAlive::new(
            http_proxy(&server.configuration, proxy_logic()),
            h2c_proxy,
            runtime.clone(),
            limits.clone(),
        ),
    );
    let mut certificates = Vec::new();
    let mut managed = Vec::new();
    let mut served = Certificates::default();
    for listener in &config.listeners {
        let addr = listener.addr.to_string();
        let endpoint = ListenerConfig::tcp(addr.clone()).l4_buffer(l4_buffer());
        let Some(tls) = &listener.tls else {
            proxy.add_listener(endpoint);
            continue;
        };
        let resolver = match &tls.acme {
            None => SniResolver::new(&tls.loaded()),
            Some(a) => acme::resolver(&listener.name, a, &tls.loaded())?,
        };
        let resolver = Arc::new(
            resolver.ok_or_else(|| format!("listener {}: no certificate", listener.name))?,
        );
        let acme_state = tls.acme.as_ref().map(|a| {
            let state = Arc::new(AcmeState::new(a.domains.clone()));
            managed.push(acme::Managed {
                listener: listener.name.clone(),
                config: a.clone(),
                resolver: resolver.clone(),
                state: state.clone(),
            });
            state
        });
        served.listeners.push(ListenerCerts {
            listener: listener.name.clone(),
            resolver: resolver.clone(),
            acme: acme_state,
        });
        // The paths are not used: certificates come from the resolver, with what validation
        // loaded and checked (Pingora's rustls listener would panic on a bad file).
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| format!("listener {}: {e}", listener.name))?;
        settings.set_cert_resolver(resolver.clone());
        if tls.http2 {
            settings.enable_h2();
        } else {
            settings.set_alpn(ALPN::H1);
        }
        proxy.add_listener(endpoint.tls(settings));
        certificates.push((listener.name.clone(), resolver));
    }
    let served = Arc::new(served);
    metrics
        .register(Box::new(CertificateCollector::new(served.clone())))
        .map_err(|e| format!("metrics: {e}"))?;
    server.add_service(background_service(
        "discovery",
        DiscoveryService::new(fleet.clone()),
    ));
    // The proxy starts accepting once the first round of health checks is done.
    let health = server.add_service(background_service(
        "health checks",
        HealthService::new(runtime.clone()),
    ));
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&health);
    proxy.add_dependency(&bootstrap);
    if !managed.is_empty() {
        // Orders start once the plain listeners can answer the challenges.
        let service = acme::AcmeService::new(managed, challenges);
        let acme = server.add_service(background_service("acme", service));
        acme.add_dependency(&proxy);
    }
    let mut listening = vec![proxy];
    health.add_dependency(&bootstrap);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp::new(metrics.clone(), runtime.clone(), draining)
                .with_api(Api::new(
                    runtime.clone(),
                    fleet.clone(),
                    admin.token.clone(),
                    &metrics,
                ))
                .with_certificates(served),
        );
        service.add_tcp(&admin.listen.to_string());
        let admin = server.add_service(service);
        admin.add_dependency(&bootstrap);
        listening.push(admin);
    }
    Ok(Assembled {
        server,
        runtime,
        fleet,
        metrics,
        bootstrap,
        certificates,
        listening,
    })
}

/// A server ready to run, with the pieces that outlive its construction.
pub struct Assembled {
    pub server: Server,
    pub runtime: SharedRuntime,
    /// Discovered backends; applies reloads.
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    /// Services that listen must start after it.
    pub bootstrap: ServiceHandle,
    /// The SNI resolver of each TLS listener, by listener name (SIGHUP reloads them).
    pub certificates: Vec<(String, Arc<SniResolver>)>,
    /// The services that listen (proxy, h2c proxy, admin).
    pub listening: Vec<ServiceHandle>,
}

/// Client connections read straight into the HTTP parser's buffer: Pingora's default 64 KiB
/// read buffer per connection cost ~100 KB of memory per idle keep-alive connection, for no
/// measurable CPU gain (see the README's performance section).
fn l4_buffer() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// The first line a starting process logs: what it serves, from which file.
fn start_summary(config: &Config) -> String {
    let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
    let short_hash = config.hash.get(..12).unwrap_or(&config.hash);
    format!(
        "fulcrum {} serving {} (sha256 {short_hash}): listeners {}, routes {}, pools {}, backends {backends}",
        env!("CARGO_PKG_VERSION"),
        config.source.display(),
        config.listeners.len(),
        config.routes.len(),
        config.pools.len(),
    )
}

/// In the foreground, install fulcrum's handlers for SIGHUP and SIGUSR1 before any service
/// starts, so that an early signal is not fatal (their default action ends the process); it is
/// delivered once the service listens. Not before a daemon's fork: tokio's signal pipe would
/// then be shared by the parent and the daemon, and either could swallow the other's signals.
fn install_early_signal_handlers() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("signal setup: {e}"))?;
    rt.block_on(async {
        for kind in [SignalKind::hangup(), SignalKind::user_defined1()] {
            drop(signal(kind).map_err(|e| format!("signal setup: {e}"))?);
        }
        Ok(())
    })
}

/// Fail fast, with the listener's name, when an address cannot be bound (in use, or a low port
/// without CAP_NET_BIND_SERVICE). Pingora would retry a busy port for a long while and then
/// panic inside its service. Not on an upgrade: the running process holds the sockets.
fn check_bindable(config: &Config) -> Result<(), String> {
    let admin = config.admin.iter().map(|a| ("admin".to_string(), a.listen));
    let listeners = config
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.addr));
    for (what, addr) in listeners.chain(admin) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => " (another process listens there)",
                std::io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                _ => "",
            };
            return Err(format!("{what}: cannot listen on {addr}: {e}{hint}"));
        }
    }
    Ok(())
}

/// Run the proxy for `config` until shutdown; returns only if it cannot start.
pub fn run(opt: Opt, config: &Config) -> Result<std::convert::Infallible, String> {
    if !opt.upgrade {
        check_bindable(config)?;
    }
    if !opt.daemon {
        install_early_signal_handlers()?;
    }
    let upgrade = opt.upgrade;
    let notifier = Arc::new(Notifier::from_env(upgrade));
    let restore_stderr = opt.daemon && notifier.is_active() && config.server.error_log.is_none();
    let Assembled {
        mut server,
        runtime,
        fleet,
        metrics,
        certificates,
        listening,
        ..
    } = build_server(opt, config)?;
    server.add_service(background_service(
        "reload",
        ReloadService::new(config, runtime, metrics, certificates)
            .with_notifier(notifier.clone())
            .with_fleet(fleet),
    ));
    if restore_stderr {
        let saved = RestoreStderr::save().map_err(|e| format!("stderr: {e}"))?;
        server.add_service(background_service("journal stderr", saved));
    }
    let ready_line = server.add_service(background_service("ready line", ReadyLine { upgrade }));
    ready_line.add_dependencies(&listening);
    if notifier.is_active() {
        let addresses = config.listeners.iter().map(|l| l.addr);
        let addresses = addresses.chain(config.admin.iter().map(|a| a.listen));
        let notify = NotifyService::new(
            notifier,
            addresses.collect(),
            server.watch_execution_phase(),
            server.configuration.pid_file.clone().into(),
        );
        let notify = server.add_service(background_service("systemd notify", notify));
        notify.add_dependencies(&listening);
    }
    tracing::info!("{}", start_summary(config));
    for l in &config.listeners {
        let tls = if l.tls.is_some() { " (TLS)" } else { "" };
        tracing::info!("listener {} on {}{tls}", l.name, l.addr);
    }
    if let Some(a) = &config.admin {
        tracing::info!("admin on {}", a.listen);
    }
    server.run_forever()
}
