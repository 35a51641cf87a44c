#!/usr/bin/env python3
"""Load benchmark: fulcrum against nginx and HAProxy, side by side, on loopback.

Each candidate proxies round robin to 4 local nginx backends with upstream keep-alive and one
worker, adding the headers fulcrum always adds (X-Forwarded-For/-Proto/-Host, X-Request-Id),
pinned to CPU 0 (taskset); wrk and the backends run on CPU 1. Rounds are interleaved
(A B C A B C ...) so machine drift cancels. Reports req/s, p50/p99 latency, proxy CPU
microseconds per request (from /proc schedstat of every thread of the candidate) and peak RSS,
at saturation and at a fixed offered load, the ratios to nginx, the cost of fulcrum's features,
and RSS with 10,000 idle keep-alive connections, plain and TLS. Then the workloads of the second
performance issue, each interleaved the same way: a new connection per request, 64 KB and 1 MB
responses (bytes per CPU second), 1 MB uploads, and a pool of 1,000 backends. Then the TLS
workloads (ECDSA P-256 certificate; TLS 1.2/1.3 and h2,http/1.1 by ALPN on all three; backends
plain HTTP/1.1): tls-handshake, a full handshake per request (parallel `openssl s_time -new`,
handshakes/s and CPU per handshake); tls-resume, the same resuming the session (`s_time
-reuse`: nginx and HAProxy resume by stateless tickets, fulcrum by rustls's default in-memory
cache of 256 sessions, see Rig.candidate; the share resumed is counted, not assumed);
tls-keepalive, keep-alive GETs over TLS (wrk on https); h2-tls, HTTP/2 over TLS with 16
connections x 8 streams (h2load). Each TLS run checks that the candidate served it (requests,
2xx, TLS/h2 negotiated) and stops otherwise. Every run is bounded; traffic stays on 127.0.0.1.
Usage: benches/load.py BINARY [--rounds N] [--seconds S] [--idle N] [--phases LIST]
                              [--workloads LIST]
       [--idle-proxies nginx,haproxy,fulcrum] [--idle-kinds plain,tls] [--idle-opening 8]
"""
import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CPU_PROXY = "0"
CPU_LOAD = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=15.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pids_of(root_pid):
    """root_pid and all its descendants."""
    pids, frontier = [], [root_pid]
    while frontier:
        p = frontier.pop()
        pids.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    frontier.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def cpu_ns(pids):
    total = 0
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def mem_kb(pids, field):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def spawn(cmd, cpu, log):
    """Start cmd pinned to cpu with a high file limit, in its own process group."""
    shell = f"ulimit -n $(ulimit -Hn); exec taskset -c {cpu} {cmd}"
    return subprocess.Popen(["bash", "-c", shell], stdout=log, stderr=log, start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=10)


