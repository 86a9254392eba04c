#!/usr/bin/env python3
"""Every chapter's Linux server and the peers, measured side by side in one run.

    bench/compare.py                                   # the full matrix (about 40 min)
    bench/compare.py --connections 50,500 --sizes 128,4096 --servers ch09,ch13,epoll,asio
    bench/compare.py --quick                           # a smoke run: seconds, not minutes
    bench/compare.py --servers ch13,ch13~multishot     # a step's effect: ch13 --without multishot

For every repeat, every point (connections x message size) and every server in turn:
the server starts on a free loopback port, pinned to core 0, with one worker thread
where it has the option; bench/echo_load drives it from core 1 for a warm-up and a
measured window, checks every echoed byte, and reads from /proc/stat how busy core 0
was in the window (softirq included: the kernel's loopback work for the server's
sends runs there). Busy time over messages is the server's CPU per message.

Writes to --out (default bench/results): runs.csv (every run), summary.csv (medians
and spread, one row per server and point, the machine on top), and, where matplotlib
is installed, throughput.svg, p99.svg and cpu.svg. A point a server cannot serve
(refused, reset, stalled, wrong bytes) is recorded as failed with the reason and
drawn as such; larger connection counts of that size are then not tried on it.
"""
import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = {"epoll": "bench/epoll_echo", "asio": "bench/asio_echo"}


def find_servers(build):
    """Chapter servers that run on Linux (chNN_echo_server), then the peers."""
    found = {}
    chapters = os.path.join(build, "chapters")
    for d in sorted(os.listdir(chapters)) if os.path.isdir(chapters) else []:
        num = d.split("-")[0]
        exe = os.path.join(chapters, d, f"ch{num}_echo_server")
        if os.access(exe, os.X_OK):
            found[f"ch{num}"] = exe
    for name, rel in PEERS.items():
        exe = os.path.join(build, rel)
        if os.access(exe, os.X_OK):
            found[name] = exe
    return found


def server_args(exe):
    """--threads 1 and a client limit past the matrix, where the program has them."""
    helptext = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10).stdout
    args = ["--port", "0"]
    if "--threads" in helptext:
        args += ["--threads", "1"]
    if "--quiet" in helptext:
        args += ["--quiet"]
    if "--max-clients" in helptext:  # as many as it takes (chapter 3 stops at FD_SETSIZE)
        try:
            Server(exe, args + ["--max-clients", "20000"], None).stop()
            args += ["--max-clients", "20000"]
        except RuntimeError:
            pass
    return args


class Server:
    def __init__(self, exe, args, pin):
        cmd = (["taskset", "-c", str(pin)] if pin is not None else []) + [exe] + args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = None
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"listening on [0-9.]+:(\d+)", line.strip())
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.stop()
            raise RuntimeError(f"{exe} printed no 'listening on' line")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(load, exe, args, conns, size, opts):
    """One run: a fresh server, one echo_load window. Returns a dict with a status."""
    try:
        server = Server(exe, args, opts.server_core)
    except RuntimeError as e:
        return {"status": "failed", "reason": str(e)}
    try:
        # Thousands of connections take the server seconds to accept from the backlog:
        # the warm-up grows with them (1 s more per 2,000), so the window sees the steady
        # state, and a connection still unserved at its end is the server's doing.
        warmup = max(opts.warmup, conns // 2000)
        cmd = (["taskset", "-c", str(opts.load_core)] if opts.load_core is not None else []) + [
            load, "--port", str(server.port), "--clients", str(conns), "--size", str(size),
            "--duration", str(opts.duration), "--warmup", str(warmup), "--stall", "5",
            "--json", "--quiet"]
        if opts.server_core is not None:
            cmd += ["--server-cpu", str(opts.server_core)]
        limit = opts.duration + warmup + 60 + conns / 200
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"echo_load did not finish in {limit:.0f} s"}
        alive = server.proc.poll() is None
    finally:
        server.stop()
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"status": "failed", "reason": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    r = json.loads(lines[-1])
    if r["errors"] or r["mismatches"] or r["messages"] == 0 or not alive:
        why = (out.stderr.strip().splitlines() or [""])[-1].removeprefix("echo_load: ")
        r.update(status="failed", reason=why or ("the server died" if not alive else "no echo"))
    else:
        r.update(status="ok", reason="")
    return r


