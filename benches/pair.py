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
Usage: benches/pair.py BEFORE AFTER [--rounds N] [--seconds S] [--workloads LIST]
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the rig lives there)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workloads", default="",
                    help="comma-separated workloads of benches/load.py, paired saturated after "
                         "the keep-alive runs")
    args = ap.parse_args()
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
                for binary in order:
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
