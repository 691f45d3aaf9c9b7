"""Benchmark: how long the lab takes, the figures CI's budget depends on.

    .venv/bin/python bench/lab_timings.py [--hosts 2] [--skip-build] [--reboots 2]

Prints: a cold image build (into an empty cache; --skip-build uses the cached image), the time
from starting QEMU to SSH answering for N hosts booting at once, and, for lab-0, reboots from
inside and power cycles from outside. Runs in a private lab directory; leaves nothing behind.
Needs root for the image build (as scripts/setup does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.hosts import Lab, accelerator
from lab.image import ensure_image


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def quiet(*_args) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--reboots", type=int, default=2)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_build:
            os.environ["VELA_LAB_CACHE"] = str(Path(work) / "cache")
            print(f"image build, cold (mmdebstrap .. GPT disk): {timed(ensure_image):7.1f} s")
        image = ensure_image(quiet)
        print(f"accelerator: {accelerator(image, quiet)}")
        lab = Lab(Path(work) / "lab")
        try:
            boot = timed(lambda: lab.up(args.hosts, log=quiet))
            print(f"{args.hosts} host(s) from QEMU start to SSH, booting together: "
                  f"{boot:7.1f} s")
            reboots = [timed(lambda: lab.reboot(0, log=quiet)) for _ in range(args.reboots)]
            cycles = [timed(lambda: lab.power_cycle(0, log=quiet))
                      for _ in range(args.reboots)]
            print(f"reboot from inside to SSH:      median {statistics.median(reboots):6.1f} s  "
                  f"({', '.join(f'{value:.1f}' for value in reboots)})")
            print(f"power cycle from outside to SSH: median {statistics.median(cycles):6.1f} s  "
                  f"({', '.join(f'{value:.1f}' for value in cycles)})")
        finally:
            lab.down(log=quiet)


if __name__ == "__main__":
    main()
