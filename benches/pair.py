#!/usr/bin/env python3
"""Paired CPU ratio of two fulcrum binaries: a patch's "before" (A) and "after" (B).

Uses the load benchmark's rig (benches/load.py: 4 nginx backends and wrk on CPU 1, the proxy
alone on CPU 0, keep-alive GETs, round robin, upstream keep-alive). Each round runs A and B in
turn, the order swapped every round, at a fixed offered load (5 ms between requests per
connection) and saturated; CPU per request comes from /proc schedstat, and the ratio B/A is
taken within each round, so that drift of the machine between rounds cancels. Prints the
median and (min-max) of the ratios. With --workloads, the load benchmark's other workloads
(close, 64k, 1m, upload1m, pool1000, tls-handshake, tls-resume, tls-keepalive, h2-tls) are
paired the same way, saturated: whether a change makes any of them worse. Every run is
bounded; traffic stays on 127.0.0.1.

With --simultaneous, A and B run at the same time, both on CPU 0, each with its own client on
CPU 1 (wrk with 32 connections each, at fixed load 5 ms between requests, about 5,000 req/s
each; the TLS workloads' own clients, s_time or h2load, as load.py runs them), and CPU per
request is read over the same window for both: whatever slows the machine slows both alike,
which resolves differences of a few percent that one after the other cannot (the method of
../shared/pingora-perf-notes.md, whose A/A pairs read 0.990-1.015). The order in which the two
start alternates each round.
Usage: benches/pair.py BEFORE AFTER [--rounds N] [--seconds S] [--workloads LIST]
                                    [--simultaneous]
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the rig lives there)


def simultaneous(rig, order, seconds, fixed_rate, workload="keepalive"):
    """CPU microseconds per request of each binary in `order`, both serving `workload` at the
    same time (see the module's text), each from its own client: wrk with 32 connections, or
    the TLS workloads' s_time or h2load as benches/load.py runs them."""
    procs = {}
    tls = load.WORKLOADS[workload].get("tls", False)
    url_path = f"{load.scheme(workload)}://127.0.0.1:{{}}{load.WORKLOADS[workload]['path']}"
    try:
        for i, binary in enumerate(order):
            rig.binary, rig.instance = binary, f"-{i}"
            port = load.free_port()
            proc = load.spawn(rig.candidate("fulcrum", port, tls=tls, many=workload == "pool1000"),
                              load.CPU_PROXY, rig.log)
            load.wait_port(port, proc)
            procs[binary] = (proc, port)
        expect = {}
        for b, (proc, port) in procs.items():  # warm up: connections, upstream pools
            subprocess.run(["taskset", "-c", load.CPU_LOAD, "wrk", "-t1", "-c32", "-d1s"]
                           + rig.wrk_workload_args(workload) + [url_path.format(port)],
                           capture_output=True, timeout=30)
            client = load.WORKLOADS[workload].get("client")
            expect[b] = rig.probe_tls(port) if client == "s_time" else 0
        pids = {b: load.pids_of(p.pid) for b, (p, _) in procs.items()}
        before = {b: load.cpu_ns(pids[b]) for b in procs}
        with ThreadPoolExecutor(len(procs)) as clients:
            runs = {b: clients.submit(rig.run_client, port, seconds, fixed_rate, workload,
                                      expect[b], 32)
                    for b, (_, port) in procs.items()}
            results = {b: run.result(timeout=seconds + 60) for b, run in runs.items()}
        after = {b: load.cpu_ns(pids[b]) for b in procs}
        cpu = {}
        for b, r in results.items():
            if r["requests"] == 0 or r["bad"] or r["sock"]:
                sys.exit(f"{b}: the simultaneous {workload} run failed: {r['requests']} requests, "
                         f"{r['bad']} non-2xx, socket errors {r['sock']!r}")
            if tls:
                load.check_served(b, workload, r)
            cpu[b] = (after[b] - before[b]) / 1000.0 / r["requests"]
        return cpu
    finally:
        for proc, _ in procs.values():
            load.stop(proc)
        rig.instance = ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--simultaneous", action="store_true",
                    help="run A and B at the same time (keep-alive at fixed load and saturated, "
                         "and every workload given)")
    ap.add_argument("--workloads", default="",
                    help="comma-separated workloads of benches/load.py, paired saturated after "
                         "the keep-alive runs")
    args = ap.parse_args()
    if os.path.realpath(args.before) == os.path.realpath(args.after):
        sys.exit("BEFORE and AFTER are one file: for an A/A run, copy the binary")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in load.WORKLOADS:
            sys.exit(f"unknown workload {w}: one of {', '.join(load.WORKLOADS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rig = load.Rig(args.before, tempfile.mkdtemp(prefix="fulcrum-pair-"))
    rig.start_backends(many=1000 if "pool1000" in workloads else 0)
    if set(workloads) & set(load.TLS_WORKLOADS):
        rig.make_certificate()
    ratios = {"fixed": [], "sat": []}
    ratios.update({w: [] for w in workloads})
    try:
        for r in range(args.rounds):
            order = (args.before, args.after) if r % 2 == 0 else (args.after, args.before)
            for mode in ratios:
                cpu = {}
                if args.simultaneous:
                    workload = mode if mode in load.WORKLOADS else "keepalive"
                    cpu = simultaneous(rig, order, args.seconds, mode == "fixed", workload)
                for binary in order if not args.simultaneous else ():
                    rig.binary = binary
                    workload = mode if mode in load.WORKLOADS else "keepalive"
                    res = rig.measure("fulcrum", args.seconds, mode == "fixed", workload=workload)
                    if res["bad"] or res["sock"]:
                        sys.exit(f"{binary}: failed requests: non-2xx {res['bad']} {res['sock']}")
                    cpu[binary] = res["cpu_us"]
                ratio = cpu[args.after] / cpu[args.before]
                ratios[mode].append(ratio)
                print(f"round {r + 1} {mode:13} before {cpu[args.before]:6.2f} us/req  "
                      f"after {cpu[args.after]:6.2f} us/req  ratio {ratio:.3f}", flush=True)
    finally:
        load.stop(rig.backends)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    for mode, xs in ratios.items():
        print(f"{mode:13}: after/before CPU per request {statistics.median(xs):.3f} "
              f"({min(xs):.3f}-{max(xs):.3f}), {len(xs)} rounds")


if __name__ == "__main__":
    main()
