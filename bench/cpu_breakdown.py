#!/usr/bin/env python3
"""Where a server's CPU goes, per echo: perf samples on the server's core, in groups.

    bench/cpu_breakdown.py --servers ch13,epoll --connections 50 --size 128

For each server in turn: the server starts pinned to core 0 (one worker), echo_load
drives it from core 1 with a warm-up, and `perf record` samples core 0 (kernel and
user, every process on it) for a few seconds. The samples are sorted into groups by
symbol name: the TCP/IP stack and loopback, io_uring, epoll and system call entry,
the scheduler, memory allocation, the server's own code, and the rest. Idle samples
are left out. Each group is shown as microseconds per echo (its share of the busy
time times the CPU per echo echo_load measured), so that two servers compare line
by line. Needs `perf` (Debian: linux-perf) and kernel.perf_event_paranoid <= 1, or root.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the same server table and start-up)

GROUPS = [
    ("io_uring", r"^(__)?io_|^io_uring"),
    ("epoll, syscall entry", r"^(do_)?epoll|^ep_|^__x64_sys|^do_syscall|^entry_SYSCALL|^syscall|^__sys_|^ksys_|^__fget|^fdget|^fput|^__fdget"),
    ("TCP/IP, loopback", r"tcp|^ip_|^__ip|inet|skb|^sk_|^__sk|sock|loopback|^net_|netif|^__dev|^dev_|napi|bbr|^_copy_(to|from)_iter|copy_user|csum|^nf_|^__napi|^validate_xmit|^eth_|^neigh|^dst_|^fib|^rt_|^raw_|^lock_sock|^release_sock|^__release_sock"),
    ("scheduler, wake-ups", r"schedule|task_switch|pick_next|enqueue|dequeue|wake|ttwu|update_curr|psi_|^select_task|^set_next|^put_prev|^check_preempt|^__switch|^switch_|^prepare_task|^finish_task|^hrtimer|^__hrtimer|^tick_|^sched"),
    ("memory", r"kmem_cache|slab|kfree|kmalloc|^__alloc|^alloc_|page|^free_|^memcg|^mod_memcg|^refill_obj|^obj_cgroup"),
]
IDLE = re.compile(r"halt|idle|^mwait|^poll_idle|^cpuidle|^acpi_")


def record(server_exe, args, conns, size, seconds, opts):
    srv = compare.Server(server_exe, args, 0)
    tmp = tempfile.mkdtemp()
    try:
        load = subprocess.Popen(["taskset", "-c", "1", opts.load, "--port", str(srv.port), "--clients", str(conns),
                                 "--size", str(size), "--duration", str(seconds + 2), "--warmup", "1",
                                 "--server-cpu", "0", "--json", "--quiet"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        data = os.path.join(tmp, "perf.data")
        subprocess.run(["perf", "record", "-q", "-a", "-C", "0", "-o", data, "--", "sleep", str(seconds)],
                       capture_output=True, check=True)
        result = json.loads(load.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1])
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                                 "-g", "none"], capture_output=True, text=True).stdout
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result, report


def classify(report, server_name):
    shares = {name: 0.0 for name, _ in GROUPS}
    shares.update({"the server's own code (user space)": 0.0, "other user space": 0.0, "other kernel": 0.0})
    busy = 0.0
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "k" and IDLE.search(sym):
            continue
        busy += pct
        if kind != "k":
            own = server_name in dso or dso.startswith("ch") or "echo" in dso
            shares["the server's own code (user space)" if own else "other user space"] += pct
            continue
        for name, pattern in GROUPS:
            if re.search(pattern, sym):
                shares[name] += pct
                break
        else:
            shares["other kernel"] += pct
    return {k: v / busy for k, v in shares.items()} if busy else shares


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(compare.ROOT, "build", "release"))
    ap.add_argument("--servers", default="ch13,epoll")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=4)
    opts = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("cpu_breakdown: no perf (Debian: apt-get install linux-perf, or scripts/deps.sh)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("cpu_breakdown: needs two cores, one for the server and one for the load")
    opts.load = os.path.join(opts.build, "bench", "echo_load")
    servers = compare.find_servers(opts.build)
    table = {}
    for spec in opts.servers.split(","):
        exe = servers[spec.split("~")[0]]
        args = compare.server_args(exe) + (["--without", spec.split("~")[1].replace("+", ",")] if "~" in spec else [])
        result, report = record(exe, args, opts.connections, opts.size, opts.seconds, opts)
        shares = classify(report, os.path.basename(exe))
        table[spec] = (result["server_cpu_us_per_msg"], shares)
        print(f"{spec}: {result['server_cpu_us_per_msg']:.2f} us per echo, {result['messages_per_s']:.0f} echoes/s",
              file=sys.stderr)
    names = list(next(iter(table.values()))[1])
    print(f"| us per echo, {opts.connections} x {opts.size} B | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{cpu * s[name]:.2f}" for cpu, s in table.values()) + " |")
    print("| **total (busy core 0)** | " + " | ".join(f"**{cpu:.2f}**" for cpu, _ in table.values()) + " |")


if __name__ == "__main__":
    main()
