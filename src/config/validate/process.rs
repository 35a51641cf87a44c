//! The process-wide sections: `server:` (Pingora's settings, passed through), `admin:` and
//! `access_log:`.

use serde_norway::Value;

use super::parse::{parse_socket_addr, secret_text};
use super::Checker;
use crate::config::model::*;
use crate::config::raw::*;

/// `admin:` (absent: no admin listener). Outer None: invalid.
pub(super) fn check_admin(
    ck: &mut Checker,
    value: Option<Value>,
    listeners: &[ListenerConfig],
) -> Option<Option<AdminConfig>> {
    let raw: RawAdmin = match value {
        None | Some(Value::Null) => return Some(None),
        Some(v) => ck.parse("admin", v)?,
    };
    match parse_socket_addr(&raw.listen) {
        Ok(listen) if listeners.iter().any(|l| l.addr == listen) => {
            ck.error("admin.listen", format!("{listen} is also a proxy listener"));
            None
        }
        Ok(listen) => {
            if !listen.ip().is_loopback() {
                ck.warn(
                    "admin.listen",
                    format!("{listen} is not a loopback address: metrics and status are visible to the network"),
                );
            }
            let token = check_token(ck, raw.token_file.as_deref(), raw.token_env.as_deref());
            Some(Some(AdminConfig { listen, token }))
        }
        Err(msg) => {
            ck.error("admin.listen", msg);
            None
        }
    }
}

/// Shortest runtime API token: 16 bytes (128 bits when random).
pub const MIN_TOKEN_LEN: usize = 16;

/// `admin.token_file` / `admin.token_env`: the bearer token, read once here (surrounding
/// whitespace trimmed).
fn check_token(ck: &mut Checker, file: Option<&str>, env: Option<&str>) -> Option<Secrets> {
    let (path, text) = secret_text(ck, "admin", "token", file, env)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        ck.error(
            path,
            format!(
                "the token is {} bytes long: it needs at least {MIN_TOKEN_LEN}",
                token.len()
            ),
        );
        return None;
    }
    Some(Secrets(vec![token.as_bytes().to_vec()]))
}

/// `access_log:` (absent: off). Outer None: invalid.
pub(super) fn check_access_log(
    ck: &mut Checker,
    value: Option<Value>,
) -> Option<Option<AccessLogConfig>> {
    let raw: RawAccessLog = match value {
        None | Some(Value::Null) => return Some(None),
        Some(v) => ck.parse("access_log", v)?,
    };
    if let Some(f) = raw.format.as_deref().filter(|f| *f != "json") {
        ck.error(
            "access_log.format",
            format!("`{f}`: only `json` is supported"),
        );
        return None;
    }
    if raw.path == "stdout" {
        return Some(Some(AccessLogConfig::Stdout));
    }
    let path = ck.base.join(&raw.path);
    let dir_ok = path
        .parent()
        .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir());
    if !dir_ok {
        ck.error(
            "access_log.path",
            format!("the directory of {} does not exist", path.display()),
        );
        return None;
    }
    Some(Some(AccessLogConfig::File(path)))
}

pub(super) fn check_server(ck: &mut Checker, value: Option<Value>) -> Option<ServerSettings> {
    let raw: RawServer = match value {
        None | Some(Value::Null) => RawServer::default(),
        Some(v) => ck.parse("server", v)?,
    };
    for (key, v) in [
        ("threads", raw.threads),
        (
            "upstream_keepalive_pool_size",
            raw.upstream_keepalive_pool_size,
        ),
        ("listener_tasks_per_fd", raw.listener_tasks_per_fd),
    ] {
        if let Some(v) = v {
            ck.in_range(&format!("server.{key}"), v as i128);
        }
    }
    Some(ServerSettings {
        threads: raw.threads,
        work_stealing: raw.work_stealing,
        pid_file: raw.pid_file,
        upgrade_sock: raw.upgrade_sock,
        error_log: raw.error_log,
        user: raw.user,
        group: raw.group,
        grace_period_seconds: raw.grace_period_seconds,
        graceful_shutdown_timeout_seconds: raw.graceful_shutdown_timeout_seconds,
        daemon_wait_for_ready: raw.daemon_wait_for_ready,
        daemon_ready_timeout_seconds: raw.daemon_ready_timeout_seconds,
        upstream_keepalive_pool_size: raw.upstream_keepalive_pool_size,
        listener_tasks_per_fd: raw.listener_tasks_per_fd,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    const POOL: &str = "pools: {p: {backends: [{address: 127.0.0.1:9}]}}\n";

    #[test]
    fn server_settings_of_the_wrong_shape_are_all_reported() {
        let p = problems(&format!(
            "server:\n  threads: 0\n  work_stealing: maybe\n  pid_fle: /run/x.pid\n{FRONT}{POOL}"
        ));
        assert_eq!(
            p,
            [
                "2:3: server.threads: a whole number, at least 1, got 0",
                "3:3: server.work_stealing: true or false, got `maybe`",
                "4:3: server.pid_fle: unknown key `pid_fle`, expected one of `threads`, `work_stealing`, `pid_file`, `upgrade_sock`, `error_log`, `user`, `group`, `grace_period_seconds`, `graceful_shutdown_timeout_seconds`, `daemon_wait_for_ready`, `daemon_ready_timeout_seconds`, `upstream_keepalive_pool_size`, `listener_tasks_per_fd`",
            ]
        );
    }

    #[test]
    fn admin_must_not_share_a_proxy_listener() {
        let p = problems(&format!("admin: {{listen: 127.0.0.1:8080}}\n{FRONT}{POOL}"));
        assert_eq!(
            p,
            ["1:9: admin.listen: 127.0.0.1:8080 is also a proxy listener"]
        );
    }

    #[test]
    fn access_log_format_and_directory() {
        let p = problems(&format!(
            "access_log: {{path: /nonexistent/dir/a.log, format: text}}\n{FRONT}{POOL}"
        ));
        assert_eq!(
            p,
            ["1:44: access_log.format: `text`: only `json` is supported"]
        );
        let p = problems(&format!(
            "access_log: {{path: /nonexistent/dir/a.log}}\n{FRONT}{POOL}"
        ));
        assert_eq!(
            p,
            ["1:14: access_log.path: the directory of /nonexistent/dir/a.log does not exist"]
        );
    }
}
