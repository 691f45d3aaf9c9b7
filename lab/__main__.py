"""The lab's command line: `scripts/lab COMMAND` (or `.venv/bin/python -m lab COMMAND`).

Emulated GPU hypervisor hosts (QEMU, with an IOMMU, NUMA, PCIe switches, a GPU stand-in and an
SR-IOV NIC per node) to deploy vela on. Long commands say what they are doing as they go, each
line with the time since the command began.

    up [--hosts N]       build the image if needed, start lab-0..lab-(N-1), wait for SSH
    down                 stop and remove every lab host (the cached image stays)
    status               each host: state, SSH port, pinned host key
    ssh N [COMMAND...]   log in to lab-N (or run COMMAND there) with OpenSSH, key pinned
    reboot N             reboot lab-N from inside and wait until it is back
    power-cycle N        cut lab-N's power, turn it on again, wait until it is back
    image                build the host image now (scripts/setup does this)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from providers.errors import VelaError

from .hosts import Lab, LabError
from .image import ImageBuildError, ensure_image

COMMANDS = {  # name: (one line for `lab --help`, what `lab NAME --help` says)
    "up": ("build the image if needed, start lab-0..lab-(N-1), wait for SSH",
           "Build the host image if it is not cached (needs root; about 100 s on 2 cores), "
           "start lab-0 .. lab-(N-1) where they are not running, write .lab/inventory.json, "
           "and wait until each answers over SSH (first boots under TCG: 30-100 s)."),
    "down": ("stop and remove every lab host (the cached image stays)",
             "Stop and remove every lab host: disks, NVRAM, keys and the inventory. The "
             "cached image stays."),
    "status": ("each host: state, SSH port, pinned host key",
               "Each host: running or stopped, whether SSH answers, its SSH port and its "
               "pinned host key."),
    "ssh": ("log in to lab-N (or run COMMAND there) with OpenSSH, key pinned",
            "Log in to lab-N as root with OpenSSH, its host key checked against the pinned "
            "one, or run COMMAND there."),
    "reboot": ("reboot lab-N from inside and wait until it is back",
               "Reboot lab-N from inside (systemctl reboot), as an operator would, and wait "
               "until it answers over SSH in a new boot."),
    "power-cycle": ("cut lab-N's power, turn it on again, wait until it is back",
                    "Cut lab-N's power (QEMU quits at once), start it again with the same "
                    "disk, NVRAM and port, and wait until it answers over SSH."),
    "image": ("build the host image now (scripts/setup does this)",
              "Build the lab's host image now if its recipe (lab/image.py, lab/image/overlay) "
              "is not in the cache; scripts/setup does this. Needs root."),
}
INDEX_HELP = "the host's number: 0 for lab-0"


class Clock:
    """Progress lines, each with the time since the command began: `[  12.3 s] line`."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {line}", flush=True)


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="lab", description=__doc__.split("\n\n")[1],
                                          epilog="`lab COMMAND --help` says more about each.")
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        short, long = COMMANDS[name]
        return commands.add_parser(name, help=short, description=long)

    up = command("up")
    up.add_argument("--hosts", type=int, default=2, metavar="N",
                    help="how many hosts: lab-0 .. lab-(N-1) (default 2)")
    up.add_argument("--no-wait", action="store_true",
                    help="start the hosts and return without waiting for SSH")
    command("down")
    command("status")
    ssh = command("ssh")
    ssh.add_argument("index", type=int, metavar="N", help=INDEX_HELP)
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND",
                     help="a command to run there instead of a login shell")
    for name in ["reboot", "power-cycle"]:
        command(name).add_argument("index", type=int, metavar="N", help=INDEX_HELP)
    command("image")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lab = Lab()
    try:
        return _dispatch(lab, args, Clock())
    except (LabError, ImageBuildError) as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1


def _dispatch(lab: Lab, args: argparse.Namespace, log=print) -> int:
    if args.command == "up":
        hosts = lab.up(args.hosts, wait=not args.no_wait, log=log)
        print(f"inventory: {lab.directory / 'inventory.json'}")
        for host in hosts:
            print(f"{host.name}  127.0.0.1:{host.spec.ssh_port}  {host.host_key}")
    elif args.command == "down":
        lab.down(log=log)
    elif args.command == "status":
        _status(lab)
    elif args.command == "ssh":
        host = lab.host(args.index)
        command = ["ssh", "-i", str(lab.key_path), "-p", str(host.spec.ssh_port),
                   "-o", f"UserKnownHostsFile={lab.directory / 'known_hosts'}",
                   "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                   "root@127.0.0.1", *args.remote]
        os.execvp("ssh", command)
    elif args.command == "reboot":
        lab.reboot(args.index, log=log)
    elif args.command == "power-cycle":
        lab.power_cycle(args.index, log=log)
    elif args.command == "image":
        log(f"lab image: ready at {ensure_image(log).directory}")
    return 0


def _status(lab: Lab) -> None:
    hosts = lab.hosts()
    if not hosts:
        print("no lab hosts; `scripts/lab up --hosts 2` starts two")
        return
    for host in hosts:
        state = "running" if host.running() else "stopped"
        if host.running():
            try:
                lab.ssh_host(host, connect_timeout=3.0).run(["true"], timeout=10)
                state += ", SSH up"
            except (VelaError, OSError):  # status reports; it never fails on one host
                state += ", SSH not answering"
        print(f"{host.name}  {state:<28} 127.0.0.1:{host.spec.ssh_port}  {host.host_key}")


if __name__ == "__main__":
    sys.exit(main())
