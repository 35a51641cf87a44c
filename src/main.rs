//! The `fulcrum` binary: parse the command line, load the configuration, run; map failures to
//! exit codes (0 ok, 1 runtime failure, 2 usage, 78 invalid configuration).

use std::process::ExitCode;

use clap::Parser;
use fulcrum::cli::{Cli, Command};
use fulcrum::config;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_CONFIG: u8 = 78;

/// Transparent huge pages off for this process (as Redis and database vendors advise), before
/// any thread starts: where the kernel's THP mode is `always`, the allocator's arenas were
/// backed by 2 MB pages, which tripled idle TLS connections' memory (53 KB each instead of
/// 16 KB) and added ~8 MB at start, for no measurable CPU gain (see the README's performance
/// section). Inherited by a daemon's fork and by an upgrade's new process.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("fulcrum: could not turn transparent huge pages off: {e}");
    }
}

/// `fulcrum ctl`: one change through the runtime API (exit 0 done, 1 refused or unreachable,
/// 2 a bad argument). The -c file, when it loads, gives the admin address and token.
fn ctl(
    conf: &std::path::Path,
    admin: Option<&str>,
    token_file: Option<&std::path::Path>,
    action: &fulcrum::cli::CtlAction,
) -> ExitCode {
    /// What the action asks of the runtime API.
    enum Call<'a> {
        Purge(String),
        Backend(&'a str, &'a str, fulcrum::ctl::Change),
    }
    let call = match action.purge_body() {
        Some(body) => Call::Purge(body),
        None => match action.change() {
            Ok((pool, backend, change)) => Call::Backend(pool, backend, change),
            Err(e) => {
                eprintln!("fulcrum ctl: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let config = config::load(conf).ok();
    let result =
        fulcrum::ctl::admin_for(config.as_ref(), admin, token_file).and_then(|a| match call {
            Call::Purge(body) => fulcrum::ctl::purge(&a, &body),
            Call::Backend(pool, backend, change) => fulcrum::ctl::change(&a, pool, backend, change),
        });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fulcrum ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration OLD names: a file, or `running` (asked from the admin listener that
/// `new` configures).
fn old_config(old: &std::path::Path, new: &config::Config) -> Result<config::Config, String> {
    if old != std::path::Path::new("running") {
        return config::load(old).map_err(|e| e.to_string());
    }
    let admin = fulcrum::ctl::admin_for(Some(new), None, None)?;
    let (path, text) = fulcrum::ctl::running_config(&admin)?;
    config::parse(&path, &text).map_err(|e| e.to_string())
}

/// `--diff OLD`: what a reload from OLD to `new` changes, on stdout.
fn print_diff(old: &std::path::Path, new: &config::Config) -> ExitCode {
    let old_config = match old_config(old, new) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "fulcrum: cannot compare with {}: it is invalid",
                old.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let label = if old == std::path::Path::new("running") {
        format!("the running process ({})", old_config.source.display())
    } else {
        old.display().to_string()
    };
    let changes = fulcrum::describe_changes(&old_config, new);
    if changes.is_empty() {
        println!("no changes from {label}");
    } else {
        println!("changes from {label}:");
        for c in changes {
            println!("  {c}");
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(doc) = cli.command.as_ref().and_then(fulcrum::cli::document) {
        use std::io::Write;
        return match doc.and_then(|d| std::io::stdout().write_all(&d)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fulcrum: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Ctl {
        admin,
        token_file,
        action,
    }) = &cli.command
    {
        return ctl(&cli.conf, admin.as_deref(), token_file.as_deref(), action);
    }
    fulcrum::init_logging();
    if let Some(Command::Demo) = cli.command {
        return match fulcrum::run_demo() {
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
        // Backends given by name: resolved once, as start-up would.
        let (warnings, errors) = fulcrum::check_names(&config);
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("fulcrum: {e}");
            }
            return ExitCode::FAILURE;
        }
        eprintln!(
            "fulcrum: configuration file {} is valid",
            cli.conf.display()
        );
        if let Some(old) = &cli.diff {
            return print_diff(old, &config);
        }
        return ExitCode::SUCCESS;
    }
    match fulcrum::run(cli.pingora_opt(), &config) {
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::FAILURE
        }
    }
}
