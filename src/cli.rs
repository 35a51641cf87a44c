//! The command line: flags, the `demo` subcommand, and the Pingora `Opt` built from them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

/// fulcrum: an HTTP load balancer and reverse proxy on Pingora.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = "/etc/fulcrum/fulcrum.yaml"
    )]
    pub conf: PathBuf,
    /// Validate the configuration and exit (binds no port), like `nginx -t`.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Run in the background (pid file from server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Graceful upgrade: take the listening sockets from the running process.
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start three built-in backends and the proxy on 127.0.0.1:8080.
    Demo,
}

impl Cli {
    /// Pingora's options. The configuration is passed to Pingora already built, so `conf`
    /// stays empty; `-t` is handled by fulcrum before Pingora starts.
    pub fn pingora_opt(&self) -> Opt {
        Opt {
            upgrade: self.upgrade,
            daemon: self.daemon,
            nocapture: false,
            test: false,
            conf: None,
        }
    }
}
