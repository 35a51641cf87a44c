#!/usr/bin/env python3
"""Soak: fulcrum under steady load through reloads, upgrades, dying backends and slow clients.

One fulcrum (threads 2) in front of 3 backends (this script in `--backend PORT` mode: small
asyncio HTTP/1.1 servers, one process each, so that one can be SIGKILLed). Load comes from
this process's asyncio loop: keep-alive clients (one connection reused until the server says
`Connection: close`) and new-connection clients (one connection per request), every request a
GET (idempotent), every failure counted with its cause, every latency recorded.

Phases, one after another, each bounded in time and count, the load running through all of them:

  warm-up     load only; RSS and descriptors read at its end are the baseline
  reloads     SIGHUP N times, alternating a valid configuration (weights and algorithm
              changed) and an invalid one (five kinds), each waited for in
              fulcrum_config_reloads_total; RSS sampled every 10% of them
  backends    one backend SIGKILLed and restarted on the same port every few seconds
  slow        a swarm of connections trickling header bytes (one byte a second, never ending
              the header), which the listener's header_timeout must cut; each cut one reconnects
  upgrades    N graceful upgrades: `fulcrum -c FILE -u`, then SIGQUIT to the old process,
              waiting for it to exit before the next
  cool-down   load only

Prints per phase: requests, failed requests (by cause), p50/p99/max latency; reload outcomes
and how long each took to apply; RSS and open descriptors of the fulcrum process at each
phase boundary (from /proc). Exits 1 if any request failed, a reload was not applied as
expected, an upgrade did not complete, a slow client was not cut in time, the first process's
RSS grew more than --rss-bound-mb (default 2) over the last 90% of the reloads (the first 10%
are memory's warm-up: new snapshots, metric handles, allocator arenas), or its descriptors did
not come back after the slow clients. Traffic stays on 127.0.0.1.

The default run takes about 14 minutes (100 upgrades cost ~6.1 s each: Pingora's fixed 5 s
hand-over window, then the grace period); --quick about 2.

Usage: benches/soak.py BINARY [--quick] [--reloads N] [--upgrades N] ...
"""
import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

BACKENDS = 3
HEADER_TIMEOUT = 5  # seconds: the listener's header_timeout the slow clients run into


# ---------------------------------------------------------------------------------------------
# Backend mode: a tiny HTTP/1.1 keep-alive server answering 200 "ok\n" to everything.

