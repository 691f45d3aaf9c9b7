"""Benchmark: converge time, and what the provider process's 4 threads cost a large cluster.

Two parts, both through the real Pulumi engine (the CLI scripts/setup builds, the program run
inline: tests/support/cli.py) and its provider processes (`python -m pulumi.dynamic`, one per
provider):

  queue  N long steps (each holds its provider call for --seconds, as a host reboot does) with
         providerShards 0, 2, 4...: one provider process runs 4 calls at once, so N steps take
         ceil(N/4) rounds; S explicit providers take ceil(N/4S). Uses the Ledger test provider:
         the point is the engine's and the provider server's scheduling, not the host.
  lab    the real program on 1 lab host, then on several: `up` (tuning with its reboot, the VF
         pool, the guest defined) and `destroy`, all nodes at once (maxRebootingNodes = hosts).
         Boots the lab first (TCG on a small machine: minutes).

    .venv/bin/python bench/converge.py queue [--steps 16] [--seconds 2] [--shards 0 2 4]
    .venv/bin/python bench/converge.py lab [--hosts 1 3]
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cli import CliStack
from tests.support.ledger import read_journal

ROOT = Path(__file__).resolve().parents[1]
LEDGER_PROGRAM = ROOT / "tests" / "support" / "ledger_program" / "__main__.py"


def _ledger_program() -> None:
    runpy.run_path(str(LEDGER_PROGRAM))


def queue(steps: int, seconds: float, shard_counts: list[int]) -> None:
    print(f"{steps} steps of {seconds:g} s each (a call that waits, like a reboot)")
    print(f"{'shards':>6} {'processes':>9} {'most at once':>12} {'up s':>7} {'ideal s':>8}")
    for shards in shard_counts:
        with tempfile.TemporaryDirectory() as scratch:
            ledger = Path(scratch) / "ledger"
            ledger.mkdir()
            entries = [{"name": f"node{i}", "value": "1", "seconds": seconds}
                       for i in range(steps)]
            stack = CliStack(Path(scratch), "bench", program=_ledger_program,
                             packages=["providers", "tests"])
            stack.configure({"vela:entries": json.dumps(entries),
                             "vela:ledgerDir": str(ledger), "vela:shards": str(shards)})
            # The engine's own limit (--parallel, default 4 per CPU core) set above the
            # providers', so the figures show the provider processes' 4 threads each.
            result = stack.up(parallel=steps)
            journal = read_journal(ledger)
            processes = len({entry["pid"] for entry in journal})
            lanes = 4 * max(shards, 1)
            print(f"{shards:>6} {processes:>9} {_most_at_once(journal):>12} "
                  f"{result.seconds:>7.1f} {math.ceil(steps / lanes) * seconds:>8.1f}", flush=True)


def _most_at_once(journal: list[dict]) -> int:
    running = most = 0
    for entry in journal:
        running += 1 if entry["event"] == "start" else -1
        most = max(most, running)
    return most


def lab(host_counts: list[int]) -> None:
    from lab.hosts import Lab
    from tests.integration.test_pulumi_cli import dev_stack_config

    with tempfile.TemporaryDirectory() as scratch:
        bench_lab = Lab(Path(scratch) / "lab")
        started = time.monotonic()
        bench_lab.up(max(host_counts), log=lambda message: None)
        print(f"lab of {max(host_counts)} hosts booted in {time.monotonic() - started:.0f} s")
        print(f"{'hosts':>5} {'up s':>7} {'slowest step':>24} {'destroy s':>10}")
        try:
            for count in host_counts:
                config = dev_stack_config(bench_lab, count)
                config["vela:maxRebootingNodes"] = str(count)
                stack = CliStack(Path(scratch) / f"stack-{count}", "dev")
                stack.configure(config, secret_keys=("vela:sshPrivateKey",))
                up = stack.up()
                seconds, name = max((step.seconds, name) for name, steps in up.steps.items()
                                    for step in steps)
                destroy = stack.destroy()
                label = f"{name} {seconds:.0f} s"
                print(f"{count:>5} {up.seconds:>7.0f} {label:>24} {destroy.seconds:>10.0f}",
                      flush=True)
        finally:
            bench_lab.down(log=lambda message: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    queue_parser = commands.add_parser("queue")
    queue_parser.add_argument("--steps", type=int, default=16)
    queue_parser.add_argument("--seconds", type=float, default=2.0)
    queue_parser.add_argument("--shards", type=int, nargs="+", default=[0, 2, 4])
    lab_parser = commands.add_parser("lab")
    lab_parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3])
    options = parser.parse_args()
    if options.command == "queue":
        queue(options.steps, options.seconds, options.shards)
    else:
        lab(options.hosts)


if __name__ == "__main__":
    main()