def machine():
    compiler = "?"
    cache = os.path.join(OPTS.build, "CMakeCache.txt")
    if os.path.exists(cache):
        m = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.*)$", open(cache).read(), re.M)
        if m:
            compiler = subprocess.run([m.group(1), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "compiler": compiler,
            "date": time.strftime("%Y-%m-%d"), "duration_s": OPTS.duration, "warmup_s": OPTS.warmup,
            "repeats": OPTS.repeats, "server_core": OPTS.server_core, "load_core": OPTS.load_core}


FIELDS = ["server", "connections", "size", "repeat", "status", "messages_per_s", "mb_per_s", "p50_us", "p99_us",
          "max_us", "server_cpu_us_per_msg", "server_core_busy_share", "server_core_steal_share", "errors",
          "mismatches", "reason"]


def summarize(runs):
    rows = []
    keys = sorted({(r["server"], r["connections"], r["size"]) for r in runs}, key=lambda k: (k[2], k[1], k[0]))
    for key in keys:
        mine = [r for r in runs if (r["server"], r["connections"], r["size"]) == key]
        ok = [r for r in mine if r["status"] == "ok"]
        row = {"server": key[0], "connections": key[1], "size": key[2], "runs": len(mine), "ok": len(ok)}
        if len(ok) * 2 <= len(mine):  # served in at most half the runs: the model did not serve it
            row.update(status="failed", reason=next((r["reason"] for r in mine if r["status"] != "ok"), ""))
        else:
            row.update(status="ok", reason="")
            for f in ["messages_per_s", "p99_us", "server_cpu_us_per_msg"]:
                v = [float(r[f]) for r in ok]
                row[f] = round(statistics.median(v), 3)
                row[f + "_min"], row[f + "_max"] = round(min(v), 3), round(max(v), 3)
            row["steal_share_max"] = round(max(float(r.get("server_core_steal_share", 0)) for r in ok), 3)
        rows.append(row)
    return rows


def plot(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.transforms import blended_transform_factory
    except ImportError:
        system = "/usr/bin/python3"  # Debian's, where python3-matplotlib goes; PATH may name another
        if os.path.realpath(sys.executable) != os.path.realpath(system) and os.access(system, os.X_OK):
            if subprocess.run([system, __file__, "--plot-only", out]).returncode == 0:
                return
        print("compare: no matplotlib (Debian: python3-matplotlib), so no plots; the CSVs are written")
        return
    sizes = sorted({r["size"] for r in rows})
    servers = sorted({r["server"] for r in rows}, key=lambda s: (not s.startswith("ch"), s))
    # Latency and CPU span two orders of magnitude (one connection costs a wake-up per
    # echo, thousands share one): a log scale keeps every line readable.
    metrics = [("messages_per_s", "echoes per second", "throughput.svg", False),
               ("p99_us", "p99 latency (us)", "p99.svg", True),
               ("server_cpu_us_per_msg", "server CPU per echo (us)", "cpu.svg", True)]
    # Up to a dozen lines per panel: twenty colours, markers that differ too, the peers
    # dashed; one panel per message size, stacked, so each gets the page's full width.
    colours = plt.get_cmap("tab20").colors
    markers = "os^vD<>phP*Xd"
    for field, label, name, log in metrics:
        fig, axes = plt.subplots(len(sizes), 1, figsize=(9, 3.2 * len(sizes)), squeeze=False)
        for ax, size in zip(axes[:, 0], sizes):
            for i, s in enumerate(servers):
                pts = sorted((r for r in rows if r["server"] == s and r["size"] == size), key=lambda r: r["connections"])
                # A value too small to measure (n/a in the tables) is 0: no point on a log axis.
                good = [r for r in pts if r["status"] == "ok" and (not log or float(r[field] or 0) > 0)]
                style = "-" if s.startswith("ch") else "--"
                line, = ax.plot([r["connections"] for r in good], [r[field] for r in good], style,
                                marker=markers[i % len(markers)], markersize=4, color=colours[i % len(colours)],
                                label=s)
                bad = [r["connections"] for r in pts if r["status"] != "ok"]
                if bad:  # could not serve: an x on the axis, in the line's colour
                    ax.plot(bad, [0.0] * len(bad), "x", color=line.get_color(), markersize=8, clip_on=False,
                            transform=blended_transform_factory(ax.transData, ax.transAxes))
            ax.set_xscale("log")
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set_title(f"{size} B messages", fontsize=10)
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[-1, 0].set_xlabel("connections")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.suptitle(f"{label}; x on the axis: the server could not serve that point", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.85, 1))
        fig.savefig(os.path.join(out, name))
        plt.close(fig)
    print(f"compare: plots in {out}/throughput.svg, p99.svg, cpu.svg")


def read_summary(out):
    """summary.csv back into rows, numbers as numbers (for --plot-only)."""
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(l for l in f if not l.startswith("#")))
    for r in rows:
        for k, v in r.items():
            if k not in ("server", "status", "reason") and v not in ("", None):
                r[k] = float(v) if "." in v else int(v)
    return rows


