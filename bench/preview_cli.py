"""Benchmark: `pulumi preview` of a vela cluster of N nodes through the real Pulumi CLI.

The real-CLI counterpart of `preview_path.py` (which runs the program under mocks and calls the
provider directly). Here it is the CLI that scripts/setup builds (.venv/bin/pulumi v3.274.1) and
its engine, a local file backend and PULUMI_HOME in a temporary directory, a passphrase secrets
provider, and the dynamic-provider plugin, with the vela program run inline from this checkout
through the Automation API (`pulumi preview --client=...`), as `components.runner` and
`tests/support/cli.py` run it: there is no Python language host here (README, "The Pulumi CLI").

The cluster is `tests/support/program.base_config` (per node a HostTuning, 2 SriovPools and one
whole-node GpuVm of 8 GPUs: 4 resources per node) with N nodes at 198.18.0.0/15 (RFC 2544
benchmarking addresses, never routed), each with a made-up but well-formed ed25519 host key. The
program needs one more thing at preview: the client key, which it reads and checks there; it is
a freshly generated ed25519 key, set as a secret. Planning opens no connection. `vela:nodes` is
written into the stack file, not through `pulumi config set`: at 2,000 nodes it is ~300 KB of
JSON, beyond the 128 KiB the OS allows one command-line argument.

Each preview runs in a fresh process and is timed around the CLI command. Per N and per
vela:providerShards S (--shards, default 0 and 4):

- "new": a new stack, every resource `create`. With PULUMI_SKIP_CHECKPOINTS=true, and (for
  N <= --checkpointed-max and the first S) with the CLI's default. v3.274.1 gives even a preview
  on a file backend a snapshot manager that, by default, serializes the whole snapshot (secrets
  encrypted, integrity checked) after every step and throws it away (pkg/backend/diy/backend.go:
  DiscardPersister; backend/snapshot.go: saveSnapshot), so a new stack's preview grows with N^2;
  PULUMI_SKIP_CHECKPOINTS=true serializes once, at the end, and a preview writes nothing anyway.
  The skip-checkpoints run also saves the plan (--save-plan; no measurable cost: 7.2-8.4 s with
  or without it at 200 nodes).
- "unchanged": an existing stack in which every resource is `same` (the engine calls Check and
  Diff for each through the provider plugin; an unchanged `same` writes no checkpoint, so the
  CLI default is timed). The state is imported with `pulumi stack import`, built from that plan
  as `pulumi up` would have left it: inputs are the engine's checked inputs from the plan,
  secrets as the stack's own ciphertext, with the values unknown at preview filled in as the
  providers resolve them (each VM's `vfs` are its node's pools' `vfs` outputs, without the
  None values the SDK drops); outputs are the inputs plus every output key of the resource's
  provider as a converged node reports them (inSync, no pending reboot, no drift; top-level None
  dropped as the dynamic provider drops it); ids as the providers make them (HostTuning
  ADDRESS:PORT, SriovPool ADDRESS:PORT/PF, GpuVm its uuid5), provider ids UUIDs; parents,
  dependencies and property dependencies from the plan; the stack's exports as the program
  computes them. The descriptive outputs (GPU and NIC lists, domain XML, NCCL topology,
  placement, originals) are synthesized for an HGX A100 node with the structure of a real lab
  `up`'s state, not gathered from a host. `sourcePosition`/`stackTrace` (debugging metadata the
  engine does not plan with) are left out. The run fails unless the engine plans every resource
  `same`. --parallel-diff adds a run with PULUMI_PARALLEL_DIFF=true (the engine's opt-in
  parallel Diff; by default it diffs one resource at a time).

    .venv/bin/python bench/preview_cli.py [--nodes 200 2000] [--shards 0 4]
        [--checkpointed-max 200] [--parallel-diff] [--timeout 600] [--keep]

Prints progress to stderr, then a table: nodes | resources | preview kind | wall s |
ms/resource (resources: every resource in the plan, the stack, component and providers too).
About 12 minutes on 2 busy cores with the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cli import PASSPHRASE

STACK = "bench"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's unknown value, as serialized
SKIP_CHECKPOINTS = {"PULUMI_SKIP_CHECKPOINTS": "true"}
PARALLEL_DIFF = {"PULUMI_PARALLEL_DIFF": "true"}
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


# -- the cluster's config ------------------------------------------------------------------------

def keys(count: int) -> tuple[str, list[str]]:
    """A real client key (OpenSSH format) and `count` well-formed host public key lines."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    client = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    hosts = [ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        for _ in range(count)]
    return client, hosts


