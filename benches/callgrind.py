#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind (robust to machine load).

Runs the release binary under `valgrind --tool=callgrind` in front of the load benchmark's 4
local nginx backends (benches/load.py's rig and fulcrum configuration: round robin, upstream
keep-alive, one thread), sends it N and then 2N keep-alive GETs with h2load (`--h1`, 8
connections), and prints (Ir(2N) - Ir(N)) / N: start-up, warm-up and shutdown cancel out.
With --workload close, each request is a new connection (Connection: close), sent by 8 client
threads of this script.
Each pair runs `--repeat` times; the median and spread are printed. The callgrind files of the
last 2N run stay in --out for callgrind_annotate.
Usage: benches/callgrind.py BINARY [--requests N] [--repeat R] [--out DIR] [--workload close]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the rig: backends and the fulcrum configuration)


def wait_port(port, proc, limit=120.0):
    # under valgrind, start-up takes seconds
    load.wait_port(port, proc, limit)


def close_requests(port, n, threads=8):
    """n GETs, each on a new connection with Connection: close; returns how many got a 200."""
    import threading
    done = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

    def client(count):
        ok = 0
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(request)
                data = b""
                while len(data) < 1 << 16:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            ok += data.startswith(b"HTTP/1.1 200 ")
        done.append(ok)

    workers = [threading.Thread(target=client, args=(n // threads + (i < n % threads),))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=900)
    return sum(done)


def run_once(rig, n, out, workload):
    """Total Ir of one run of n requests. Under valgrind the proxy is ~50x slower; on a busy
    machine a request may time out, so an incomplete run is retried once."""
    try:
        return run_counted(rig, n, out, workload)
    except RuntimeError as e:
        print(f"retrying: {str(e).splitlines()[0]}", flush=True)
        return run_counted(rig, n, out, workload)


def run_counted(rig, n, out, workload="keepalive"):
    port = load.free_port()
    cmd = rig.candidate("fulcrum", port)
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    log = open(out + ".log", "w")
    proc = subprocess.Popen(vg + cmd.split(), stdout=log, stderr=log, start_new_session=True)
    try:
        wait_port(port, proc)
        if workload == "close":
            ok = close_requests(port, n)
            if ok != n:
                raise RuntimeError(f"only {ok} of {n} new-connection requests got a 200")
        else:
            res = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", "8", "-t", "1",
                                  f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                                 timeout=600)
            m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded",
                          res.stdout)
            if not m or int(m.group(2)) != n:
                raise RuntimeError(f"h2load did not complete {n} requests:\n{res.stdout}{res.stderr}")
        # graceful shutdown (grace period 0): the process exits and callgrind writes its file
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    total = 0
    for f in os.listdir(os.path.dirname(out)):  # one file per thread when --separate-threads
        path = os.path.join(os.path.dirname(out), f)
        if path.startswith(out) and not path.endswith(".log"):
            with open(path) as fh:
                for line in fh:
                    if line.startswith("totals:") or line.startswith("summary:"):
                        total = max(total, int(line.split()[1]))
    if not total:
        raise RuntimeError(f"no callgrind totals in {out}")
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workload", choices=("keepalive", "close"), default="keepalive")
    args = ap.parse_args()
    for tool in ("valgrind", "nginx", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (make callgrind installs it)")
    work = tempfile.mkdtemp(prefix="fulcrum-callgrind-")
    out = args.out or work
    os.makedirs(out, exist_ok=True)
    rig = load.Rig(args.binary, work)
    rig.start_backends()
    n = args.requests
    per = []
    try:
        for r in range(args.repeat):
            a = run_once(rig, n, os.path.join(out, f"cg.{r}.n"), args.workload)
            b = run_once(rig, 2 * n, os.path.join(out, f"cg.{r}.2n"), args.workload)
            per.append((b - a) / n)
            print(f"run {r+1}: {a:,} Ir for {n}, {b:,} Ir for {2*n}: {(b - a) / n:,.0f} Ir/request", flush=True)
    finally:
        load.stop(rig.backends)
    print(f"\n{os.path.basename(args.binary)}: {statistics.median(per):,.0f} Ir/request "
          f"(median of {len(per)}, {min(per):,.0f}-{max(per):,.0f}; {n} vs {2*n} "
          + ("GETs on new connections, 8 clients, " if args.workload == "close"
             else "keep-alive GETs, h2load --h1 -c8, ")
          + f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); files in {out}")


if __name__ == "__main__":
    main()