class Rig:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.backend_ports = [free_port() for _ in range(4)]
        self.log = open(os.path.join(work, "rig.log"), "w")
        self.shm_dirs = []  # nginx's cache directories on /dev/shm, removed at the end
        # fulcrum's files (configuration, pid file, upgrade socket) are named with this, so
        # that two fulcrum instances can run at once (benches/pair.py --simultaneous)
        self.instance = ""

    def start_backends(self, many=0):
        """The 4 backends (one nginx, 4 ports), plus `many` more ports for the large pool. Each
        answers `ok` on /, a 64 KB or 1 MB body on /64k and /1m, and takes uploads up to 2 MB."""
        # nginx's workers (nobody, when started as root) must read the bodies
        os.chmod(self.work, 0o755)
        for name, size in (("64k", 64 * 1024), ("1m", 1024 * 1024)):
            with open(os.path.join(self.work, name), "wb") as f:
                f.write(b"x" * size)
            os.chmod(os.path.join(self.work, name), 0o644)
        taken = set(self.backend_ports)
        self.many_ports = []
        while len(self.many_ports) < many:  # free_port() may return a port twice
            p = free_port()
            if p not in taken:
                taken.add(p)
                self.many_ports.append(p)
        servers = "\n".join(
            f"  server {{ listen 127.0.0.1:{p}; access_log off; keepalive_requests 10000000; "
            f"client_max_body_size 2m; location = /64k {{ alias {self.work}/64k; }} "
            f"location = /1m {{ alias {self.work}/1m; }} "
            f"location / {{ return 200 'ok\\n'; }} }}"
            for p in self.backend_ports + self.many_ports
        )
        conf = os.path.join(self.work, "backends.conf")
        with open(conf, "w") as f:
            f.write(
                f"worker_processes 1;\npid {self.work}/backends.pid;\nerror_log {self.work}/backends.err;\n"
                f"daemon off;\nevents {{ worker_connections 20000; }}\n"
                f"http {{\n  default_type text/plain;\n{servers}\n}}\n"
            )
        self.backends = spawn(f"nginx -c {conf} -p {self.work}", CPU_LOAD, self.log)
        for p in self.backend_ports:
            wait_port(p, self.backends)

    def make_certificate(self):
        """A self-signed ECDSA P-256 certificate for the TLS idle measurement and the TLS
        workloads: cert, key, and both in one file (HAProxy's form)."""
        cert, key, both = (os.path.join(self.work, f) for f in ("tls.crt", "tls.key", "tls.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test"],
                       check=True, capture_output=True, timeout=30)
        with open(both, "w") as f:
            f.write(open(cert).read() + open(key).read())
        self.tls = (cert, key, both)

    def candidate(self, name, port, variant="round_robin", tls=False, many=False):
        """The command for one candidate listening on port (with TLS there if tls), in front of
        the 4 backends or (many) the pool of 1,000."""
        ups = self.many_ports if many else self.backend_ports
        cert, key, both = self.tls if tls else (None, None, None)
        # TLS, the same for the three: TLS 1.2 and 1.3 (nginx 1.22 enables 1.3 only when asked),
        # h2 and http/1.1 by ALPN (fulcrum's TLS listener offers h2 by default), resumption on
        # the server side; whether a client resumes is the client's choice (s_time -new/-reuse).
        # How each resumes a TLS 1.3 session (what the clients here negotiate):
        #   nginx: stateless session tickets (ssl_session_tickets on, a key made at start); the
        #     shared session cache serves TLS 1.2 session IDs.
        #   HAProxy 2.6: its defaults, stateless session tickets (a key made at start), and a
        #     session cache of 20,000 entries (tune.ssl.cachesize) for TLS 1.2 session IDs.
        #   fulcrum: rustls 0.23's defaults, which fulcrum and Pingora leave as they are: no
        #     ticket key (stateless tickets off); each full handshake sends 2 TLS 1.3 tickets
        #     that are keys into an in-memory cache of 256 sessions (ServerSessionMemoryCache),
        #     each taken out when used (single use); TLS 1.2 session IDs go to the same cache.
        if name == "nginx":
            conf = os.path.join(self.work, "nginx-proxy.conf")
            servers = " ".join(f"server 127.0.0.1:{p};" for p in ups)
            # variant "cache": proxy_cache on tmpfs (in memory, as fulcrum's), each 200 kept 1 h
            cache_path, cache = "", ""
            if variant == "cache":
                shm = tempfile.mkdtemp(prefix="fulcrum-bench-cache-", dir="/dev/shm")
                self.shm_dirs.append(shm)
                cache_path = (f"  proxy_cache_path {shm} levels=1:2 keys_zone=c:8m max_size=64m "
                              "inactive=1h use_temp_path=off;\n")
                cache = "    proxy_cache c; proxy_cache_valid 200 1h; add_header X-Cache $upstream_cache_status;\n"
            with open(conf, "w") as f:
                f.write(
                    f"worker_processes 1;\nworker_rlimit_nofile 20000;\npid {self.work}/proxy.pid;\n"
                    f"error_log {self.work}/proxy.err;\ndaemon off;\n"
                    f"events {{ worker_connections 19000; }}\n"
                    f"http {{ access_log off; client_max_body_size 2m; upstream b {{ {servers} keepalive 256; }}\n"
                    + cache_path +
                    f"  server {{ listen 127.0.0.1:{port}{' ssl http2' if tls else ''} backlog=65535; keepalive_requests 10000000; keepalive_timeout 300s;\n"
                    + (f"    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n"
                       "    ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h; ssl_session_tickets on;\n"
                       if tls else "") + cache +
                    # request bodies streamed to the backend as they arrive, as fulcrum and
                    # HAProxy do (nginx's default spools a body above 16 KB to a temporary file)
                    f"    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\";\n"
                    f"      proxy_request_buffering off;\n"
                    # the headers fulcrum always adds, so that every candidate does the same work
                    f"      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                    f"      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host;\n"
                    f"      proxy_set_header X-Request-Id $request_id; }} }} }}\n"
                )
            return f"nginx -c {conf} -p {self.work}"
        if name == "haproxy":
            conf = os.path.join(self.work, "haproxy.cfg")
            servers = "\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(ups))
            with open(conf, "w") as f:
                f.write(
                    # HAProxy reserves two descriptors per connection and this machine's hard
                    # limit is 20,000: no strict-limits lets it run (idle clients need one each).
                    "global\n  nbthread 1\n  maxconn 10100\n  no strict-limits\n"
                    "defaults\n  mode http\n  timeout connect 2s\n  timeout client 300s\n  timeout server 60s\n"
                    "  timeout http-keep-alive 300s\n  http-reuse always\n"
                    f"frontend f\n  bind 127.0.0.1:{port}{' ssl crt ' + both + ' alpn h2,http/1.1' if tls else ''}\n"
                    "  default_backend b\n"
                    # the headers fulcrum always adds, so that every candidate does the same work
                    f"  option forwardfor\n  http-request set-header X-Forwarded-Proto {'https' if tls else 'http'}\n"
                    "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
                    "  unique-id-format %[uuid()]\n  unique-id-header X-Request-Id\n"
                    f"backend b\n  balance roundrobin\n{servers}\n"
                )
            return f"haproxy -f {conf}"
        # fulcrum
        conf = os.path.join(self.work, f"fulcrum{self.instance}-{variant}{'-tls' if tls else ''}.yaml")
        backends = ", ".join(f"{{address: 127.0.0.1:{p}}}" for p in ups)
        pool = {"round_robin": "algorithm: round_robin",
                "least_connections": "algorithm: least_connections",
                "consistent_hash": "algorithm: consistent_hash\n    hash_key: client_ip",
                "affinity": "algorithm: round_robin\n    affinity: {cookie: fsid, keys_env: FULCRUM_BENCH_KEY}",
                "cache": "algorithm: round_robin",
                "all": "algorithm: least_connections\n    affinity: {cookie: fsid, keys_env: FULCRUM_BENCH_KEY}\n"
                       "    passive_health: {consecutive_failures: 5}"}[variant]
        admin = f"admin: {{listen: 127.0.0.1:{free_port()}}}\n" if variant == "all" else ""
        # variant "cache": every 200 kept 1 h (the backends send no Cache-Control), as nginx's
        cache = ", cache: {max_size: 64MB, default_ttl: 1h}" if variant == "cache" else ""
        with open(conf, "w") as f:
            f.write(
                f"server: {{threads: 1, work_stealing: false, pid_file: {self.work}/f{self.instance}.pid, "
                f"upgrade_sock: {self.work}/f{self.instance}.sock, grace_period_seconds: 0, "
                f"graceful_shutdown_timeout_seconds: 1, upstream_keepalive_pool_size: 512}}\n"
                f"{admin}listeners: [{{name: bench, listen: 127.0.0.1:{port}"
                + (f", tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}" if tls else "") + "}]\n"
                f"routes: [{{pool: p{cache}}}]\npools:\n  p:\n    {pool}\n    backends: [{backends}]\n"
            )
        return f"{self.binary} -c {conf}"

    def wrk_workload_args(self, workload):
        """What wrk needs beyond the path for `workload`: Connection: close, or the upload's
        script."""
        if workload == "close":
            return ["-H", "Connection: close"]
        if workload == "upload1m":
            script = os.path.join(self.work, "upload.lua")
            with open(script, "w") as f:
                f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
                        'wrk.headers["Content-Type"] = "application/octet-stream"\n')
            return ["-s", script]
        return []

    def run_client(self, port, seconds, fixed_rate, workload, expect=0, connections=64):
        """`workload`'s client against the proxy on `port` for `seconds`: s_time for the
        handshake workloads (`expect`: the bytes of one response, from probe_tls), h2load for
        h2, wrk with `connections` for the rest."""
        client = WORKLOADS[workload].get("client", "wrk")
        if client == "s_time":
            return self.run_s_time(port, seconds, workload == "tls-resume", expect)
        if client == "h2load":
            return self.run_h2load(port, seconds)
        return self.run_wrk(port, seconds, fixed_rate, workload, connections)

    def run_wrk(self, port, seconds, fixed_rate, workload="keepalive", connections=64):
        args = ["taskset", "-c", CPU_LOAD, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
        if fixed_rate:
            script = os.path.join(self.work, "delay.lua")
            with open(script, "w") as f:
                f.write("function delay()\n  return 5\nend\n")
            args += ["-s", script]
        path = WORKLOADS[workload]["path"]
        args += self.wrk_workload_args(workload)
        args.append(f"{scheme(workload)}://127.0.0.1:{port}{path}")
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
        total = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock_err = re.search(r"Socket errors: (.*)", out)
        def pct(p):
            m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
            v, unit = float(m.group(1)), m.group(2)
            return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        return {"requests": total, "rps": rps, "p50": pct(50), "p99": pct(99),
                "bad": int(errors.group(1)) if errors else 0, "sock": sock_err.group(1) if sock_err else ""}

    def measure(self, name, seconds, fixed_rate, variant="round_robin", workload="keepalive"):
        tls = WORKLOADS[workload].get("tls", False)
        port = free_port()
        proc = spawn(self.candidate(name, port, variant, tls=tls, many=workload == "pool1000"),
                     CPU_PROXY, self.log)
        try:
            wait_port(port, proc)
            # warm up: connections, upstream pools
            subprocess.run(["taskset", "-c", CPU_LOAD, "wrk", "-t1", "-c64", "-d1s",
                            f"{scheme(workload)}://127.0.0.1:{port}{WORKLOADS[workload]['path']}"],
                           capture_output=True, timeout=30)
            if variant == "cache":
                # what is measured must be hits
                import urllib.request
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    if resp.headers.get("X-Cache") != "HIT":
                        sys.exit(f"{name}: X-Cache is {resp.headers.get('X-Cache')} after the warm-up, not HIT")
            expect = self.probe_tls(port) if WORKLOADS[workload].get("client") == "s_time" else 0
            pids = pids_of(proc.pid)
            before = cpu_ns(pids)
            r = self.run_client(port, seconds, fixed_rate, workload, expect)
            r["cpu_us"] = (cpu_ns(pids) - before) / 1000.0 / max(r["requests"], 1)
            if tls:
                check_served(name, workload, r)
            r["rss_mb"] = mem_kb(pids, "VmHWM") / 1024.0
            return r
        finally:
            stop(proc)

    def probe_tls(self, port):
        """One request as s_time sends it, over TLS: the length of the whole 200 response, so
        that the bytes s_time read show that every connection got one."""
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="bench.test") as s:
                s.sendall(f"GET {S_TIME_REQUEST} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except (ssl.SSLEOFError, ConnectionResetError):
                        break
                    if not chunk:
                        break
                    data += chunk
        if not data.startswith(b"HTTP/1.1 200 ") or not data.endswith(b"ok\n"):
            sys.exit(f"TLS probe on port {port}: not a 200 with the body ok: {data[:200]!r}")
        return len(data)

    def run_s_time(self, port, seconds, reuse, expect):
        """S_TIME_CLIENTS parallel `openssl s_time` on CPU_LOAD for `seconds`, each making one TLS
        connection after the other with one GET (Connection: close) on each: -new, a full
        handshake each time (no resumption), or -reuse, each connection resuming the session of
        the one before (with TLS 1.3, the latest ticket). s_time prints `r` for each resumed
        connection and `*` for each full one: both are counted, and every connection must have
        read a whole response (`expect` bytes). Handshakes per second over the wall time of the
        whole group (s_time stops at a whole second, the same one for all)."""
        args = ["taskset", "-c", CPU_LOAD, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                "-www", S_TIME_REQUEST, "-reuse" if reuse else "-new", "-time", str(seconds)]
        start = time.time()
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) for _ in range(S_TIME_CLIENTS)]
        outs = []
        try:
            for p in procs:
                outs.append(p.communicate(timeout=seconds + 30)[0])
        finally:
            for p in procs:
                stop(p)
        wall = time.time() - start
        conns = resumed = full = 0
        for out in outs:
            m = re.search(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, bytes read (\d+)", out)
            if not m:
                sys.exit(f"openssl s_time on port {port} failed:\n{out[-2000:]}")
            n, read = int(m.group(1)), int(m.group(2))
            if read != n * expect:
                sys.exit(f"openssl s_time on port {port}: {read} bytes read on {n} connections, "
                         f"not {expect} on each: some did not get a whole 200 response")
            marks = "".join(line for line in out.splitlines() if re.fullmatch(r"[r*t3]+", line))
            if len(marks) != n:
                sys.exit(f"openssl s_time on port {port}: {len(marks)} connection marks for {n} connections")
            conns += n
            resumed += marks.count("r")
            full += n - marks.count("r")
        return {"requests": conns, "rps": conns / wall, "p50": None, "p99": None, "bad": 0, "sock": "",
                "resumed": resumed / max(conns, 1), "full": full}

    def run_h2load(self, port, seconds):
        """h2load on CPU_LOAD for `seconds`: H2_CLIENTS TLS connections with H2_STREAMS concurrent
        streams each, GET /. Checks that h2 was negotiated and that every request succeeded
        with a 2xx."""
        args = ["taskset", "-c", CPU_LOAD, "h2load", f"-c{H2_CLIENTS}", f"-m{H2_STREAMS}", "-D", str(seconds),
                f"https://127.0.0.1:{port}/"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
        req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                        r"(\d+) errored, (\d+) timeout", out)
        status = re.search(r"status codes: (\d+) 2xx", out)
        proto = re.search(r"Application protocol: (\S+)", out)
        tls = re.search(r"TLS Protocol: (\S+)", out)
        if not (req and status and proto and tls):
            sys.exit(f"h2load on port {port} failed:\n{out[-2000:]}")
        done, ok, failed, errored, timeout = (int(req.group(i)) for i in (3, 4, 5, 6, 7))
        if proto.group(1) != "h2" or failed or errored or timeout or ok != done or int(status.group(1)) != ok:
            sys.exit(f"h2load on port {port}: protocol {proto.group(1)}, {ok} succeeded of {done}, {failed} failed, "
                     f"{errored} errored, {timeout} timeout, {status.group(1)} 2xx")
        rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
        mean_ms = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
        return {"requests": ok, "rps": rps, "p50": None, "p99": None, "mean": mean_ms, "bad": 0, "sock": "",
                "tls": tls.group(1)}

    def idle_rss(self, name, connections, tls=False):
        port = free_port()
        proc = spawn(self.candidate(name, port, tls=tls), CPU_PROXY, self.log)
        try:
            wait_port(port, proc)
            pids = pids_of(proc.pid)
            # The baseline after a few requests: the first ones fault in code and fill the
            # upstream pool and the allocator's first pages, once per process, not per connection.
            asyncio.run(hold_idle(port, 4 * IDLE_OPENING, lambda: 0, self, tls))
            time.sleep(1.0)
            base = mem_kb(pids, "VmRSS")
            asyncio.run(hold_idle(port, connections, lambda: mem_kb(pids, "VmRSS"), self, tls))
            return base / 1024.0, self.idle_result / 1024.0
        finally:
            stop(proc)


# The workloads beyond the keep-alive run: what wrk requests, and the bytes each request moves
# (for bytes per CPU second).
WORKLOADS = {
    "keepalive": {"path": "/", "bytes": 0, "title": "keep-alive GET, 3-byte body"},
    "close": {"path": "/", "bytes": 0, "title": "a new connection per request (Connection: close)"},
    "64k": {"path": "/64k", "bytes": 64 * 1024, "title": "64 KB responses"},
    "1m": {"path": "/1m", "bytes": 1024 * 1024, "title": "1 MB responses"},
    "upload1m": {"path": "/", "bytes": 1024 * 1024, "title": "1 MB uploads (POST)"},
    "pool1000": {"path": "/", "bytes": 0, "title": "keep-alive GET, round robin over 1,000 backends"},
    # over TLS (ECDSA P-256, TLS 1.3 as negotiated by OpenSSL clients), backends plain HTTP/1.1
    "tls-handshake": {"path": "/", "bytes": 0, "tls": True, "client": "s_time",
                      "title": "TLS: a full handshake per request, no resumption (s_time -new)"},
    "tls-resume": {"path": "/", "bytes": 0, "tls": True, "client": "s_time",
                   "title": "TLS: a resumed handshake per request (s_time -reuse)"},
    "tls-keepalive": {"path": "/", "bytes": 0, "tls": True,
                      "title": "TLS: keep-alive GET, HTTP/1.1 (wrk -c64)"},
    "h2-tls": {"path": "/", "bytes": 0, "tls": True, "client": "h2load",
               "title": "TLS: HTTP/2 GET, 16 connections x 8 streams (h2load)"},
}
TLS_WORKLOADS = [w for w, d in WORKLOADS.items() if d.get("tls")]
# openssl s_time sends "GET <this> HTTP/1.0\r\n\r\n": a Host header for the proxies and the
# backends (nginx rejects an HTTP/1.1 request without one), and an X-Bench header that takes
# the trailing " HTTP/1.0".
S_TIME_REQUEST = "/ HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\nX-Bench: 1"
# Parallel s_time processes: one alone leaves the proxy idle during each of its round trips.
S_TIME_CLIENTS = 4
H2_CLIENTS, H2_STREAMS = 16, 8


def scheme(workload):
    return "https" if WORKLOADS[workload].get("tls") else "http"


def check_served(name, workload, r):
    """Fail loudly when a TLS workload's candidate did not serve it: no requests, non-2xx
    responses, socket errors, resumed sessions where none may be, a session never resumed."""
    if r["requests"] == 0 or r["bad"] or r["sock"]:
        sys.exit(f"{name} {workload}: {r['requests']} requests, {r['bad']} non-2xx, socket errors {r['sock']!r}")
    if workload == "tls-handshake" and r["resumed"]:
        sys.exit(f"{name} {workload}: {r['resumed']:.1%} of the connections resumed a session (s_time -new)")
    if workload == "tls-resume" and not r["resumed"]:
        print(f"NOTE: {name} resumed no TLS session: its tls-resume numbers are full handshakes", flush=True)


# How many idle connections hold_idle opens at once. Each connection being opened has a request
# in flight, and memory the proxy frees after a burst stays partly resident (in the allocator,
# and as upstream connections left in its pool). With 500 at once and the baseline read before
# the first request, fulcrum's figure per idle connection was 3.33 KB; 8 at a time, 3.11; and
# with the baseline read after a warm-up (idle_rss), 2.88: the rest measures the connection.
IDLE_OPENING = 8


async def hold_idle(port, n, read_rss, rig, tls):
    """Open n keep-alive connections (TLS: HTTP/1.1 by ALPN), one request each, keep them idle,
    read the RSS."""
    conns = []
    sem = asyncio.Semaphore(IDLE_OPENING)
    ctx = None
    if tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="bench.test" if tls else None), 10)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            await asyncio.wait_for(r.readuntil(b"ok\n"), 10)
            conns.append(w)
    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(1.0)  # let the proxy settle; this is a measurement, not a synchronisation
    rig.idle_result = read_rss()
    for w in conns:
        w.close()


