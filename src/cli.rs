//! The command line: flags, the subcommands (`demo`, `schema`, `man`, `completions`), and the
//! Pingora `Opt` built from them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

/// `-h`: the usual invocations.
const EXAMPLES: &str = "\
Examples:
  fulcrum -c /etc/fulcrum/fulcrum.yaml -t     validate, like `nginx -t` (exit 78 if invalid)
  fulcrum -c new.yaml -t --diff fulcrum.yaml  validate, then say what a reload to new.yaml changes
  fulcrum ctl drain web app2                  drain a backend of the running process (runtime API)
  fulcrum -c /etc/fulcrum/fulcrum.yaml        run in the foreground (systemd: Type=notify)
  fulcrum -c /etc/fulcrum/fulcrum.yaml -d -u  graceful upgrade: take over the running process's sockets
  kill -HUP PID                               reload pools and routes in place
  fulcrum demo                                3 built-in backends + the proxy on 127.0.0.1:8080
  fulcrum schema > fulcrum.schema.json        JSON Schema of the YAML, for editors";

/// `--help` and the man page: the examples, then signals, exit status and files.
const MORE: &str = "\
Examples:
  fulcrum -c /etc/fulcrum/fulcrum.yaml -t
      Validate the configuration, like `nginx -t`: every problem is printed as
      FILE:LINE:COL: KEY.PATH: message, and the exit status is 78 if there is any.
  fulcrum -c new.yaml -t --diff /etc/fulcrum/fulcrum.yaml
      Validate new.yaml, then print what a reload from the old file to it changes: listeners,
      routes, pools and backends added, removed and changed, the share of hash keys that move
      to another backend, and which affinity sessions re-pin. Exit status as -t.
  fulcrum -c new.yaml -t --diff running
      The same against the running process's configuration (asked from its admin listener).
  fulcrum ctl drain web app2; fulcrum ctl enable web app2; fulcrum ctl weight web app2 5
      Change a backend of the running process through the runtime API on its admin listener
      (address and token from the -c file, or --admin URL --token-file FILE). Kept across
      reloads while that backend's configuration is unchanged.
  fulcrum ctl purge https://static.example.com/app.js; fulcrum ctl purge --route static
      Remove a URL's object (all its Vary variants) from the cache of the route serving it,
      or everything a route's cache keeps.
  fulcrum -c /etc/fulcrum/fulcrum.yaml
      Run in the foreground. Under systemd (NOTIFY_SOCKET set) fulcrum says READY=1 once
      every listener listens, and pings the watchdog when WatchdogSec= is set.
  fulcrum -c /etc/fulcrum/fulcrum.yaml -d -u && kill -QUIT OLD_PID
      Graceful upgrade (what `systemctl reload fulcrum` runs): the new process takes the
      listening sockets from the old one, which drains and exits. No request fails.
  fulcrum demo
      Three built-in backends and the proxy on 127.0.0.1:8080, admin on 127.0.0.1:9901.
  fulcrum schema > fulcrum.schema.json
      The JSON Schema of the configuration; point a YAML language server at it with
      `# yaml-language-server: $schema=/usr/share/fulcrum/fulcrum.schema.json`.
  fulcrum completions bash > /etc/bash_completion.d/fulcrum
      Shell completions (bash, zsh, fish, elvish, powershell).

Signals:
  HUP   reload pools and routes from the file in place (listeners need an upgrade)
  QUIT  hand the listening sockets to a new process started with -u, drain, exit
  TERM  stop gracefully: finish requests in flight (grace_period_seconds), exit
  USR1  reopen the access log file (logrotate)

Exit status:
  0 ok; 1 runtime failure (e.g. an address in use); 2 usage; 78 invalid configuration.

Files:
  /etc/fulcrum/fulcrum.yaml             the configuration
  /usr/share/fulcrum/fulcrum.schema.json  its JSON Schema
  /run/fulcrum/                         pid file and upgrade socket
  /var/log/fulcrum/                     access log (when configured)";