def nodes(count: int, host_keys: list[str]) -> list[dict[str, str]]:
    if count > 2 * 256 * 250:
        raise SystemExit("at most 128,000 nodes fit in 198.18.0.0/15 as numbered here")
    return [{"name": f"node-{index}",
             "address": f"198.{18 + index // 64000}.{index // 250 % 256}.{index % 250 + 1}",
             "hostKey": host_keys[index]} for index in range(count)]


def configure(stack, count: int, shards: int) -> dict[str, Any]:
    """The stack's config: everything but vela:nodes through `pulumi config set`, vela:nodes
    into the stack file (too long for one command-line argument at 2,000 nodes)."""
    import yaml

    from tests.support.program import base_config

    client, host_keys = keys(count)
    extra = {"vela:sshPrivateKey": client}
    if shards:
        extra["vela:providerShards"] = str(shards)
    config = base_config(nodes(count, host_keys), **extra)
    listed = config.pop("vela:nodes")
    stack.configure(config, secret_keys=("vela:sshPrivateKey",))
    path = stack.work_dir / f"Pulumi.{STACK}.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["vela:nodes"] = listed
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1 << 30))
    return {**config, "vela:nodes": listed}


# -- one preview, in a process of its own --------------------------------------------------------

def run_preview(spec: dict[str, Any]) -> None:
    """The child: one `pulumi preview` of the stack, timed; its figures as JSON on stdout."""
    os.environ.update(spec["env"])
    from components.runner import select_stack

    stack = select_stack(STACK, Path(spec["work_dir"]), env=os.environ)
    options = {"plan": spec["plan"]} if spec.get("plan") else {}
    started = time.perf_counter()
    result = stack.preview(**options)
    seconds = time.perf_counter() - started
    changes = {getattr(key, "value", key): value for key, value in result.change_summary.items()}
    print(json.dumps({"seconds": seconds, "changes": changes}))


