#!/usr/bin/env bash
# The Debian package, end to end (`make package-test`, part of `make test`): builds the .deb
# from the debug binary (stripped; `make deb` packages the release one), installs it into a
# fresh root made here with `dpkg --root` (maintainer scripts run with DPKG_ROOT set and
# change only files under it: no user, unit or file of this machine changes), checks the files,
# the conffiles, the system user and directories, `fulcrum -t` on the installed configuration,
# `systemd-analyze verify` and `security` on the installed unit, an upgrade that keeps an edited
# conffile, then removes and purges it. Usage: tests/package.sh (CARGO_TARGET_DIR set).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:?CARGO_TARGET_DIR must be set}
bin=$target/debug/fulcrum
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
fail() { echo "package test: FAIL: $*" >&2; exit 1; }
step() { echo "package test: $*"; }

# What this machine has before: it must be the same afterwards.
host_state() {
    { getent passwd fulcrum || true; ls -la /etc/fulcrum /lib/systemd/system/fulcrum.service \
        /usr/bin/fulcrum /etc/systemd/system/multi-user.target.wants 2>&1 || true; }
}
before=$(host_state)

step "building the .deb from $bin"
debian/assets.sh "$bin" "$target/debug/pkg"
cargo deb --no-build --profile dev --fast --quiet -o "$work/" 2>/dev/null
deb=$(ls "$work"/fulcrum_*.deb)
dpkg-deb --info "$deb" >/dev/null

mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg_root() {
    DPKG_COLORS=never dpkg --root="$root" --log=/dev/null --force-script-chrootless \
        --force-depends --force-confold "$@"
}

step "installing into $root"
dpkg_root -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
for f in usr/bin/fulcrum lib/systemd/system/fulcrum.service etc/fulcrum/fulcrum.yaml \
    etc/logrotate.d/fulcrum usr/lib/sysusers.d/fulcrum.conf usr/lib/tmpfiles.d/fulcrum.conf \
    usr/share/man/man1/fulcrum.1.gz usr/share/bash-completion/completions/fulcrum \
    usr/share/zsh/vendor-completions/_fulcrum usr/share/fish/vendor_completions.d/fulcrum.fish \
    usr/share/fulcrum/fulcrum.schema.json usr/share/doc/fulcrum/examples/fulcrum.yaml; do
    [ -e "$root/$f" ] || fail "/$f not installed"
done
[ -x "$root/usr/bin/fulcrum" ] || fail "/usr/bin/fulcrum not executable"
conffiles=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}' fulcrum)
for c in /etc/fulcrum/fulcrum.yaml /etc/logrotate.d/fulcrum; do
    grep -q " $c " <<<"$conffiles" || fail "$c is not a conffile: $conffiles"
done
status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' fulcrum)
[ "$status" = "install ok installed" ] || fail "status: $status"

step "user, directories, unit enabled"
grep -q '^fulcrum:' "$root/etc/passwd" || fail "no fulcrum user in the root's /etc/passwd"
uid=$(awk -F: '$1 == "fulcrum" {print $3}' "$root/etc/passwd")
[ "$(stat -c %u "$root/var/log/fulcrum")" = "$uid" ] || fail "/var/log/fulcrum not owned by fulcrum"
[ "$(stat -c %a "$root/var/log/fulcrum")" = 750 ] || fail "/var/log/fulcrum mode"
# /run is a tmpfs at boot: tmpfiles.d recreates /run/fulcrum (the unit's RuntimeDirectory= too).
grep -qx 'd /run/fulcrum 0750 fulcrum fulcrum -' "$root/usr/lib/tmpfiles.d/fulcrum.conf" \
    || fail "tmpfiles.d does not create /run/fulcrum"
if [ -e "$root/run/fulcrum" ]; then
    [ "$(stat -c %u "$root/run/fulcrum")" = "$uid" ] || fail "/run/fulcrum not owned by fulcrum"
fi
grep -q 'RuntimeDirectory=fulcrum' "$root/lib/systemd/system/fulcrum.service" || fail "no RuntimeDirectory"
# logrotate: the access log, reopened by SIGUSR1 to the main process only.
grep -q '^/var/log/fulcrum/\*\.log {' "$root/etc/logrotate.d/fulcrum" || fail "logrotate: no log path"
grep -q 'systemctl kill --kill-who=main --signal=USR1 fulcrum.service' "$root/etc/logrotate.d/fulcrum" \
    || fail "logrotate: no SIGUSR1 to the main process"
[ -L "$root/etc/systemd/system/multi-user.target.wants/fulcrum.service" ] || fail "unit not enabled"

step "fulcrum -t on the installed configuration, man page, completions"
"$root/usr/bin/fulcrum" -c "$root/etc/fulcrum/fulcrum.yaml" -t
zcat "$root/usr/share/man/man1/fulcrum.1.gz" | grep -q '^\.TH fulcrum 1' || fail "man page"
bash -c "source '$root/usr/share/bash-completion/completions/fulcrum' && complete -p fulcrum" \
    >/dev/null || fail "bash completion"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' \
    "$root/usr/share/fulcrum/fulcrum.schema.json" || fail "schema is not JSON"

step "systemd-analyze verify and security on the installed unit"
# verify checks that ExecStart's binary and the Documentation= man page exist: point it at the
# root's (a verify with --root would want a whole systemd tree in the root).
sed "s#/usr/bin/fulcrum#$root/usr/bin/fulcrum#g" "$root/lib/systemd/system/fulcrum.service" \
    >"$work/fulcrum.service"
MANPATH="$root/usr/share/man" systemd-analyze verify "$work/fulcrum.service" \
    || fail "systemd-analyze verify"
systemd-analyze security --offline=true --root="$root" --threshold=15 \
    /lib/systemd/system/fulcrum.service | tail -1 || fail "exposure above 1.5"

step "reinstall (upgrade path): an edited conffile is kept"
echo "# edited by the operator" >>"$root/etc/fulcrum/fulcrum.yaml"
dpkg_root -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i again"; }
grep -q "edited by the operator" "$root/etc/fulcrum/fulcrum.yaml" || fail "conffile overwritten"

step "remove keeps the configuration, purge removes it"
dpkg_root -r fulcrum >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -r"; }
[ ! -e "$root/usr/bin/fulcrum" ] || fail "binary left after remove"
[ ! -e "$root/lib/systemd/system/fulcrum.service" ] || fail "unit left after remove"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/fulcrum.service" ] || fail "still enabled"
[ -e "$root/etc/fulcrum/fulcrum.yaml" ] || fail "conffile removed by remove"
dpkg_root -P fulcrum >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -P"; }
[ ! -e "$root/etc/fulcrum/fulcrum.yaml" ] || fail "conffile left after purge"
[ ! -e "$root/var/log/fulcrum" ] || fail "/var/log/fulcrum left after purge"
left=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${db:Status-Abbrev}' fulcrum 2>/dev/null || true)
case "$left" in "" | "un "*) ;; *) fail "still known to dpkg after purge: $left" ;; esac

[ "$(host_state)" = "$before" ] || fail "this machine changed outside the test root"
step "ok"