/// fulcrum: an HTTP load balancer and reverse proxy on Pingora.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about, after_help = EXAMPLES, after_long_help = MORE)]
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
    /// With -t: print what a reload from OLD (a file, or `running`: the running process's,
    /// through its admin listener) to this configuration changes.
    #[arg(long = "diff", value_name = "OLD", requires = "test")]
    pub diff: Option<PathBuf>,
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
    /// Print the JSON Schema of the configuration file (for editors' YAML language servers).
    Schema,
    /// Print the man page (roff), e.g. `fulcrum man > fulcrum.1`.
    Man,
    /// Print shell completions, e.g. `fulcrum completions bash`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Change a backend of the running process, or purge its cache, through its runtime API.
    Ctl {
        /// The admin listener (default: `admin.listen` of the -c file).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        /// A file holding the API token (default: the -c file's admin.token_file/token_env).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
}

/// What `fulcrum ctl` does to a backend.
#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// No new requests; sessions pinned to it stay until the pool's drain_timeout.
    Drain { pool: String, backend: String },
    /// Back to normal (after drain or disable).
    Enable { pool: String, backend: String },
    /// No requests at all; pinned sessions move at once.
    Disable { pool: String, backend: String },
    /// Set its weight (1 to 256), or `config` to return to the configured one.
    Weight {
        pool: String,
        backend: String,
        weight: String,
    },
    /// Remove a URL's cached object (all its Vary variants), or with --route a route's whole
    /// cache.
    Purge {
        /// The URL as clients ask for it, e.g. https://static.example.com/app.js?v=3.
        #[arg(required_unless_present = "route", conflicts_with = "route")]
        url: Option<String>,
        /// The route (its name) whose whole cache goes.
        #[arg(long, value_name = "NAME")]
        route: Option<String>,
    },
}

impl CtlAction {
    /// The JSON body of `purge` (None: another action).
    pub fn purge_body(&self) -> Option<String> {
        let CtlAction::Purge { url, route } = self else {
            return None;
        };
        Some(match (url, route) {
            (Some(url), _) => serde_json::json!({ "url": url }).to_string(),
            (None, route) => serde_json::json!({ "route": route }).to_string(),
        })
    }

    /// (pool, backend, change); Err for a weight that is neither 1..=256 nor `config`, and
    /// for `purge` (no backend: see `purge_body`).
    pub fn change(&self) -> Result<(&str, &str, crate::ctl::Change), String> {
        use crate::ctl::Change;
        Ok(match self {
            CtlAction::Purge { .. } => return Err("purge changes no backend".into()),
            CtlAction::Drain { pool, backend } => (pool, backend, Change::Drain),
            CtlAction::Enable { pool, backend } => (pool, backend, Change::Enable),
            CtlAction::Disable { pool, backend } => (pool, backend, Change::Disable),
            CtlAction::Weight {
                pool,
                backend,
                weight,
            } => {
                let w = match weight.as_str() {
                    "config" => None,
                    n => Some(
                        n.parse::<u32>()
                            .ok()
                            .filter(|w| (1..=256).contains(w))
                            .ok_or_else(|| {
                                format!("weight `{n}`: expected 1 to 256, or `config`")
                            })?,
                    ),
                };
                (pool, backend, Change::Weight(w))
            }
        })
    }
}

/// What the documentation subcommands print (`schema`, `man`, `completions`); None for the
/// others.
pub fn document(command: &Command) -> Option<std::io::Result<Vec<u8>>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match command {
        Command::Demo | Command::Ctl { .. } => return None,
        Command::Schema => {
            out = crate::config::schema::schema_json().into_bytes();
            out.push(b'\n');
        }
        Command::Man => {
            if let Err(e) = man_page(&mut out) {
                return Some(Err(e));
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "fulcrum", &mut out);
        }
    }
    Some(Ok(out))
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

/// The man page: clap_mangen's sections, then EXAMPLES, SIGNALS, EXIT STATUS and FILES from
/// the long help, kept as written (no-fill: they are laid out in columns).
fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = clap_mangen::Man::new(Cli::command().after_long_help(None::<&str>));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    for block in MORE.split("\n\n") {
        let Some((title, body)) = block.split_once(":\n") else {
            continue;
        };
        let body = body.replace('\\', "\\e");
        let title = title.to_uppercase();
        out.extend_from_slice(format!(".SH \"{title}\"\n.nf\n{body}\n.fi\n").as_bytes());
    }
    man.render_version_section(out)?;
    Ok(())
}
