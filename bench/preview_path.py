"""Benchmark: the preview path for N nodes.

For each N: run the real program (`__main__.py`) under Pulumi's mocks as `pulumi preview` runs
it, then call Check and Diff for every dynamic resource through one real provider server
(`python -m pulumi.dynamic`, the process the CLI starts), with 4 callers at once as the engine
does. Diff compares each resource's checked inputs with themselves (an unchanged stack).

    .venv/bin/python bench/preview_path.py [--nodes 10 100 1000 2000]

Prints per N: resources, program seconds, check+diff seconds, and microseconds per resource
(flat per-resource cost = linear growth).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.program import base_config, lab_like_nodes, run_program
from tests.support.provider_harness import ProviderServer


def measure(count: int, server: ProviderServer) -> dict:
    started = time.perf_counter()
    run = run_program(base_config(lab_like_nodes(count)))
    program = time.perf_counter() - started
    dynamic = [r for r in run.registrations if r.type.startswith("pulumi-python:dynamic")]

    def preview(registration) -> None:
        checked, failures = server.check(registration.name, {}, registration.inputs)
        if failures:
            raise SystemExit(f"{registration.name}: check failed: {failures}")
        server.diff(registration.name, f"{registration.name}-id", checked, checked)

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(preview, dynamic))
    calls = time.perf_counter() - started
    return {"nodes": count, "resources": len(dynamic), "program_s": program, "calls_s": calls,
            "us_per_resource": (program + calls) / len(dynamic) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000, 2000])
    options = parser.parse_args()
    print(f"{'nodes':>6} {'resources':>9} {'program s':>10} {'check+diff s':>13} "
          f"{'us/resource':>12}")
    with ProviderServer(config={"vela:sshPrivateKey": "unused by check and diff"}) as server:
        for count in options.nodes:
            row = measure(count, server)
            print(f"{row['nodes']:>6} {row['resources']:>9} {row['program_s']:>10.2f} "
                  f"{row['calls_s']:>13.2f} {row['us_per_resource']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
