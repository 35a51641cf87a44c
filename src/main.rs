//! The `fulcrum` binary: parse the command line, load the configuration, run; map failures to
//! exit codes (0 ok, 1 runtime failure, 2 usage, 78 invalid configuration).

use std::process::ExitCode;

use clap::Parser;
use fulcrum::cli::{Cli, Command};
use fulcrum::config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    fulcrum::logging::init();
    if let Some(Command::Demo) = cli.command {
        return match fulcrum::demo::run() {
            Err(e) => {
                eprintln!("fulcrum demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // An absolute path, so that SIGHUP still finds the file after a daemon's chdir.
    let conf = std::fs::canonicalize(&cli.conf).unwrap_or_else(|_| cli.conf.clone());
    let config = match config::load(&conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "fulcrum: configuration file {} is invalid",
                cli.conf.display()
            );
            return ExitCode::from(EX_CONFIG);
        }
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if cli.test {
        eprintln!(
            "fulcrum: configuration file {} is valid",
            cli.conf.display()
        );
        return ExitCode::SUCCESS;
    }
    match fulcrum::app::run(cli.pingora_opt(), &config) {
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
}