def med(xs):
    return statistics.median(xs)


def main():
    global IDLE_OPENING
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--phases", default="keepalive,features,cache,idle,workloads",
                    help="comma-separated: keepalive, features, cache (nginx proxy_cache against "
                         "fulcrum's cache), idle, workloads")
    ap.add_argument("--workloads", default="close,64k,1m,upload1m,pool1000,tls-handshake,tls-resume,"
                                           "tls-keepalive,h2-tls")
    ap.add_argument("--idle-proxies", default="nginx,haproxy,fulcrum",
                    help="the idle phase's candidates (comma-separated)")
    ap.add_argument("--idle-kinds", default="plain,tls", help="the idle phase's connections: plain, tls")
    ap.add_argument("--idle-opening", type=int, default=IDLE_OPENING,
                    help="how many idle connections are opened at once")
    args = ap.parse_args()
    IDLE_OPENING = args.idle_opening
    phases = set(args.phases.split(","))
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS or w == "keepalive"]
    if unknown:
        sys.exit(f"unknown workloads {unknown}: expected some of {[w for w in WORKLOADS if w != 'keepalive']}")
    tools = ["nginx", "haproxy", "wrk", "taskset", "openssl"]
    if "workloads" in phases and "h2-tls" in workloads:
        tools.append("h2load")
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (make bench installs it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ["FULCRUM_BENCH_KEY"] = "a-benchmark-key-not-a-secret-0123"
    work = tempfile.mkdtemp(prefix="fulcrum-bench-")
    rig = Rig(args.binary, work)
    rig.start_backends(many=1000 if "workloads" in phases and "pool1000" in workloads else 0)
    if "idle" in phases or ("workloads" in phases and set(workloads) & set(TLS_WORKLOADS)):
        rig.make_certificate()
    names = ["nginx", "haproxy", "fulcrum"]
    results = {(n, m): [] for n in names for m in ("sat", "fixed")}
    variants = ("round_robin", "least_connections", "consistent_hash", "affinity", "all")
    features = {v: [] for v in variants}
    idle = {}
    loads = {(w, n): [] for w in workloads for n in names}
    try:
        for r in range(args.rounds if "keepalive" in phases else 0):
            for mode in ("sat", "fixed"):
                for n in names:
                    res = rig.measure(n, args.seconds, mode == "fixed")
                    results[(n, mode)].append(res)
                    print(f"round {r+1} {mode:5} {n:8} {res['rps']:9.0f} req/s  {res['cpu_us']:6.1f} us/req  "
                          f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  rss {res['rss_mb']:.1f} MB  "
                          f"non-2xx {res['bad']} {res['sock']}", flush=True)
        for r in range(args.rounds if "features" in phases else 0):  # interleaved too: drift cancels
            for v in variants:
                res = rig.measure("fulcrum", args.seconds, False, v)
                features[v].append(res)
                print(f"round {r+1} feature {v:18} {res['cpu_us']:6.1f} us/req", flush=True)
        # cache hits: GET / answered from memory by nginx's proxy_cache and by fulcrum's cache
        cached = {n: [] for n in ("nginx", "fulcrum")}
        for r in range(args.rounds if "cache" in phases else 0):
            for n in cached:
                res = rig.measure(n, args.seconds, False, "cache")
                cached[n].append(res)
                print(f"round {r+1} cache-hit {n:8} {res['rps']:9.0f} req/s  {res['cpu_us']:6.1f} us/req  "
                      f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  rss {res['rss_mb']:.1f} MB", flush=True)
        if "idle" in phases:
            idle_names = [n for n in args.idle_proxies.split(",") if n]
            kinds = [k == "tls" for k in args.idle_kinds.split(",") if k]
            idle = {(n, tls): rig.idle_rss(n, args.idle, tls) for tls in kinds for n in idle_names}
        for (n, tls), (b, i) in idle.items():
            print(f"idle {n:8} {b:.1f} MB -> {i:.1f} MB with {args.idle} idle {'TLS ' if tls else ''}connections",
                  flush=True)
        for r in range(args.rounds if "workloads" in phases else 0):  # saturated, interleaved
            for w in workloads:
                for n in names:
                    res = rig.measure(n, args.seconds, False, workload=w)
                    loads[(w, n)].append(res)
                    print(f"round {r+1} {w:13} {n:8} {res['rps']:9.0f} req/s  {res['cpu_us']:7.1f} us/req  "
                          f"{latency(res)}  non-2xx {res['bad']} {res['sock']}"
                          + (f"  resumed {res['resumed']:.0%}" if "resumed" in res else "")
                          + (f"  {res['tls']}" if "tls" in res else ""), flush=True)
    finally:
        stop(rig.backends)
        for d in rig.shm_dirs:
            shutil.rmtree(d, ignore_errors=True)

    print()
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{args.rounds} interleaved rounds of {args.seconds} s, wrk -t1 -c64, medians.")
    if "keepalive" in phases:
        keepalive_tables(results, names)
    if "features" in phases:
        rr = med([x["cpu_us"] for x in features["round_robin"]])
        print("\nfulcrum features, saturated, CPU us/req (vs round_robin):\n")
        print("| variant | CPU us/req | vs round_robin |\n|---|---|---|")
        for v, xs in features.items():
            c = med([x["cpu_us"] for x in xs])
            print(f"| {v} | {c:.1f} | {c/rr:.2f} |")
    if "cache" in phases:
        print("\ncache hits (GET / from memory: nginx proxy_cache on tmpfs, fulcrum cache), saturated:\n")
        print("| proxy | req/s | p50 ms | p99 ms | CPU us/req | peak RSS MB | CPU vs nginx | req/s vs nginx |")
        print("|---|---|---|---|---|---|---|---|")
        cbase = {k: med([x[k] for x in cached["nginx"]]) for k in ("rps", "cpu_us")}
        for n, xs in cached.items():
            x = {k: med([r[k] for r in xs]) for k in ("rps", "p50", "p99", "cpu_us", "rss_mb")}
            print(f"| {n} | {x['rps']:.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['cpu_us']:.1f} | {x['rss_mb']:.1f} | "
                  f"{x['cpu_us']/cbase['cpu_us']:.2f} | {x['rps']/cbase['rps']:.2f} |")
    for tls in sorted({tls for _, tls in idle}):
        print(f"\nRSS with {args.idle} idle {'TLS ' if tls else ''}keep-alive connections "
              f"(opened {IDLE_OPENING} at a time):\n")
        print("| proxy | RSS idle MB | RSS with connections MB | per connection KB | vs nginx |\n|---|---|---|---|---|")
        for n in names:
            if (n, tls) not in idle:
                continue
            b, i = idle[(n, tls)]
            vs = f"{i/idle[('nginx', tls)][1]:.2f}" if ("nginx", tls) in idle else "-"
            print(f"| {n} | {b:.1f} | {i:.1f} | {(i - b) * 1024 / args.idle:.2f} | {vs} |")
    plain = [w for w in workloads if w not in TLS_WORKLOADS]
    if plain and "workloads" in phases:
        print("\nworkloads, saturated (wrk -c64); CPU per request and, for bodies, MB moved per CPU second; "
              "median (min-max) over rounds:\n")
        print("| workload | proxy | req/s | CPU us/req | MB per CPU s | p99 ms | CPU vs nginx |\n|---|---|---|---|---|---|---|")
        for w in plain:
            base = med([x["cpu_us"] for x in loads[(w, "nginx")]])
            for n in names:
                xs = loads[(w, n)]
                cpu = [x["cpu_us"] for x in xs]
                mb = (f"{WORKLOADS[w]['bytes'] / med(cpu):.0f}" if WORKLOADS[w]["bytes"] else "-")
                print(f"| {WORKLOADS[w]['title']} | {n} | {med([x['rps'] for x in xs]):.0f} | "
                      f"{med(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | {mb} | {med([x['p99'] for x in xs]):.3f} | "
                      f"{med(cpu)/base:.2f} |")


    tls = [w for w in workloads if w in TLS_WORKLOADS]
    if tls and "workloads" in phases:
        tls_table(loads, tls, names)


def latency(res):
    """p99 from wrk, the mean from h2load (it gives no percentiles), none from s_time."""
    if res.get("p99") is not None:
        return f"p99 {res['p99']:.3f} ms"
    if res.get("mean") is not None:
        return f"mean {res['mean']:.3f} ms"
    return "latency -"


def spread(xs, fmt):
    return f"{med(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def tls_table(loads, workloads, names):
    """The TLS workloads: req/s (handshakes/s for tls-handshake and tls-resume) and CPU per
    request (per handshake), median (min-max) over rounds, and the share of resumed sessions."""
    print(f"\nTLS workloads (ECDSA P-256; handshakes: {S_TIME_CLIENTS} parallel openssl s_time, one GET per "
          f"connection; keep-alive: wrk -c64; h2: h2load -c{H2_CLIENTS} -m{H2_STREAMS}), saturated where the "
          "client can; median (min-max) over rounds:\n")
    print("| workload | proxy | req/s | CPU us/req | resumed | latency ms | req/s vs nginx | CPU vs nginx |")
    print("|---|---|---|---|---|---|---|---|")
    for w in workloads:
        base = {k: med([x[k] for x in loads[(w, "nginx")]]) for k in ("rps", "cpu_us")}
        for n in names:
            xs = loads[(w, n)]
            resumed = f"{med([x['resumed'] for x in xs]):.0%}" if "resumed" in xs[0] else "-"
            if xs[0].get("p99") is not None:
                lat = f"p99 {med([x['p99'] for x in xs]):.3f}"
            elif xs[0].get("mean") is not None:
                lat = f"mean {med([x['mean'] for x in xs]):.3f}"
            else:
                lat = "-"
            print(f"| {WORKLOADS[w]['title']} | {n} | {spread([x['rps'] for x in xs], '.0f')} | "
                  f"{spread([x['cpu_us'] for x in xs], '.1f')} | {resumed} | {lat} | "
                  f"{med([x['rps'] for x in xs]) / base['rps']:.2f} | {med([x['cpu_us'] for x in xs]) / base['cpu_us']:.2f} |")
        if w == "tls-resume":
            for n in names:
                if not any(x["resumed"] for x in loads[(w, n)]):
                    print(f"\n{n} resumed no TLS session: its tls-resume row is full handshakes.")


def keepalive_tables(results, names):
    def row(n, mode):
        xs = results[(n, mode)]
        return {k: med([x[k] for x in xs]) for k in ("rps", "p50", "p99", "cpu_us", "rss_mb")}
    for mode, title in (("sat", "saturated"), ("fixed", "fixed offered load (5 ms between requests per connection)")):
        print(f"\n{title}:\n")
        print("| proxy | req/s | p50 ms | p99 ms | CPU us/req | peak RSS MB | CPU vs nginx | req/s vs nginx |")
        print("|---|---|---|---|---|---|---|---|")
        base = row("nginx", mode)
        for n in names:
            x = row(n, mode)
            print(f"| {n} | {x['rps']:.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['cpu_us']:.1f} | {x['rss_mb']:.1f} | "
                  f"{x['cpu_us']/base['cpu_us']:.2f} | {x['rps']/base['rps']:.2f} |")


if __name__ == "__main__":
    main()