async def backend_main(port):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip() or 0)
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Helpers

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    """(RSS KB, open descriptors) of pid, or (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100.0))]


async def wait_port(port, limit=15.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


async def http_get(port, path, timeout=5.0):
    """A one-off GET on a new connection: (status, body)."""
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        await w.drain()
        data = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ---------------------------------------------------------------------------------------------
# The rig

class Soak:
    def __init__(self, args, work):
        self.args = args
        self.binary = args.binary
        self.work = work
        self.port = free_port()
        self.admin = free_port()
        self.backend_ports = [free_port() for _ in range(BACKENDS)]
        self.backends = {}
        self.conf = os.path.join(work, "fulcrum.yaml")
        self.sock = os.path.join(work, "upgrade.sock")
        self.proc = None
        self.generation = 0
        self.phase = "start"
        self.stopping = False
        # per phase: requests, failures {cause: n}, latencies (s)
        self.stats = {}
        self.boundaries = []  # (phase ended, pid, rss KB, fds)
        self.reload_log = {"sent": 0, "success": 0, "failure": 0, "unexpected": [], "apply_s": [],
                           "rss_samples": []}
        self.upgrade_log = {"done": 0, "errors": [], "took_s": []}
        self.kill_log = {"killed": 0}
        self.slow_log = {"opened": 0, "cut": [], "late": 0, "errors": 0, "answered": 0}
        self.problems = []

    # -- configuration --------------------------------------------------------------------
    def config(self, n=0, invalid=None):
        algorithm = ("round_robin", "least_connections")[n % 2]
        weights = [1 + (n + i) % 5 for i in range(BACKENDS)]
        backends = [f"{{address: 127.0.0.1:{p}, name: b{i}, weight: {w}}}"
                    for i, (p, w) in enumerate(zip(self.backend_ports, weights))]
        pool_extra = ""
        if invalid == "weight":
            backends[0] = backends[0].replace(f"weight: {weights[0]}", "weight: 0")
        elif invalid == "address":
            # (a name is valid since backends may be found by DNS: a port out of range is not)
            backends[1] = backends[1].replace(f"127.0.0.1:{self.backend_ports[1]}", "127.0.0.1:70000")
        elif invalid == "duplicate":
            backends[2] = backends[2].replace(str(self.backend_ports[2]), str(self.backend_ports[0]))
        elif invalid == "unknown_key":
            pool_extra = "    retires: 2\n"
        text = (
            f"server: {{threads: 2, work_stealing: false, pid_file: {self.work}/fulcrum.pid, "
            f"upgrade_sock: {self.sock}, grace_period_seconds: {self.args.grace_period}, graceful_shutdown_timeout_seconds: 1}}\n"
            f"admin: {{listen: 127.0.0.1:{self.admin}}}\n"
            f"listeners:\n  - {{name: soak, listen: 127.0.0.1:{self.port}, header_timeout: {HEADER_TIMEOUT}s, "
            f"body_timeout: 10s, keepalive_timeout: 75s, max_header_bytes: 16384, max_headers: 64, "
            f"max_connections: 8000}}\n"
            f"routes: [{{pool: p}}]\n"
            f"pools:\n  p:\n    algorithm: {algorithm}\n    retries: 2\n"
            f"    timeouts: {{connect: 500ms, read: 10s}}\n"
            f"    health_check: {{http: {{path: /healthz}}, interval: 500ms, timeout: 250ms, "
            f"healthy_threshold: 1, unhealthy_threshold: 1}}\n"
            f"{pool_extra}"
            f"    backends: [{', '.join(backends)}]\n"
        )
        if invalid == "syntax":
            text = text.replace("routes: [{pool: p}]", "routes: [{pool: p}")
        return text

    def write_config(self, text):
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)

    # -- processes ------------------------------------------------------------------------
    async def start_backend(self, i):
        port = self.backend_ports[i]
        log = open(os.path.join(self.work, f"backend{i}.log"), "a")
        self.backends[i] = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--backend", str(port),
            stdout=log, stderr=log, start_new_session=True)
        await wait_port(port)

    async def spawn_fulcrum(self, extra=()):
        self.generation += 1
        log = open(os.path.join(self.work, f"fulcrum.{self.generation}.log"), "w")
        return await asyncio.create_subprocess_exec(
            self.binary, "-c", self.conf, *extra, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=log)

    async def metrics(self):
        status, body = await http_get(self.admin, "/metrics")
        out = {}
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    async def reload_counts(self):
        m = await self.metrics()
        return (int(m.get('fulcrum_config_reloads_total{result="success"}', 0)),
                int(m.get('fulcrum_config_reloads_total{result="failure"}', 0)))

    def snapshot(self, label):
        rss, fds = proc_status(self.proc.pid)
        self.boundaries.append((label, self.proc.pid, rss, fds))
        print(f"  [{time.strftime('%H:%M:%S')}] {label:<22} pid {self.proc.pid}  RSS {rss / 1024:.1f} MB  "
              f"fds {fds}", flush=True)
        return rss, fds

    # -- load -----------------------------------------------------------------------------
    def record(self, phase, start, ok, cause=None):
        """Count one request in the phase it started in."""
        s = self.stats.setdefault(phase, {"requests": 0, "failures": {}, "lat": []})
        s["requests"] += 1
        if ok:
            s["lat"].append(time.monotonic() - start)
        else:
            s["failures"][cause] = s["failures"].get(cause, 0) + 1
            if sum(s["failures"].values()) <= 20:
                now = time.time()
                print(f"    FAILED request in phase {phase} at {time.strftime('%H:%M:%S', time.gmtime(now))}"
                      f".{int(now * 1000) % 1000:03d} UTC (pid {self.proc.pid}): {cause}", flush=True)

    async def request(self, reader, writer, reused, kind):
        """One GET on an open connection: (keep the connection?, failure cause or None)."""
        try:
            writer.write(b"GET /soak HTTP/1.1\r\nHost: soak.test\r\nUser-Agent: soak\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except asyncio.TimeoutError:
            return False, "timeout waiting for the response header"
        except asyncio.IncompleteReadError as e:
            where = f"{'reused' if reused else 'new'} connection, {kind} client"
            return False, (f"connection closed before any response byte ({where})" if not e.partial
                           else f"connection closed inside the response header ({where})")
        except (ConnectionError, OSError) as e:
            return False, (f"{type(e).__name__} before the response "
                           f"({'reused' if reused else 'new'} connection, {kind} client)")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            return False, f"malformed status line {lines[0][:40]!r}"
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and b"close" in value.lower():
                close = True
        try:
            if length is None:
                await asyncio.wait_for(reader.read(), 10)
                close = True
            else:
                await asyncio.wait_for(reader.readexactly(length), 10)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError) as e:
            return False, f"body cut off: {type(e).__name__}"
        if status != 200:
            return not close, f"status {status}"
        return not close, None

    async def keepalive_client(self, pause):
        reader = writer = None
        reused = False
        while not self.stopping:
            phase = self.phase
            if writer is None:
                start = time.monotonic()
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                    reused = False
                except (OSError, asyncio.TimeoutError) as e:
                    self.record(phase, start, False, f"connect: {type(e).__name__} {e}")
                    await asyncio.sleep(0.05)
                    continue
            start = time.monotonic()
            keep, cause = await self.request(reader, writer, reused, "keep-alive")
            self.record(phase, start, cause is None, cause)
            reused = True
            if not keep:
                writer.close()
                reader = writer = None
            if pause:
                await asyncio.sleep(pause)
        if writer is not None:
            writer.close()

    async def fresh_client(self, pause):
        while not self.stopping:
            phase = self.phase
            start = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
            except (OSError, asyncio.TimeoutError) as e:
                self.record(phase, start, False, f"connect: {type(e).__name__} {e}")
                await asyncio.sleep(0.05)
                continue
            _, cause = await self.request(reader, writer, False, "new-connection")
            self.record(phase, start, cause is None, cause)
            writer.close()
            if pause:
                await asyncio.sleep(pause)

    # -- phases ---------------------------------------------------------------------------
    async def phase_reloads(self, n):
        before = await self.reload_counts()
        samples = self.reload_log["rss_samples"]
        samples.append((0, proc_status(self.proc.pid)[0]))
        for i in range(1, n + 1):
            valid = i % 2 == 1
            kinds = ("weight", "address", "duplicate", "unknown_key", "syntax")
            self.write_config(self.config(i) if valid else self.config(i, invalid=kinds[(i // 2) % len(kinds)]))
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGHUP)
            self.reload_log["sent"] += 1
            want = (before[0] + (1 if valid else 0), before[1] + (0 if valid else 1))
            deadline = t0 + 5
            while True:
                got = await self.reload_counts()
                if got[0] + got[1] > before[0] + before[1]:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.005)
            self.reload_log["apply_s"].append(time.monotonic() - t0)
            if got != want:
                self.reload_log["unexpected"].append((i, "valid" if valid else "invalid", before, got))
            self.reload_log["success"] += got[0] - before[0]
            self.reload_log["failure"] += got[1] - before[1]
            before = got
            if n >= 10 and i % (n // 10) == 0:
                samples.append((i, proc_status(self.proc.pid)[0]))
            await asyncio.sleep(self.args.reload_gap)
        # leave a valid file for what follows (upgrades read it)
        self.write_config(self.config(n + 1 if n % 2 == 0 else n))

    async def phase_backends(self, seconds, every, down):
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            victim = i % BACKENDS
            p = self.backends[victim]
            p.send_signal(signal.SIGKILL)
            await p.wait()
            self.kill_log["killed"] += 1
            await asyncio.sleep(down)
            await self.start_backend(victim)
            i += 1
            await asyncio.sleep(max(0.0, every - down))

    async def slow_client(self, end, sem):
        slack = 3.0
        while time.monotonic() < end and not self.stopping:
            async with sem:
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                except (OSError, asyncio.TimeoutError):
                    self.slow_log["errors"] += 1
                    await asyncio.sleep(0.5)
                    continue
            self.slow_log["opened"] += 1
            opened = time.monotonic()
            dribble = b"GET /slow HTTP/1.1\r\nHost: soak.test\r\nX-Slow: " + b"z" * 10_000
            closed_at = None
            try:
                reading = asyncio.ensure_future(r.read(4096))
                for b in dribble:
                    if reading.done() or time.monotonic() >= end:
                        break
                    try:
                        w.write(bytes([b]))
                        await w.drain()
                    except (ConnectionError, OSError):
                        break
                    await asyncio.wait({reading}, timeout=1.0)
                if not reading.done() and time.monotonic() < end:
                    await asyncio.wait({reading}, timeout=max(0.0, end - time.monotonic()))
                if reading.done():
                    closed_at = time.monotonic()
                    try:
                        if reading.result():
                            self.slow_log["answered"] += 1
                    except (ConnectionError, OSError):
                        pass
                else:
                    reading.cancel()
            finally:
                w.close()
            if closed_at is not None:
                took = closed_at - opened
                self.slow_log["cut"].append(took)
                if took > HEADER_TIMEOUT + slack:
                    self.slow_log["late"] += 1

    async def phase_slow(self, seconds, n):
        end = time.monotonic() + seconds
        sem = asyncio.Semaphore(50)  # open them in batches, not all in one burst
        await asyncio.gather(*(self.slow_client(end, sem) for _ in range(n)))

    async def phase_upgrades(self, n):
        for i in range(n):
            t0 = time.monotonic()
            try:
                os.unlink(self.sock)
            except FileNotFoundError:
                pass
            new = await self.spawn_fulcrum(("-u",))
            deadline = time.monotonic() + 10
            while not os.path.exists(self.sock):
                if new.returncode is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            if not os.path.exists(self.sock):
                self.upgrade_log["errors"].append(f"upgrade {i + 1}: new process never listened on upgrade_sock "
                                                  f"(exit {new.returncode})")
                if new.returncode is None:
                    new.kill()
                    await new.wait()
                break
            old = self.proc
            old.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(old.wait(), 30)
            except asyncio.TimeoutError:
                self.upgrade_log["errors"].append(f"upgrade {i + 1}: old pid {old.pid} still running 30 s after QUIT")
                old.kill()
                await old.wait()
            if old.returncode not in (0, None) and old.returncode != -signal.SIGKILL:
                self.upgrade_log["errors"].append(f"upgrade {i + 1}: old process exited {old.returncode}")
            self.proc = new
            if new.returncode is not None:
                self.upgrade_log["errors"].append(f"upgrade {i + 1}: new process exited {new.returncode}")
                break
            self.upgrade_log["done"] += 1
            self.upgrade_log["took_s"].append(time.monotonic() - t0)
            if (i + 1) % max(1, n // 5) == 0:
                print(f"    {i + 1} upgrades, last took {time.monotonic() - t0:.1f} s", flush=True)

    # -- the run --------------------------------------------------------------------------
    async def run(self):
        a = self.args
        for i in range(BACKENDS):
            await self.start_backend(i)
        self.write_config(self.config(0))
        self.proc = await self.spawn_fulcrum()
        await wait_port(self.port)
        await wait_port(self.admin)
        print(f"fulcrum pid {self.proc.pid} on 127.0.0.1:{self.port}, admin :{self.admin}, work dir {self.work}",
              flush=True)
        # let the first health checks admit the backends
        for _ in range(100):
            if (await http_get(self.port, "/"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        self.phase = "warm-up"
        clients = [asyncio.ensure_future(self.keepalive_client(a.pause)) for _ in range(a.keepalive_clients)]
        clients += [asyncio.ensure_future(self.fresh_client(a.pause)) for _ in range(a.fresh_clients)]
        t_start = time.monotonic()
        try:
            self.snapshot("start")
            await asyncio.sleep(a.warmup)
            base_rss, base_fds = self.snapshot("after warm-up")
            first_pid = self.proc.pid

            self.phase = "reloads"
            print(f"phase reloads: {a.reloads} SIGHUPs, alternating valid and invalid", flush=True)
            await self.phase_reloads(a.reloads)
            reload_rss, _ = self.snapshot("after reloads")

            self.phase = "backends"
            print(f"phase backends: one backend SIGKILLed every {a.kill_every} s for {a.kill_seconds} s", flush=True)
            await self.phase_backends(a.kill_seconds, a.kill_every, a.kill_down)
            await asyncio.sleep(1.5)  # the restarted backend passes its check
            self.snapshot("after backend kills")

            self.phase = "slow"
            print(f"phase slow: {a.slow_clients} slow clients for {a.slow_seconds} s", flush=True)
            await self.phase_slow(a.slow_seconds, a.slow_clients)
            await asyncio.sleep(1.0)
            slow_rss, slow_fds = self.snapshot("after slow clients")
            m = await self.metrics()
            self.header_cuts = int(sum(v for k, v in m.items()
                                       if k.startswith("fulcrum_limit_total{") and 'limit="header_timeout"' in k))

            self.phase = "upgrades"
            print(f"phase upgrades: {a.upgrades} graceful upgrades (-u, then QUIT)", flush=True)
            await self.phase_upgrades(a.upgrades)
            self.snapshot("after upgrades")

            self.phase = "cool-down"
            await asyncio.sleep(a.cooldown)
            self.snapshot("end")
        finally:
            self.stopping = True
            await asyncio.gather(*clients, return_exceptions=True)
        self.elapsed = time.monotonic() - t_start
        self.report(first_pid, base_rss, base_fds, reload_rss, slow_rss, slow_fds)

    def report(self, first_pid, base_rss, base_fds, reload_rss, slow_rss, slow_fds):
        a = self.args
        print(f"\nSoak of {self.binary}: {self.elapsed / 60:.1f} min, {os.cpu_count()} CPUs, "
              f"{a.keepalive_clients} keep-alive + {a.fresh_clients} new-connection clients, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        print("| phase | requests | failed | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        total = failed = 0
        for name in ("warm-up", "reloads", "backends", "slow", "upgrades", "cool-down"):
            s = self.stats.get(name)
            if not s:
                continue
            f = sum(s["failures"].values())
            total += s["requests"]
            failed += f
            lat = s["lat"]
            print(f"| {name} | {s['requests']:,} | {f} | {pct(lat, 50) * 1000:.2f} | {pct(lat, 99) * 1000:.2f} | "
                  f"{(max(lat) if lat else float('nan')) * 1000:.1f} |")
        print(f"| all | {total:,} | {failed} | | | |")
        for name, s in self.stats.items():
            for cause, n in sorted(s["failures"].items(), key=lambda x: -x[1]):
                print(f"  failed in {name}: {n} x {cause}")
        rl = self.reload_log
        ap = rl["apply_s"]
        print(f"\nreloads: {rl['sent']} SIGHUPs, fulcrum_config_reloads_total success +{rl['success']}, "
              f"failure +{rl['failure']}; unexpected outcomes {len(rl['unexpected'])}; time to apply "
              f"p50 {pct(ap, 50) * 1000:.1f} ms, p99 {pct(ap, 99) * 1000:.1f} ms, max {(max(ap) if ap else 0) * 1000:.1f} ms")
        for u in rl["unexpected"][:10]:
            print(f"  unexpected: reload {u[0]} ({u[1]}): counts before {u[2]}, after {u[3]}")
        print("  RSS during reloads (reload #: MB): " +
              ", ".join(f"{i}: {kb / 1024:.1f}" for i, kb in rl["rss_samples"]))
        ul = self.upgrade_log
        print(f"upgrades: {ul['done']} of {a.upgrades} done"
              + (f", each {statistics.median(ul['took_s']):.1f} s (median, -u to old process gone)" if ul["took_s"] else "")
              + "".join(f"\n  {e}" for e in ul["errors"]))
        print(f"backends: {self.kill_log['killed']} SIGKILLs and restarts")
        sl = self.slow_log
        cut = sl["cut"]
        print(f"slow clients: {sl['opened']} connections opened, {len(cut)} cut by fulcrum "
              f"(after {pct(cut, 50):.1f} s median, {max(cut) if cut else 0:.1f} s max; header_timeout {HEADER_TIMEOUT} s), "
              f"{sl['late']} later than header_timeout + 3 s, {sl['answered']} answered with bytes, "
              f"{sl['errors']} connect errors; fulcrum_limit_total{{limit=\"header_timeout\"}} {self.header_cuts}")
        print("\n| moment | pid | RSS MB | fds |\n|---|---|---|---|")
        for label, pid, rss, fds in self.boundaries:
            print(f"| {label} | {pid} | {rss / 1024:.1f} | {fds} |")

        growth = (reload_rss - base_rss) / 1024
        samples = rl["rss_samples"]
        # memory's warm-up: the warm-up phase and the first 10% of the reloads (the first
        # snapshots, metric handles and allocator arenas); from there on it must level off
        settled = samples[1][1] if len(samples) > 2 else base_rss
        late_growth = (reload_rss - settled) / 1024
        if failed:
            self.problems.append(f"{failed} requests failed (all were GETs)")
        if rl["unexpected"]:
            self.problems.append(f"{len(rl['unexpected'])} reloads not applied as expected")
        if late_growth > a.rss_bound_mb and rl["sent"] >= 100:  # fewer: too few to judge
            self.problems.append(f"RSS grew {late_growth:.2f} MB over the last 90% of {rl['sent']} reloads "
                                 f"(bound {a.rss_bound_mb} MB)")
        if slow_fds > base_fds + a.fd_slack:
            self.problems.append(f"descriptors after the slow clients {slow_fds} > {base_fds} + {a.fd_slack}")
        if sl["late"]:
            self.problems.append(f"{sl['late']} slow clients were not cut within header_timeout + 3 s")
        if ul["errors"] or ul["done"] < a.upgrades:
            self.problems.append(f"{a.upgrades - ul['done']} upgrades not done")
        print(f"\nRSS of pid {first_pid}: {base_rss / 1024:.1f} MB after the warm-up, {reload_rss / 1024:.1f} MB after "
              f"{rl['sent']} reloads ({growth:+.2f} MB; {late_growth:+.2f} MB over the last 90% of them, bound "
              f"{a.rss_bound_mb} MB), {slow_rss / 1024:.1f} MB after "
              f"the backend kills and slow clients; fds {base_fds} -> {slow_fds}")
        print("\nRESULT: " + ("PASS" if not self.problems else "FAIL: " + "; ".join(self.problems)), flush=True)

    async def shutdown(self):
        for p in [self.proc, *self.backends.values()]:
            if p is not None and p.returncode is None:
                try:
                    p.kill()
                    await asyncio.wait_for(p.wait(), 10)
                except (ProcessLookupError, asyncio.TimeoutError):
                    pass


async def amain(args):
    work = tempfile.mkdtemp(prefix="fulcrum-soak-")
    soak = Soak(args, work)
    try:
        await asyncio.wait_for(soak.run(), args.limit)
    finally:
        await soak.shutdown()
    if not soak.problems:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"(logs kept in {work})")
    return 1 if soak.problems else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--backend":
        try:
            asyncio.run(backend_main(int(sys.argv[2])))
        except KeyboardInterrupt:
            pass
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--quick", action="store_true", help="about 2 minutes instead of 14")
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--reloads", type=int)
    ap.add_argument("--reload-gap", type=float, default=0.05, help="seconds between reloads")
    ap.add_argument("--kill-seconds", type=float)
    ap.add_argument("--kill-every", type=float, default=4.0)
    ap.add_argument("--kill-down", type=float, default=1.5)
    ap.add_argument("--slow-seconds", type=float)
    ap.add_argument("--slow-clients", type=int)
    ap.add_argument("--upgrades", type=int)
    ap.add_argument("--cooldown", type=float)
    ap.add_argument("--grace-period", type=int, default=1,
                    help="server.grace_period_seconds: how long an old process lets requests finish")
    ap.add_argument("--keepalive-clients", type=int, default=6)
    ap.add_argument("--fresh-clients", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.002, help="seconds each client waits between requests")
    ap.add_argument("--rss-bound-mb", type=float, default=2.0,
                    help="most the first process's RSS may grow over the last 90%% of the reloads")
    ap.add_argument("--fd-slack", type=int, default=64)
    args = ap.parse_args()
    full = dict(warmup=20, reloads=1000, kill_seconds=60, slow_seconds=45, slow_clients=300, upgrades=100,
                cooldown=10)
    quick = dict(warmup=8, reloads=100, kill_seconds=16, slow_seconds=15, slow_clients=100, upgrades=6,
                 cooldown=3)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    # a bound on the whole run: phases are bounded, this is the backstop
    args.limit = 600 + args.warmup + args.reloads * 1.0 + args.kill_seconds + args.slow_seconds \
        + args.upgrades * 40 + args.cooldown
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