def ratio_table(rows):
    """CPU per echo relative to the better peer, at every point both peers served."""
    lines = []
    for key in sorted({(r["size"], r["connections"]) for r in rows}):
        here = {r["server"]: r for r in rows if (r["size"], r["connections"]) == key and r["status"] == "ok"}
        peers = [here[p]["server_cpu_us_per_msg"] for p in PEERS if p in here]
        if not peers or min(peers) <= 0:
            continue
        best = min(peers)
        cells = ", ".join(f"{s} {here[s]['server_cpu_us_per_msg'] / best:.2f}x" for s in sorted(here))
        lines.append(f"  {key[1]:>6} x {key[0]:>6} B: better peer {best:.2f} us/echo; {cells}")
    return lines


def main():
    global OPTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--servers", help="comma list, e.g. ch04,ch09,epoll,asio (default: every one built)")
    ap.add_argument("--connections", default="1,10,100,1000,10000")
    ap.add_argument("--sizes", default="64,4096,65536")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1 s, 1 and 10 connections, 64 B")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any run failed (for the smoke test)")
    ap.add_argument("--plot-only", metavar="DIR", help="redraw the plots from DIR/summary.csv, run nothing")
    OPTS = ap.parse_args()
    if OPTS.plot_only:
        plot(read_summary(OPTS.plot_only), OPTS.plot_only)
        return
    if OPTS.quick:
        OPTS.repeats, OPTS.duration, OPTS.warmup, OPTS.connections, OPTS.sizes = 1, 1, 0, "1,10", "64"
    cores = os.cpu_count() or 1
    pin = cores >= 2 and shutil.which("taskset") is not None
    OPTS.server_core, OPTS.load_core = (0, 1) if pin else (None, None)
    if not pin:
        print("compare: fewer than 2 cores (or no taskset): nothing pinned, and no CPU per echo")
    load = os.path.join(OPTS.build, "bench", "echo_load")
    if not os.access(load, os.X_OK):
        sys.exit(f"compare: no {load}; build first: cmake --preset release && cmake --build --preset release")
    servers = find_servers(OPTS.build)
    if OPTS.servers:
        # "ch13~multishot+fixed-files": chapter 13 run with --without multishot,fixed-files.
        wanted = OPTS.servers.split(",")
        missing = [s for s in wanted if s.split("~")[0] not in servers]
        if missing:
            sys.exit(f"compare: not built: {', '.join(missing)} (built: {', '.join(servers)})")
        servers = {s: servers[s.split("~")[0]] for s in wanted}
    args = {s: server_args(exe) + (["--without", s.split("~")[1].replace("+", ",")] if "~" in s else [])
            for s, exe in servers.items()}
    conns = [int(c) for c in OPTS.connections.split(",")]
    sizes = [int(s) for s in OPTS.sizes.split(",")]
    os.makedirs(OPTS.out, exist_ok=True)
    runs, failed_at = [], {}  # (server, size) -> fewest connections it failed at
    total, done = OPTS.repeats * len(conns) * len(sizes) * len(servers), 0
    for rep in range(1, OPTS.repeats + 1):
        for size in sizes:
            for c in conns:
                for s, exe in servers.items():
                    done += 1
                    if c > failed_at.get((s, size), c):
                        r = {"status": "failed", "reason": "not tried: failed at fewer connections"}
                    else:
                        r = measure(load, exe, args[s], c, size, OPTS)
                        if r["status"] != "ok":
                            failed_at[(s, size)] = min(c, failed_at.get((s, size), c))
                    r.update(server=s, connections=c, size=size, repeat=rep)
                    runs.append(r)
                    state = (f"{r['messages_per_s']:>9.0f}/s p99 {r['p99_us']:>7.0f} us "
                             f"cpu {r['server_cpu_us_per_msg']:.2f} us" if r["status"] == "ok" else
                             f"FAILED: {r['reason']}")
                    print(f"[{done}/{total}] run {rep} {s:>6} {c:>6} x {size:>6} B  {state}", flush=True)
    with open(os.path.join(OPTS.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    rows = summarize(runs)
    with open(os.path.join(OPTS.out, "summary.csv"), "w", newline="") as f:
        for k, v in machine().items():
            f.write(f"# {k}: {v}\n")
        f.write("# regenerate: bench/compare.py " + " ".join(sys.argv[1:]) + "\n")
        fields = ["server", "connections", "size", "runs", "ok", "status"] + [
            f + suffix for f in ["messages_per_s", "p99_us", "server_cpu_us_per_msg"] for suffix in ["", "_min", "_max"]
        ] + ["steal_share_max", "reason"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"compare: {len(runs)} runs; {OPTS.out}/runs.csv and summary.csv")
    if pin:
        print("server CPU per echo, relative to the better peer (medians):")
        print("\n".join(ratio_table(rows)) or "  (no point that a peer served)")
        plot(rows, OPTS.out)
    failed = [r for r in runs if r["status"] != "ok"]
    print(f"compare: {len(failed)} run(s) failed or not tried (see the reason column)")
    if OPTS.strict and failed:
        sys.exit(1)


OPTS = None

if __name__ == "__main__":
    main()
