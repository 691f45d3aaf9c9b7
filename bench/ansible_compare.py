"""Benchmark: vela against an equivalent Ansible run, on the same host, side by side.

Two operations, each done by both tools against the same host (the HGX A100 fixture tree,
converged by vela's HostTuning, served by a private sshd on loopback as bench/gather_facts.py
does):

- facts: read the host's hardware facts. vela: `gather_facts` over `SshHost`. Ansible:
  bench/ansible/facts.yml (setup with gather_subset hardware, `find` for the PCI functions and
  NUMA nodes, one shell task per function and per node in a loop, `slurp` for the command line).
- refresh: what `pulumi refresh` costs for a converged HostTuning: read the facts and every
  setting it manages and find nothing to change. vela: `HostTuningProvider.read` over
  `SshHost`, rooted at the fixture. Ansible: bench/ansible/refresh.yml with --check --diff
  (lineinfile for GRUB_CMDLINE_LINUX, copy for the modprobe.d/modules-load.d/boot files, the
  unit link, setpci for ACS and Max Read Request, the firmware query, asserts on the facts),
  its wanted values taken from vela's own target for the host.

For each tool and operation it prints the remote commands the host ran (exec requests, and sftp
sessions, counted by the server from its own log, for both tools alike), the SSH connections the
server accepted, the bytes both ways through a counting TCP relay in front of sshd, and the
wall time (min / median / max over --repeat runs). Every run is a fresh client process with a
fresh connection, as `pulumi refresh` (a new provider process) and `ansible-playbook` are:
vela runs in a child Python process; Ansible's ControlPersist master is closed after each run.
Ansible runs with pipelining on (--repeat runs) and off (--repeat-unpipelined runs, default 1:
without pipelining each module costs four commands and an sftp upload, and a run takes minutes
here). Each run's result is checked: a facts run must find every PCI function of the tree (59),
a refresh must find the host in sync (vela: inSync, no drift; Ansible: changed=0, failed=0).

    .venv/bin/python bench/ansible_compare.py [--repeat 5] [--pipelining both|on|off]
        [--repeat-unpipelined 1]

On first use it creates .bench-venv/ (gitignored; `python -m venv`, then pip with the
machine's own pip configuration) holding ansible-core 2.19; delete it to start over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from providers.facts import gather_facts  # noqa: E402
from providers.host import KeyFile, SecretKey, SshHost  # noqa: E402
from providers.host_tuning.provider import HostTuningProvider  # noqa: E402

BENCH_VENV = REPO / ".bench-venv"
ANSIBLE_REQUIREMENT = "ansible-core>=2.19,<2.20"
PLAYBOOKS = REPO / "bench" / "ansible"
REMOTE_PYTHON = "/usr/bin/python3"
# setpci names for the registers HostTuning writes (its Register.what), as a user writes them.
SETPCI_NAMES = {"ACS control": "ECAP_ACS+6.w", "Max Read Request": "CAP_EXP+8.w"}
RECAP = re.compile(r"^bench\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.MULTILINE)


# -- the Ansible installation ------------------------------------------------------------------

def ensure_ansible() -> Path:
    """ansible-playbook from .bench-venv, installed there on first use."""
    playbook = BENCH_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        print(f"first use: installing {ANSIBLE_REQUIREMENT} into {BENCH_VENV.name}/ ...",
              flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENCH_VENV)], check=True)
        subprocess.run([str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        ANSIBLE_REQUIREMENT], check=True)
        print(f"installed in {time.perf_counter() - started:.0f} s", flush=True)
    return playbook


def ansible_version(playbook: Path) -> str:
    out = subprocess.run([str(playbook), "--version"], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()[0].split("[", 1)[-1].rstrip("]").removeprefix("core ")


# -- a TCP relay in front of sshd that counts bytes --------------------------------------------

class CountingRelay:
    """127.0.0.1:port -> 127.0.0.1:target, counting the bytes of each connection both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.bytes = 0
        self.open = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.open += 1
            done = threading.Barrier(2, action=lambda c=client, s=server: self._closed(c, s))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, done),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              done: threading.Barrier) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
                with self.lock:
                    self.bytes += len(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        done.wait()

    def _closed(self, client: socket.socket, server: socket.socket) -> None:
        client.close()
        server.close()
        with self.lock:
            self.open -= 1

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.listener.close()


def start_sshd(directory: Path):
    """The tests' private loopback sshd (tests/support/sshd.py), with the sftp subsystem a
    stock sshd has: Ansible copies its modules over sftp when pipelining is off."""
    from tests.support.sshd import Sshd

    class SftpSshd(Sshd):
        def _write_config(self) -> None:
            super()._write_config()
            with open(self.config_path, "a") as config:
                config.write("Subsystem sftp internal-sftp\n")

    return SftpSshd(directory).start()


# -- the host: the HGX fixture, converged by vela -----------------------------------------------

def converged_fixture(work: Path, target: dict) -> tuple[Path, dict]:
    """Write the HGX A100 fixture and converge it with HostTuning's own create (the fake kernel
    playing the reboots; `target`: where the resource says the host is); return its root and
    the resource's outputs (its state, which refresh reads from)."""
    from providers.host_tuning.provider import converge_desired
    from providers.host_tuning.spec import HostTuningArgs
    from tests.support.fakekernel import FakeKernel, KernelHost, firmware_standin
    from tests.support.hgx import hgx_a100
    from tests.support.recorded import recorded

    fake, _ = hgx_a100(grub_defaults=recorded("files/etc-default-grub-debian12.txt"))
    root = fake.write(work / "hgx")
    inputs = {**target, "mode": "vm", "hugepages": {"perNode": {"0": 8, "1": 8}},
              "reboot": "allowed", "firmware": {"numVfs": 8, "tool": firmware_standin(root)}}
    host = KernelHost(FakeKernel(fake, root))
    outputs = converge_desired(host, HostTuningArgs.model_validate(inputs), inputs)
    if not outputs["inSync"] or outputs["pendingReboot"]:
        raise SystemExit(f"the fixture did not converge: {outputs['drift']}")
    return root, outputs


def ansible_vars(root: Path, props: dict) -> dict:
    """The wanted values for refresh.yml, from vela's target for this host (what a user's
    inventory would hold)."""
    from providers.host import LocalHost
    from providers.host_tuning.observe import UNIT_LINK
    from providers.host_tuning.provider import observe
    from providers.host_tuning.target import desired_target, select_topology

    spec = HostTuningProvider.parse_inputs(props)
    host = LocalHost(str(root))
    now = observe(host, spec)
    desired = desired_target(spec, now.facts, now.observed, select_topology(spec, now.facts))
    grub_line = re.search(r'^GRUB_CMDLINE_LINUX="(.*)"$',
                          (root / "etc/default/grub").read_text(), re.MULTILINE)
    settings = list(desired.firmware.values())
    if any(other != settings[0] for other in settings):
        raise SystemExit("refresh.yml assumes one firmware recipe for every ConnectX")
    return {
        "sysroot": str(root),
        "grub_cmdline_linux": grub_line.group(1) if grub_line else "",
        "kernel_args": sorted(token for token in desired.kernel_args.values() if token),
        "managed_files": [
            {"path": path, "content": content,
             "mode": f"{(root / path.lstrip('/')).stat().st_mode & 0o7777:04o}"}
            for path, content in sorted(desired.files.items()) if content is not None],
        "absent_files": sorted(path for path, content in desired.files.items()
                               if content is None),
        "unit_link": {"path": UNIT_LINK, "src": os.readlink(root / UNIT_LINK.lstrip("/"))},
        "vfio_devices": sorted(address for address, driver in desired.drivers.items()
                               if driver),
        "modules_loaded": sorted(name for name, loaded in desired.modules.items() if loaded),
        "hugepages": {str(node): count for node, count in sorted(desired.hugepages.items())},
        "hugepage_pool": f"{desired.hugepages_kib}kB",
        "registers": [{"bdf": register.address,
                       "reg": SETPCI_NAMES.get(register.what, f"{register.offset:#x}.w"),
                       "value": register.value, "mask": register.mask}
                      for _, register in sorted(desired.registers.items())],
        "fw_tool": desired.firmware_tool or "mstconfig",
        "fw_devices": sorted(desired.firmware),
        "fw_settings": settings[0] if settings else {},
    }


# -- vela, one run in a fresh process -------------------------------------------------------------

class RootedHostTuning(HostTuningProvider):
    """HostTuning's provider with its host rooted at the fixture (a real host's root is /):
    the same `read`, the same SSH host and pooled connection, the key as stack config gives
    it."""

    def __init__(self, private_key: str, sysroot: str) -> None:
        self.private_key = private_key
        self.sysroot = sysroot

    def _host(self, spec) -> SshHost:
        return spec.connect(SecretKey(self.private_key), sysroot=self.sysroot,
                            name=f"{spec.address}:{spec.port}")


def vela_child(operation: str, config_path: str) -> None:
    """One vela run (the child process): print what it found, as JSON."""
    config = json.loads(Path(config_path).read_text())
    if operation == "startup":  # what every run pays before its first byte: start and imports
        print(json.dumps({}))
    elif operation == "facts":
        host = SshHost(config["address"], port=config["port"], user=config["user"],
                       client_key=KeyFile(config["key"]),
                       pinned_host_keys=[config["host_key"]], sysroot=config["root"])
        facts = gather_facts(host)
        print(json.dumps({"pci_functions": len(facts.pci), "numa_nodes": len(facts.numa_nodes)}))
    else:
        provider = RootedHostTuning(Path(config["key"]).read_text(), config["root"])
        props = config["props"]
        result = provider.read(f"{props['address']}:{props['port']}", props)
        print(json.dumps({key: result.outs[key] for key in ("inSync", "drift", "pendingReboot")}))


# -- measuring ------------------------------------------------------------------------------------

class Counters:
    """What the server and the relay saw, read before and after a run."""

    def __init__(self, sshd, relay: CountingRelay) -> None:
        self.sshd = sshd
        self.relay = relay

    def read(self) -> dict[str, int]:
        log = self.sshd.log()
        return {"commands": log.count("Starting session: command"),
                "sftp": log.count("Starting session: subsystem"),
                "connections": log.count("Accepted publickey"), "bytes": self.relay.bytes}


def measure(counters: Counters, repeat: int, run_once) -> dict:
    """`run_once()` `repeat` times; per run: wall time and the counters' increase."""
    times: list[float] = []
    runs: list[dict[str, int]] = []
    detail = ""
    for _ in range(repeat):
        before = counters.read()
        started = time.perf_counter()
        detail = run_once()
        times.append(time.perf_counter() - started)
        counters.relay.wait_idle()
        after = counters.read()
        runs.append({key: after[key] - before[key] for key in after})
    return {"times": times, "runs": runs, "detail": detail}


def vela_runner(operation: str, config_path: Path, functions: int = 0):
    def run_once() -> str:
        done = subprocess.run([sys.executable, __file__, "--vela-child", operation,
                               str(config_path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"vela {operation} failed:\n{done.stderr[-3000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if operation == "refresh" and (not found["inSync"] or found["drift"]):
            raise SystemExit(f"vela's refresh found drift on the converged host: {found}")
        if operation == "facts" and found["pci_functions"] != functions:
            raise SystemExit(f"vela found {found['pci_functions']} PCI functions, not {functions}")
        return ", ".join(f"{key}={value}" for key, value in found.items())
    return run_once


def ansible_runner(playbook_bin: Path, work: Path, operation: str, pipelining: bool,
                   functions: int):
    control_dir = work / "ansible-cp"
    env = {**os.environ, "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
           "ANSIBLE_HOME": str(work / "ansible-home"), "ANSIBLE_PIPELINING": str(pipelining),
           "ANSIBLE_NOCOLOR": "1"}
    command = [str(playbook_bin), str(PLAYBOOKS / f"{operation}.yml"),
               "-e", f"@{work / 'ansible-vars.json'}"]
    if operation == "refresh":
        command += ["--check", "--diff"]

    def run_once() -> str:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work)
        # The persistent master would carry the connection into the next run: close it.
        for control in control_dir.glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "bench"],
                           capture_output=True)
        recap = RECAP.search(done.stdout)
        if done.returncode != 0 or not recap:
            raise SystemExit(f"ansible-playbook {operation} failed (rc {done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
        ok, changed, unreachable, failed = (int(value) for value in recap.groups())
        if operation == "refresh" and (changed or failed or unreachable):
            raise SystemExit(f"Ansible's check found drift on the converged host:\n"
                             f"{done.stdout[-4000:]}")
        summary = re.search(r'"msg": "pci_functions=(\d+)([^"]*)"', done.stdout)
        if operation == "facts" and (not summary or int(summary.group(1)) != functions):
            raise SystemExit(f"Ansible did not find the {functions} PCI functions:\n"
                             f"{done.stdout[-4000:]}")
        return (f"ok={ok} changed={changed} failed={failed}"
                + (f", pci_functions={summary.group(1)} {' '.join(summary.group(2).split())}"
                   if summary else ""))
    return run_once


def write_ansible_setup(work: Path, sshd, relay: CountingRelay, variables: dict) -> None:
    known_hosts = work / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{relay.port} {sshd.host_key}\n")
    (work / "inventory.ini").write_text(
        f"bench ansible_host=127.0.0.1 ansible_port={relay.port} ansible_user={sshd.user} "
        f"ansible_ssh_private_key_file={sshd.client_key_path}\n")
    (work / "ansible.cfg").write_text(f"""[defaults]
inventory = {work / 'inventory.ini'}
host_key_checking = True
interpreter_python = {REMOTE_PYTHON}
retry_files_enabled = False
forks = 1

[ssh_connection]
control_path_dir = {work / 'ansible-cp'}
# Ansible's default ssh_args, plus the pinned known_hosts file.
ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes \
-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes
""")
    (work / "ansible-vars.json").write_text(json.dumps(variables, indent=1))


# -- the report -----------------------------------------------------------------------------------

def spread(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def row(operation: str, tool: str, figures: dict) -> str:
    runs = figures["runs"]
    commands = spread([run["commands"] for run in runs])
    sftp = [run["sftp"] for run in runs]
    if any(sftp):
        commands += f" +{spread(sftp)} sftp"
    times = figures["times"]
    kib = statistics.median(run["bytes"] for run in runs) / 1024
    return (f"{operation:<8} | {tool:<34} | {commands:>15} | "
            f"{spread([run['connections'] for run in runs]):>11} | {kib:>8.1f} | "
            f"{min(times):6.2f} / {statistics.median(times):6.2f} / {max(times):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipelining", choices=["both", "on", "off"], default="both",
                        help="Ansible's SSH pipelining (default: both, one after the other)")
    parser.add_argument("--repeat-unpipelined", type=int, default=1, metavar="N",
                        help="runs of Ansible without pipelining (default 1: each takes minutes "
                             "on a small machine; its counts do not vary)")
    parser.add_argument("--vela-child", nargs=2, metavar=("OPERATION", "CONFIG"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vela_child:
        vela_child(*args.vela_child)
        return

    playbook_bin = ensure_ansible()
    version = ansible_version(playbook_bin)
    pipelining = {"both": [True, False], "on": [True], "off": [False]}[args.pipelining]
    with tempfile.TemporaryDirectory(prefix="vela-ansible-") as tmp:
        work = Path(tmp)
        sshd = start_sshd(work / "sshd")
        relay = CountingRelay(sshd.port)
        try:
            started = time.perf_counter()
            root, props = converged_fixture(work, {
                "address": "127.0.0.1", "port": relay.port, "user": sshd.user,
                "hostKey": sshd.host_key})
            print(f"HGX A100 fixture converged by HostTuning (setup, not measured) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            config = work / "vela.json"
            config.write_text(json.dumps({
                "address": "127.0.0.1", "port": relay.port, "user": sshd.user,
                "key": str(sshd.client_key_path), "host_key": sshd.host_key,
                "root": str(root), "props": props}))
            write_ansible_setup(work, sshd, relay, ansible_vars(root, props))
            counters = Counters(sshd, relay)
            functions = len(list((root / "sys/bus/pci/devices").iterdir()))
            startup = measure(counters, 3, vela_runner("startup", config))["times"]
            results: list[tuple[str, str, dict]] = []
            for operation in ("facts", "refresh"):
                label = "gather_facts" if operation == "facts" else "HostTuning read"
                print(f"{operation}: vela ...", flush=True)
                results.append((operation, f"vela ({label})", measure(
                    counters, args.repeat, vela_runner(operation, config, functions))))
                for on in pipelining:
                    name = f"ansible, pipelining {'on' if on else 'off'}"
                    print(f"{operation}: {name} ...", flush=True)
                    results.append((operation, name, measure(
                        counters, args.repeat if on else args.repeat_unpipelined,
                        ansible_runner(playbook_bin, work, operation, on, functions))))
        finally:
            relay.close()
            sshd.stop()

    print()
    print(f"Same host for both tools: the HGX A100 fixture (converged by vela) through a "
          f"loopback sshd; {args.repeat} runs each ({args.repeat_unpipelined} without "
          f"pipelining), a fresh client process and SSH connection per run. ansible-core "
          f"{version}, remote python {REMOTE_PYTHON} (set: no interpreter discovery).")
    print("remote commands: exec requests the server logged (+ sftp sessions); KiB: median "
          "bytes per run both ways on the wire (encrypted; Ansible compresses, -C).")
    print()
    print(f"{'op':<8} | {'tool':<34} | {'remote commands':>15} | {'connections':>11} | "
          f"{'KiB':>8} | wall s min / median / max")
    print("-" * 110)
    for operation, tool, figures in results:
        print(row(operation, tool, figures))
    print()
    for operation, tool, figures in results:
        print(f"{operation} {tool}: {figures['detail']}")
    print(f"vela's wall time includes its process start and imports (paramiko, pydantic, "
          f"pulumi), no command: {statistics.median(startup):.2f} s median.")


if __name__ == "__main__":
    main()
