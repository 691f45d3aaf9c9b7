"""The lab's command line: `scripts/lab COMMAND` (or `.venv/bin/python -m lab COMMAND`).

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

from providers.errors import VelaError

from .hosts import Lab, LabError
from .image import ImageBuildError, ensure_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--no-wait", action="store_true")
    commands.add_parser("down")
    commands.add_parser("status")
    ssh = commands.add_parser("ssh")
    ssh.add_argument("index", type=int)
    ssh.add_argument("remote", nargs=argparse.REMAINDER)
    for name in ["reboot", "power-cycle"]:
        commands.add_parser(name).add_argument("index", type=int)
    commands.add_parser("image")
    args = parser.parse_args(argv)
    lab = Lab()
    try:
        return _dispatch(lab, args)
    except (LabError, ImageBuildError) as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1


def _dispatch(lab: Lab, args: argparse.Namespace) -> int:
    if args.command == "up":
        hosts = lab.up(args.hosts, wait=not args.no_wait)
        print(f"inventory: {lab.directory / 'inventory.json'}")
        for host in hosts:
            print(f"{host.name}  127.0.0.1:{host.spec.ssh_port}  {host.host_key}")
    elif args.command == "down":
        lab.down()
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
        lab.reboot(args.index)
    elif args.command == "power-cycle":
        lab.power_cycle(args.index)
    elif args.command == "image":
        print(f"lab image: ready at {ensure_image().directory}")
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