def preview(work: Path, stack, env: dict[str, str], *, timeout: float,
            plan: Path | None = None) -> dict[str, Any] | None:
    """Run one preview in a child process; None when it ran past `timeout` (it is stopped)."""
    spec = {"work_dir": str(stack.work_dir), "plan": str(plan) if plan else None,
            "env": {"PULUMI_BACKEND_URL": f"file://{stack.state_dir}",
                    "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
                    "PULUMI_HOME": str(work / "pulumi-home"), **env}}
    spec_path = work / "preview.json"
    spec_path.write_text(json.dumps(spec))
    child = subprocess.Popen([sys.executable, __file__, "--run-preview", str(spec_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child, its CLI and the provider plugin
        child.communicate()
        return None
    if child.returncode != 0:
        raise SystemExit(f"preview failed (exit {child.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


# -- the state `pulumi up` would have left -------------------------------------------------------

def deployment(plan: dict[str, Any], base: dict[str, Any], config: dict[str, Any]) -> dict:
    """A version-3 deployment of every resource in `plan` as created and converged."""
    from providers.gpu_vm.provider import OUTPUT_KEYS as VM_KEYS
    from providers.host_tuning.provider import OUTPUT_KEYS as HOST_KEYS
    from providers.sriov_pool.provider import OUTPUT_KEYS as POOL_KEYS

    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    plans = plan["resourcePlans"]
    ports = json.loads(config["vela:shape"])["nicPorts"]
    ids = {urn: str(uuid.uuid4()) for urn, entry in plans.items()
           if entry["goal"]["type"].startswith("pulumi:providers:")}
    states: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}

    def kind(urn: str) -> str:
        return plans[urn]["goal"]["type"].rsplit(":", 1)[-1]

    def name(urn: str) -> str:
        return urn.rsplit("::", 1)[-1]

    by_name = {name(urn): urn for urn in plans}
    # Pools first (each VM's vfs are its pools' vfs), then hosts and VMs.
    order = sorted(plans, key=lambda urn: {"SriovPool": 0, "HostTuning": 1, "GpuVm": 2}
                   .get(kind(urn), 3))
    for urn in order:
        state = dict(plans[urn]["state"])
        if kind(urn) == "SriovPool":
            out, id_ = pool_outputs(state, ports), pool_id(state)
            keys_ = POOL_KEYS
        elif kind(urn) == "HostTuning":
            out, id_ = host_outputs(state, ports), host_id(state)
            keys_ = HOST_KEYS
        elif kind(urn) == "GpuVm":
            # The program passes its node's pools' vfs, in shape.nicPorts order; the SDK drops
            # None values from inputs (rpc.serialize_property), as it did in the lab's state.
            node = name(urn).rsplit("-vm", 1)[0]
            pools = [outputs[by_name[f"{node}-{port_slug(port)}"]] for port in ports]
            state["vfs"] = without_none([vf for pool in pools for vf in pool["vfs"]])
            out, id_ = vm_outputs(state), vm_id(state)
            keys_ = VM_KEYS
        else:
            continue
        # The dynamic provider returns its outputs through rpc.serialize_properties, which
        # drops top-level None values (a pool without a network has no networkName).
        out = {key: value for key, value in out.items() if value is not None}
        added = set(out) - set(state)
        if not added <= set(keys_) or not set(keys_) - added <= {"networkName"}:
            raise SystemExit(f"{name(urn)}: synthesized outputs {sorted(added)} are not "
                             f"{kind(urn)}'s output keys {sorted(keys_)}: update "
                             f"bench/preview_cli.py to match the provider")
        states[urn], outputs[urn], ids[urn] = state, out, id_

    resources = []
    for urn in topological(plans):
        entry = plans[urn]
        goal = entry["goal"]
        resource: dict[str, Any] = {"urn": urn, "custom": goal["custom"]}
        if urn in ids:
            resource["id"] = ids[urn]
        resource["type"] = goal["type"]
        if goal["custom"]:
            inputs = states.get(urn, entry["state"])
            resource["inputs"] = inputs
            resource["outputs"] = outputs.get(urn, inputs)  # a provider's outputs: its inputs
        else:
            resource["outputs"] = component_outputs(urn, entry["state"], plans, outputs)
        if goal.get("parent"):
            resource["parent"] = goal["parent"]
        if goal.get("dependencies"):
            resource["dependencies"] = goal["dependencies"]
        if goal.get("provider"):
            provider_urn = goal["provider"].rsplit("::", 1)[0]
            resource["provider"] = f"{provider_urn}::{ids[provider_urn]}"
        if goal.get("propertyDependencies"):
            resource["propertyDependencies"] = goal["propertyDependencies"]
        resource["created"] = resource["modified"] = now
        resources.append(resource)
    text = json.dumps(resources)
    if UNKNOWN in text:
        raise SystemExit("the plan holds values unknown at preview that bench/preview_cli.py "
                         "does not resolve; the state would not be what `pulumi up` leaves")
    return {"version": 3, "deployment": {**base, "manifest": plan["manifest"],
                                         "resources": resources}}


def topological(plans: dict[str, Any]) -> list[str]:
    """URNs with every parent, provider and dependency before its dependents, as the engine
    requires of a snapshot."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(urn: str) -> None:
        if urn in seen:
            return
        seen.add(urn)
        goal = plans[urn]["goal"]
        before = [goal.get("parent"), (goal.get("provider") or "").rsplit("::", 1)[0],
                  *(goal.get("dependencies") or [])]
        for other in before:
            if other and other in plans:
                visit(other)
        done.append(urn)

    for urn in sorted(plans, key=_registration_order):
        visit(urn)
    return done


def _registration_order(urn: str) -> tuple:
    name = urn.rsplit("::", 1)[-1]
    parts = name.split("-")
    index = int(parts[1]) if len(parts) > 1 and parts[0] == "node" and parts[1].isdigit() else -1
    return (index, name)


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_none(item) for item in value]
    return value


def port_slug(port: str) -> str:
    from components.cluster_spec import port_slug as slug

    return slug(port)


def component_outputs(urn: str, state: dict[str, Any], plans: dict[str, Any],
                      outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A component's registered outputs; the stack's exports from its VMs' outputs (what
    components.program.declare exports once the VMs exist)."""
    if not urn.endswith(f"pulumi:pulumi:Stack::vela-{STACK}") or UNKNOWN not in json.dumps(state):
        return state
    vms = {plans[u]["goal"]["name"]: out for u, out in outputs.items()
           if plans[u]["goal"]["type"].endswith(":GpuVm")}
    vms = dict(sorted(vms.items(), key=lambda item: _registration_order(item[0])))
    return {**state,
            "vmAddresses": {vm: out["addresses"] for vm, out in vms.items()},
            "hostfile": "".join(f"{out['addresses'][0]} slots={int(out['gpus'])}\n"
                                for out in vms.values() if out["addresses"]),
            "ncclEnvironment": {vm: out["ncclEnvironment"] for vm, out in vms.items()},
            "nvlink": {vm: out["nvlink"] for vm, out in vms.items()}}


# The synthesized outputs' node: an HGX A100 (8 GPUs in pairs under 4 PCIe switches, a ConnectX-6
# under each switch), at made-up PCI addresses: (address, upstream switch, NUMA node).
GPUS = [("0000:07:00.0", "0000:05:00.0", 0), ("0000:0b:00.0", "0000:05:00.0", 0),
        ("0000:48:00.0", "0000:46:00.0", 0), ("0000:4c:00.0", "0000:46:00.0", 0),
        ("0000:88:00.0", "0000:86:00.0", 1), ("0000:8b:00.0", "0000:86:00.0", 1),
        ("0000:c8:00.0", "0000:c6:00.0", 1), ("0000:cb:00.0", "0000:c6:00.0", 1)]
NICS = [("0000:0c:00.0", "0000:05:00.0", 0), ("0000:4d:00.0", "0000:46:00.0", 0),
        ("0000:8c:00.0", "0000:86:00.0", 1), ("0000:cc:00.0", "0000:c6:00.0", 1)]


def pool_id(state: dict[str, Any]) -> str:
    return f"{state['address']}:{int(state['port'])}/{state['pf']}"


def host_id(state: dict[str, Any]) -> str:
    return f"{state['address']}:{int(state['port'])}"


def vm_id(state: dict[str, Any]) -> str:
    """GpuVm's id is its domain's UUID, made as providers/gpu_vm/target.py makes it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vela:{state['address']}:{state['name']}"))


def pool_outputs(state: dict[str, Any], ports: list[str]) -> dict[str, Any]:
    from providers.sriov_pool.spec import derived_mac

    pf, switch, numa = NICS[ports.index(state["pf"]) % len(NICS)]
    count = int(state.get("numVfs", 0))
    groups = [300 + ports.index(state["pf"]) * 16 + i for i in range(count)]
    vfs = [{"address": f"{pf[:8]}{(i + 2) // 8:02x}.{(i + 2) % 8}", "driver": "vfio-pci",
            "index": i, "iommuGroup": groups[i],
            "mac": derived_mac(state["cluster"], state["node"], state["pf"], i),
            "numaNode": numa, "switch": switch, "vfioDevice": f"/dev/vfio/{groups[i]}"}
           for i in range(count)]
    unit = f"vela-sriov-{state['pf']}"
    originals = {"autoprobe": "1", "files": {f"/etc/systemd/system/{unit}.service": None,
                                             f"/usr/local/sbin/{unit}": None},
                 "network": None, "num_vfs": 0, "pf": state["pf"], "pf_mtu": None,
                 "pf_up": False, "registers": {}, "unit_enabled": False, "vfs": {}}
    return {**state,
            "pfDevice": {"address": pf, "interface": state["pf"], "numVfs": count,
                         "numaNode": numa, "switch": switch, "totalVfs": 8},
            "vfs": vfs, "networkName": None,
            "changes": [f"autoprobe {pf}: 1 -> 0", f"link {state['pf']}: up",
                        f"vf-count {pf}: 0 -> {count}",
                        f"file /etc/systemd/system/{unit}.service: create",
                        f"file /usr/local/sbin/{unit}: create", f"unit {unit}.service: enable",
                        *[f"vf {pf} vf {vf['index']}: mac {vf['mac']}" for vf in vfs],
                        *[f"driver {vf['address']}: mlx5_core -> vfio-pci" for vf in vfs]],
            "originals": json.dumps(originals, indent=1, sort_keys=True) + "\n",
            "inSync": True, "drift": []}


def host_outputs(state: dict[str, Any], ports: list[str]) -> dict[str, Any]:
    vfio = sorted(gpu for gpu, _, _ in GPUS)
    kernel_args = ["intel_iommu=on", "iommu=pt", "modprobe.blacklist=nouveau",
                   "rd.driver.blacklist=nouveau", "vfio-pci.ids=10de:1af1,10de:20b2"]
    gpus = [{"acsPath": [switch, switch.replace(":00.0", ":01.0"), address], "address": address,
             "iommuGroup": 40 + i, "numaNode": numa,
             "pairedNic": next(nic for nic, s, _ in NICS if s == switch), "switch": switch,
             "vendorDevice": "10de:20b2"} for i, (address, switch, numa) in enumerate(GPUS)]
    nics = [{"address": address, "interfaces": [ports[i % len(ports)] if i < len(ports)
                                                 else f"ens{i + 1}f0"],
             "numaNode": numa, "sriovTotalVfs": 8, "switch": switch,
             "vendorDevice": "15b3:101b"} for i, (address, switch, numa) in enumerate(NICS)]
    originals = {"by_address": [], "drivers": dict.fromkeys(vfio),
                 "files": dict.fromkeys(["/etc/modprobe.d/vela-host-tuning.conf",
                                         "/etc/modules-load.d/vela-host-tuning.conf",
                                         "/etc/sysctl.d/90-vela-host-tuning.conf",
                                         "/etc/systemd/system/vela-host-tuning.service",
                                         "/usr/local/sbin/vela-host-tuning-boot"]),
                 "firmware": {}, "firmware_tool": None,
                 "grub": {"GRUB_CMDLINE_LINUX": dict.fromkeys(
                     ["intel_iommu", "iommu", "modprobe.blacklist", "rd.driver.blacklist",
                      "vfio_pci.ids"]), "GRUB_CMDLINE_LINUX_DEFAULT": {}},
                 "hugepages": {}, "hugepages_kib": None, "hugepages_total": None,
                 "kernel_args": dict.fromkeys(["intel_iommu", "iommu", "modprobe.blacklist",
                                               "rd.driver.blacklist", "vfio_pci.ids"]),
                 "modules": {"vfio_pci": False},
                 "registers": {f"acs {gpu['switch']}": "0x005f" for gpu in gpus},
                 "sysctls": {}, "unit_enabled": False}
    out = {**state, "gpus": gpus, "nics": nics,
           "iommuGroups": {str(gpu["iommuGroup"]): [gpu["address"]] for gpu in gpus},
           "applied": {"firmware": {}, "hugepageSizeKib": None, "hugepages": {},
                       "kernelArgs": kernel_args, "registers": {
                           f"acs {gpu['switch']}": "ACS_CTRL=0x001d/0x005f" for gpu in gpus},
                       "sysctls": {}, "vfio": vfio},
           "changes": ["file /etc/modprobe.d/vela-host-tuning.conf: create",
                       "file /etc/modules-load.d/vela-host-tuning.conf: create",
                       "file /usr/local/sbin/vela-host-tuning-boot: create",
                       "file /etc/systemd/system/vela-host-tuning.service: create",
                       "unit vela-host-tuning.service: enable",
                       *[f"driver {gpu}: nvidia -> vfio-pci" for gpu in vfio],
                       "module vfio_pci: load",
                       "kernel-args /etc/default/grub: " + " ".join(f"+{a}" for a in kernel_args)
                       + " (next-boot)", "reboot: done"],
           "pendingReboot": False, "pendingReasons": [], "reboots": 1,
           "originals": json.dumps(originals, indent=1, sort_keys=True) + "\n",
           "inSync": True, "drift": []}
    return out


def vm_outputs(state: dict[str, Any]) -> dict[str, Any]:
    vm_uuid = vm_id(state)
    index = sum(map(int, state["address"].split(".")[1:]))
    address = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
    gpus = [gpu for gpu, _, _ in GPUS][:int(state.get("gpus", 0))]
    vfs = state["vfs"]
    devices = [{"guestAddress": f"0000:{0x80 + i:02x}:00.0", "hostAddress": gpu, "kind": "gpu",
                "hostNode": numa, "hostSwitch": switch, "pairedWith": None, "gpudirect": True,
                "mac": None} for i, (gpu, switch, numa) in enumerate(GPUS[:len(gpus)])]
    devices += [{"guestAddress": f"0000:{0x90 + i:02x}:00.0", "hostAddress": vf["address"],
                 "kind": "vf", "hostNode": vf["numaNode"], "hostSwitch": vf["switch"],
                 "pairedWith": gpus[i % len(gpus)] if gpus else None, "gpudirect": True,
                 "mac": vf["mac"]} for i, vf in enumerate(vfs)]
    hostdevs = "".join(
        f"    <hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\">\n"
        f"      <driver name=\"vfio\"/>\n      <source>\n"
        f"        <address domain=\"0x0000\" bus=\"0x{d['hostAddress'][5:7]}\" "
        f"slot=\"0x{d['hostAddress'][8:10]}\" function=\"0x{d['hostAddress'][11]}\"/>\n"
        f"      </source>\n      <address type=\"pci\" domain=\"0x0000\" "
        f"bus=\"0x{d['guestAddress'][5:7]}\" slot=\"0x00\" function=\"0x0\"/>\n"
        f"    </hostdev>\n" for d in devices)
    cells = [{"id": n, "hostNode": n, "hostCpus": list(range(n * 40 + 1, n * 40 + 40)),
              "memoryKib": 960 * 1048576} for n in (0, 1)]
    xml = (f"<domain type=\"{state['domainType']}\">\n  <name>{state['name']}</name>\n"
           f"  <uuid>{vm_uuid}</uuid>\n  <metadata>\n    <vela:owner xmlns:vela="
           f"\"https://vela.invalid/owner\">{state['name']}</vela:owner>\n  </metadata>\n"
           f"  <memory unit=\"KiB\">2013265920</memory>\n  <vcpu placement=\"static\">78</vcpu>\n"
           f"  <cputune>\n" + "".join(f"    <vcpupin vcpu=\"{v}\" cpuset=\"{c}\"/>\n"
                                       for v, c in enumerate(cells[0]["hostCpus"]
                                                             + cells[1]["hostCpus"]))
           + f"  </cputune>\n  <os>\n    <type arch=\"x86_64\" machine=\"q35\">hvm</type>\n"
           f"  </os>\n  <cpu mode=\"{state['cpuModel']}\"/>\n  <devices>\n"
           f"    <disk type=\"file\" device=\"disk\">\n      <source file=\"/var/lib/vela/"
           f"{state['name']}.qcow2\"/>\n      <target dev=\"vda\" bus=\"virtio\"/>\n"
           f"    </disk>\n{hostdevs}  </devices>\n</domain>\n")
    topology = ("<system version=\"1\">\n" + "".join(
        f"  <cpu numaid=\"{n}\" arch=\"x86_64\" vendor=\"GenuineIntel\">\n" + "".join(
            f"    <pci busid=\"{d['guestAddress']}\" link_speed=\"16.0 GT/s PCIe\" "
            f"link_width=\"16\"/>\n" for d in devices if d["hostNode"] == n) + "  </cpu>\n"
        for n in (0, 1)) + "</system>\n")
    names = [f"vela{i}" for i in range(len(vfs))]
    out = {**state, "uuid": vm_uuid, "state": "running", "addresses": [address],
           "domainXml": xml, "ncclTopology": topology,
           "ncclEnvironment": {"NCCL_IB_HCA": "=" + ",".join(names),
                               "NCCL_SOCKET_IFNAME": "=" + ",".join(names),
                               "NCCL_IB_GID_INDEX": "3", "NCCL_IB_DISABLE": "0",
                               "NCCL_IB_PCI_RELAXED_ORDERING": "1",
                               "NCCL_IGNORE_CPU_AFFINITY": "1", "NCCL_BUFFSIZE": "67108864",
                               "NCCL_TOPO_FILE": "/var/run/nvidia-topologyd/virtualTopology.xml"},
           "nvlink": True,
           "placement": {"cells": cells, "devices": devices,
                         "gpuNicPairs": [[d["pairedWith"], d["hostAddress"]]
                                         for d in devices if d["kind"] == "vf"],
                         "physBits": 46},
           "changes": [f"domain {state['name']}: define", f"domain {state['name']}: start"],
           "inSync": True, "drift": []}
    return out


# -- one cluster size ----------------------------------------------------------------------------

def measure(count: int, shards: int, options) -> list[dict[str, Any]]:
    from pulumi import automation as auto

    from tests.support.cli import CliStack

    rows = []
    work = Path(tempfile.mkdtemp(prefix=f"vela-preview-{count}-"))
    label = f"{count} nodes" + (f", providerShards {shards}" if shards else "")

    def row(kind: str, result: dict | None, expect: str) -> None:
        if result is None:
            progress(f"{label}: {kind}: stopped after {options.timeout:.0f} s")
            rows.append({"nodes": count, "shards": shards, "kind": kind, "resources": None,
                         "seconds": None})
            return
        resources = sum(result["changes"].values())
        if set(result["changes"]) != {expect}:
            raise SystemExit(f"{label}: {kind}: the engine planned {result['changes']}, "
                             f"not only {expect!r}")
        progress(f"{label}: {kind}: {result['seconds']:.1f} s, {resources} resources")
        rows.append({"nodes": count, "shards": shards, "kind": kind, "resources": resources,
                     "seconds": result["seconds"]})

    try:
        progress(f"{label}: configuring a new stack in {work}")
        stack = CliStack(work, STACK)
        config = configure(stack, count, shards)
        plan = work / "plan.json"
        progress(f"{label}: preview of the new stack, PULUMI_SKIP_CHECKPOINTS (saving the plan)")
        row("new, skip checkpoints", preview(work, stack, SKIP_CHECKPOINTS, plan=plan,
                                            timeout=options.timeout), "create")
        if count <= options.checkpointed_max and shards == options.shards[0]:
            progress(f"{label}: preview of the new stack, CLI default (checkpoint every step)")
            row("new, CLI default", preview(work, stack, {}, timeout=options.timeout), "create")
        if rows[0]["seconds"] is None:
            return rows
        progress(f"{label}: importing the state `pulumi up` would have left")
        base = stack.stack.export_stack().deployment
        state = deployment(json.loads(plan.read_text()), base, config)
        stack.stack.import_stack(auto.Deployment(version=3, deployment=state["deployment"]))
        progress(f"{label}: preview of the unchanged stack, CLI default")
        row("unchanged, CLI default", preview(work, stack, {}, timeout=options.timeout), "same")
        if options.parallel_diff:
            progress(f"{label}: preview of the unchanged stack, PULUMI_PARALLEL_DIFF")
            row("unchanged, parallel diff", preview(work, stack, PARALLEL_DIFF,
                                                    timeout=options.timeout), "same")
    finally:
        if options.keep:
            progress(f"{label}: kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--shards", type=int, nargs="+", default=[0, 4],
                        help="vela:providerShards values to measure (0: the default provider)")
    parser.add_argument("--checkpointed-max", type=int, default=200,
                        help="largest N whose new stack is also previewed with the CLI's default "
                             "per-step checkpoints (it grows with N^2), with the first --shards")
    parser.add_argument("--parallel-diff", action="store_true",
                        help="also preview the unchanged stack with PULUMI_PARALLEL_DIFF=true")
    parser.add_argument("--timeout", type=float, default=600,
                        help="stop a preview after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' directories")
    parser.add_argument("--run-preview", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.run_preview:
        run_preview(json.loads(Path(options.run_preview).read_text()))
        return
    rows = [row for count in options.nodes for shards in options.shards
            for row in measure(count, shards, options)]
    print(f"{'nodes':>6} | {'resources':>9} | {'preview kind':<38} | {'wall s':>7} | "
          f"{'ms/resource':>11}")
    for row in rows:
        kind = row["kind"] + (f", {row['shards']} shards" if row["shards"] else "")
        if row["seconds"] is None:
            print(f"{row['nodes']:>6} | {'':>9} | {kind:<38} | "
                  f"{'>' + format(options.timeout, '.0f'):>7} | {'':>11}")
            continue
        print(f"{row['nodes']:>6} | {row['resources']:>9} | {kind:<38} | "
              f"{row['seconds']:>7.1f} | {row['seconds'] / row['resources'] * 1000:>11.1f}")


if __name__ == "__main__":
    main()
