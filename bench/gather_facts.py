"""Benchmark: round trips and wall time to gather a host's hardware facts.

With no arguments it starts a private sshd on loopback and gathers the HGX A100 fixture through
it (the same path a real host takes), then the same tree locally for comparison. Point it at a
real host (or a lab host) with --address/--port/--user/--key/--host-key.

    .venv/bin/python bench/gather_facts.py [--repeat 20]
    .venv/bin/python bench/gather_facts.py --address 10.0.0.5 --key ~/.ssh/id_ed25519 \\
        --host-key "ssh-ed25519 AAAA..."

Prints: connection set-up time, per-gather wall time (min / median / max), remote commands per
gather as counted by the client (and by the server, for the loopback sshd), bytes of output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.facts import gather_facts, run_gather
from providers.host import Host, KeyFile, LocalHost, SshHost


def measure(host: Host, repeat: int) -> dict:
    times = []
    result_bytes = 0
    for _ in range(repeat):
        started = time.perf_counter()
        facts = gather_facts(host)
        times.append(time.perf_counter() - started)
    result_bytes = len(run_gather(host).encode())
    return {"min": min(times), "median": statistics.median(times), "max": max(times),
            "functions": len(facts.pci), "bytes": result_bytes}


def trivial_command(host: Host, repeat: int = 10) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        host.run(["true"])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(label: str, figures: dict, execs: float | None, server_execs: float | None) -> None:
    print(f"{label}:")
    print(f"  gather wall time   min {figures['min'] * 1000:7.1f} ms   median "
          f"{figures['median'] * 1000:7.1f} ms   max {figures['max'] * 1000:7.1f} ms")
    print(f"  PCI functions      {figures['functions']}")
    print(f"  output per gather  {figures['bytes'] / 1024:.1f} KiB")
    if execs is not None:
        print(f"  remote commands    {execs:g} per gather (client count)")
    if server_execs is not None:
        print(f"  remote commands    {server_execs:g} per gather (server log)")


def bench_loopback(repeat: int) -> None:
    from tests.support.hgx import hgx_a100
    from tests.support.sshd import Sshd

    with tempfile.TemporaryDirectory() as work:
        root = hgx_a100(nic_vfs=4)[0].write(Path(work) / "hgx")
        sshd = Sshd(Path(work) / "sshd").start()
        try:
            host = SshHost("127.0.0.1", port=sshd.port, user=sshd.user,
                           client_key=KeyFile(str(sshd.client_key_path)),
                           pinned_host_keys=[sshd.host_key], sysroot=str(root))
            started = time.perf_counter()
            host.run(["true"])
            connect = time.perf_counter() - started
            print(f"SSH connection set-up (handshake, host key check, login): "
                  f"{connect * 1000:.1f} ms")
            print(f"One trivial remote command (`true`), the cost of any round trip: "
                  f"{trivial_command(host) * 1000:.1f} ms median")
            execs, sessions = host.connection.execs, sshd.sessions()
            figures = measure(host, repeat)
            gathers = repeat + 1  # measure() runs one more gather to count bytes
            report(f"HGX fixture over SSH (loopback sshd), {repeat} runs", figures,
                   (host.connection.execs - execs) / gathers,
                   (sshd.sessions() - sessions) / gathers)
            report(f"HGX fixture locally, {repeat} runs", measure(LocalHost(str(root)), repeat),
                   None, None)
        finally:
            sshd.stop()


def bench_remote(args: argparse.Namespace) -> None:
    host = SshHost(args.address, port=args.port, user=args.user, client_key=KeyFile(args.key),
                   pinned_host_keys=[args.host_key] if args.host_key else [],
                   known_hosts=args.known_hosts)
    started = time.perf_counter()
    host.run(["true"])
    print(f"SSH connection set-up: {(time.perf_counter() - started) * 1000:.1f} ms")
    print(f"One trivial remote command (`true`), the cost of any round trip: "
          f"{trivial_command(host) * 1000:.1f} ms median")
    execs = host.connection.execs
    figures = measure(host, args.repeat)
    report(f"{host.name}, {args.repeat} runs", figures,
           (host.connection.execs - execs) / (args.repeat + 1), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--address")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--user", default="root")
    parser.add_argument("--key", default="~/.ssh/id_ed25519")
    parser.add_argument("--host-key", help="the pinned host key line")
    parser.add_argument("--known-hosts", help="a known_hosts file instead of a pinned key")
    args = parser.parse_args()
    if args.address:
        bench_remote(args)
    else:
        bench_loopback(args.repeat)


if __name__ == "__main__":
    main()
