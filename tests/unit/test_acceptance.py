"""The acceptance benchmark end to end, with a fake Runner that answers with real recorded
outputs (tests/data/recorded/INDEX.md, 10): commands, collection, comparison, verdict, exit
status and the files written. The live run on a cluster is not here."""

from __future__ import annotations

import dataclasses
import json

import pytest

from acceptance import compare, plan
from acceptance.__main__ import main
from acceptance.stack import StackInfo, stack_info
from providers.host.base import shell_command
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
H100 = "benchmarks/nccl-all-reduce-2x8xh100-a3mega.txt"
RTX = "benchmarks/nccl-all-reduce-2x2080ti-autodl.txt"


class FakeRunner:
    """Answers each benchmark with a recorded output; `slow` machines answer with the 2080 Ti
    recordings instead of the H100/A100 ones. No reduce_scatter_perf output with a named
    public source was found: it is answered with all_reduce_perf's, whose table it shares."""

    def __init__(self, slow: frozenset[str] = frozenset()) -> None:
        self.slow = slow
        self.calls: list[tuple[str, str, bytes | None]] = []

    def run(self, machine, argv, *, timeout, stdin=None):
        self.calls.append((machine.name, shell_command(argv), stdin))
        slow = machine.name in self.slow
        program = argv[0].rsplit("/", 1)[-1]
        if program == "mpirun":
            collective = next(a for a in argv if a.endswith("_perf")).rsplit("/", 1)[-1]
            if collective == "all_gather_perf":
                return recorded("benchmarks/nccl-all-gather-2x2080ti-autodl.txt")
            return recorded(RTX if slow else H100)
        if program == "bandwidthTest":
            return recorded("benchmarks/cuda-bandwidthtest-2080ti-autodl.txt" if slow
                            else "benchmarks/cuda-bandwidthtest-a100-sxm4-routergao.txt")
        if program == "p2pBandwidthLatencyTest":
            return recorded("benchmarks/cuda-p2pbandwidthlatencytest-2x2080ti-autodl.txt")
        if argv[:2] == ["iperf3", "--client"]:
            return recorded("benchmarks/iperf3-json-tcp-london-sydney.json.txt")
        if argv[:2] == ["sh", "-c"] and "addr show" in argv[2]:  # a server's address
            return recorded("ip_addr/ip-4-o-addr-lo-debian12.txt")
        return ""  # set-up steps: the hostfile, iperf3 servers, test addresses


def machines(*names, slots=1, env=None, interface="vela0", user="vela"):
    return [plan.Machine(name=name, address=f"10.0.0.{i + 1}", user=user, slots=slots,
                         environment=env or {}, interface=interface)
            for i, name in enumerate(names)]


def info(lab=False):
    return StackInfo(name="dev", vms=machines("n0-vm0", "n1-vm0"),
                     hosts=machines("n0", "n1", interface="0000:45:00.0", user="root"),
                     hostfile="10.0.0.1 slots=1\n10.0.0.2 slots=1\n", lab=lab)


# -- commands --------------------------------------------------------------------------------

def test_mpirun_gives_each_vm_its_own_nccl_environment_quoted():
    vms = [plan.Machine("n0-vm0", "10.0.0.1", "vela", slots=8,
                        environment={"NCCL_SOCKET_IFNAME": "=ens1", "NCCL_ODD": "a b$c"}),
           plan.Machine("n1-vm0", "10.0.0.2", "vela", slots=8,
                        environment={"NCCL_SOCKET_IFNAME": "=ens2"})]
    argv = plan.mpirun(vms, "all_reduce_perf", plan.Options())
    assert shell_command(argv) == (
        "mpirun --hostfile /tmp/vela-acceptance.hostfile --bind-to none --tag-output "
        "-np 8 -host 10.0.0.1:8 env 'NCCL_ODD=a b$c' NCCL_SOCKET_IFNAME==ens1 "
        "/opt/nccl-tests/build/all_reduce_perf -b 8 -e 8G -f 2 -g 1 : "
        "-np 8 -host 10.0.0.2:8 env NCCL_SOCKET_IFNAME==ens2 "
        "/opt/nccl-tests/build/all_reduce_perf -b 8 -e 8G -f 2 -g 1")


def test_gpu_plan_writes_the_stack_hostfile_then_runs_every_benchmark():
    steps = plan.gpu_plan(machines("a", "b"), "10.0.0.1 slots=1\n")
    assert [s.title for s in steps] == [
        "hostfile", *plan.COLLECTIVES, "bandwidthTest a", "p2pBandwidthLatencyTest a",
        "bandwidthTest b", "p2pBandwidthLatencyTest b"]
    assert steps[0].stdin == b"10.0.0.1 slots=1\n" and steps[0].machine.name == "a"


def test_network_plan_is_a_ring_of_iperf3_pairs_to_test_addresses():
    options = plan.Options(test_network="10.77.0.0/24")
    steps = plan.network_plan(machines("a", "b", "c"), options)
    setup = [(s.machine.name, s.argv[0], s.argv[-2:]) for s in steps if s.title.startswith("test")]
    assert setup == [("a", "sh", ["vela0", "10.77.0.1/24"]),
                     ("b", "sh", ["vela0", "10.77.0.2/24"]),
                     ("c", "sh", ["vela0", "10.77.0.3/24"])]
    assert "sudo -n" in steps[0].argv[2]  # as root: itself if it is root, else through sudo
    clients = [shell_command(s.argv({})) for s in steps if s.parse]
    assert clients == ["iperf3 --client 10.77.0.2 --json --time 10",
                       "iperf3 --client 10.77.0.3 --json --time 10",
                       "iperf3 --client 10.77.0.1 --json --time 10"]
    with pytest.raises(ValueError, match="two machines"):
        plan.network_plan(machines("a"))
    with pytest.raises(ValueError, match="room for 2 machines, not 3"):
        plan.network_plan(machines("a", "b", "c"), plan.Options(test_network="10.77.0.0/30"))
    with pytest.raises(ValueError, match="such as 10.77.0.0/24"):
        plan.network_plan(machines("a", "b"), plan.Options(test_network="10.77.0.1/24"))
    with pytest.raises(ValueError, match="no benchmark interface for b"):
        plan.network_plan([*machines("a"), *machines("b", interface="")])


def test_without_a_test_network_the_server_address_is_read_on_the_server():
    runner = FakeRunner()
    steps = plan.network_plan(machines("a", "b", user="root"))
    result = plan.execute(steps, runner, stack="dev", environment="vm", plan="network",
                          progress=lambda line: None)
    assert [(name, command.split()[0]) for name, command, _ in runner.calls] == [
        ("b", "sh"), ("b", "iperf3"), ("a", "iperf3")]
    # The address of b's interface, as `ip -4 -o addr` printed it (127.0.0.1 in the recording).
    assert runner.calls[-1][1] == "iperf3 --client 127.0.0.1 --json --time 10"
    assert result.series[0].machine == "a->b"


def test_the_server_without_an_address_says_how_to_give_it_one():
    class NoAddress(FakeRunner):
        def run(self, machine, argv, *, timeout, stdin=None):
            return "" if argv[:2] == ["sh", "-c"] else super().run(machine, argv,
                                                                  timeout=timeout, stdin=stdin)
    with pytest.raises(ValueError, match="b has no IPv4 address on vela0.*--test-network"):
        plan.execute(plan.network_plan(machines("a", "b")), NoAddress(), stack="dev",
                     environment="vm", plan="network", progress=lambda line: None)


def test_the_interface_script_finds_a_pfs_netdev_and_brings_it_up(tmp_path):
    """The set-up script runs under a real sh, against a sysfs tree and an `ip` that records."""
    import os
    import subprocess

    for port, netdev in (("0000:45:00.0", "enp69s0"), ("0000:85:00.0", "enp133s0")):
        (tmp_path / f"sys/bus/pci/devices/{port}/net/{netdev}").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/ip.log\n')
    (bin_dir / "ip").chmod(0o755)

    def run(step):
        argv = [word.replace("/sys/bus/pci", f"{tmp_path}/sys/bus/pci") for word in step.argv]
        return subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})

    # The VM on the host's second socket takes its VF from the second port: both come up.
    host = plan.Machine("n0", "10.0.0.1", "root", interface="0000:45:00.0",
                        ports=("0000:45:00.0", "0000:85:00.0"))
    vm = plan.Machine("n0-vm1", "10.0.0.9", "root", interface="vela0", hypervisor=host)
    steps = plan.network_plan([vm, *machines("n1-vm0", user="root")],
                              plan.Options(test_network="10.77.0.0/24"))
    for step in steps[:2]:
        assert run(step).returncode == 0
    assert (tmp_path / "ip.log").read_text().splitlines() == [
        "link set dev enp69s0 up", "link set dev enp133s0 up", "link set dev vela0 up",
        "-4 addr replace 10.77.0.1/24 dev vela0"]
    # A port without a netdev (its driver not loaded) fails the step, naming it.
    host = dataclasses.replace(host, ports=("0000:45:00.0", "0000:c5:00.0"))
    step = plan.network_plan([dataclasses.replace(vm, hypervisor=host),
                              *machines("n1-vm0", user="root")],
                             plan.Options(test_network="10.77.0.0/24"))[0]
    done = run(step)
    assert done.returncode != 0 and "no network interface on 0000:c5:00.0" in done.stderr


# -- comparison ----------------------------------------------------------------------------------

def _nccl_result(path, environment, scale=1.0):
    series = plan._nccl_series("all_reduce_perf")(recorded(path))[0]
    points = [p.model_copy(update={"value": p.value * scale}) for p in series.points]
    return compare.RunResult(stack="dev", environment=environment, plan="gpu",
                             series=[series.model_copy(update={"points": points})])


def test_verdict_gates_sizes_from_1_mib_at_the_threshold():
    vm = _nccl_result(H100, "vm")
    assert compare.compare(vm, _nccl_result(H100, "baremetal", 1 / 0.951)).passed
    failed = compare.compare(vm, _nccl_result(H100, "baremetal", 1 / 0.94))
    assert not failed.passed
    gated = [row.size for row in failed.rows if row.gated]
    assert min(gated) == 1 << 20 and all(row.passed is None for row in failed.rows
                                         if row.size < 1 << 20)
    assert "all_reduce_perf@all at 1 MiB: 9.68 GB/s on the VMs" in failed.problems[0]
    assert compare.compare(vm, _nccl_result(H100, "baremetal", 1 / 0.94), threshold=0.1).passed


def test_missing_baseline_sizes_and_wrong_results_fail():
    vm = _nccl_result(H100, "vm")  # up to 8 GiB
    verdict = compare.compare(vm, _nccl_result(RTX, "baremetal"))  # up to 1 GiB
    assert any("the baseline has no value here" in p for p in verdict.problems)
    wrong = vm.model_copy(update={"series": [vm.series[0].model_copy(update={"wrong": 3})]})
    assert "3 wrong results" in compare.compare(wrong, vm).problems[0]


def test_table_says_the_verdict():
    text = compare.table(compare.compare(_nccl_result(RTX, "vm"), _nccl_result(H100, "bm")))
    assert "FAIL (" in text and "all_reduce_perf  all" in text and "1 GiB" in text
    assert "PASS:" in compare.table(compare.compare(_nccl_result(H100, "vm"),
                                                    _nccl_result(H100, "bm")))


# -- the command ---------------------------------------------------------------------------------

def test_record_a_baseline_then_pass_with_every_file(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    runner = FakeRunner()
    assert main(["--stack", "dev", "--record-baseline", str(baseline), "--out",
                 str(tmp_path / "bm")], runner=runner, read=lambda name: info()) == 0
    assert {call[0] for call in runner.calls} == {"n0", "n1"}  # the hosts, as bare metal
    assert json.loads(baseline.read_text())["environment"] == "baremetal"
    out = tmp_path / "vm"
    runner = FakeRunner()
    assert main(["--stack", "dev", "--baseline", str(baseline), "--out", str(out)],
                runner=runner, read=lambda name: info()) == 0
    assert {call[0] for call in runner.calls} == {"n0-vm0", "n1-vm0"}
    assert "PASS:" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "acceptance.png", "acceptance.svg", "result.json", "table.txt", "verdict.json"]
    assert (out / "acceptance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "verdict.json").read_text())["passed"] is True


def test_slower_vms_fail_with_exit_status_1(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    main(["--stack", "dev", "--record-baseline", str(baseline), "--out", str(tmp_path / "bm")],
         runner=FakeRunner(), read=lambda name: info())
    status = main(["--stack", "dev", "--baseline", str(baseline), "--out", str(tmp_path / "vm")],
                  runner=FakeRunner(slow=frozenset({"n0-vm0", "n1-vm0"})),
                  read=lambda name: info())
    out = capsys.readouterr().out
    assert status == 1 and "FAIL (" in out and "bandwidthTest@n0-vm0 D2D" in out


def test_lab_runs_the_network_plan(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    runner = FakeRunner()
    main(["--stack", "dev", "--record-baseline", str(baseline), "--out", str(tmp_path / "bm")],
         runner=runner, read=lambda name: info(lab=True))
    assert [c[1] for c in runner.calls][1:] == ["iperf3 --server --one-off --daemon",
                                               "iperf3 --client 127.0.0.1 --json --time 10"]
    assert main(["--stack", "dev", "--baseline", str(baseline), "--out", str(tmp_path / "vm")],
                runner=FakeRunner(), read=lambda name: info(lab=True)) == 0
    assert "iperf3     n0-vm0->n1-vm0" in capsys.readouterr().out


def test_without_a_baseline_nothing_is_gated(tmp_path, capsys):
    assert main(["--stack", "dev", "--out", str(tmp_path)], runner=FakeRunner(),
                read=lambda name: info()) == 2
    assert "pass --baseline FILE" in capsys.readouterr().err
    assert (tmp_path / "result.json").exists()


def test_a_baseline_of_another_plan_is_refused(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    main(["--stack", "dev", "--record-baseline", str(baseline), "--out", str(tmp_path)],
         runner=FakeRunner(), read=lambda name: info(lab=True))
    assert main(["--stack", "dev", "--baseline", str(baseline), "--out", str(tmp_path)],
                runner=FakeRunner(), read=lambda name: info()) == 2
    assert "same --plan" in capsys.readouterr().err


def test_missing_baseline_file_says_how_to_record_it(tmp_path, capsys):
    assert main(["--stack", "dev", "--baseline", str(tmp_path / "none.json")],
                runner=FakeRunner(), read=lambda name: info()) == 2
    assert "--record-baseline" in capsys.readouterr().err


# -- the stack's outputs -------------------------------------------------------------------------

def test_stack_info_from_outputs_and_config():
    outputs = {"vmAddresses": {"n0-vm0": ["10.1.0.5"], "n1-vm0": ["10.1.0.6"]},
               "hostfile": "10.1.0.5 slots=8\n10.1.0.6 slots=8\n",
               "ncclEnvironment": {"n0-vm0": {"NCCL_IB_HCA": "=mlx5_0"}, "n1-vm0": {}}}
    nodes = [{"name": "n0", "address": "192.0.2.10", "hostKey": HOST_KEY},
             {"name": "n1", "address": "192.0.2.11", "port": 2222, "hostKey": HOST_KEY}]
    found = stack_info("prod", outputs, {"vela:guest": json.dumps({"user": "ml"}),
                                         "vela:nodes": json.dumps(nodes)})
    assert [(m.name, m.address, m.user, m.slots, m.environment) for m in found.vms] == [
        ("n0-vm0", "10.1.0.5", "ml", 8, {"NCCL_IB_HCA": "=mlx5_0"}),
        ("n1-vm0", "10.1.0.6", "ml", 8, {})]
    assert [(m.name, m.address, m.port, m.user) for m in found.hosts] == [
        ("n0", "192.0.2.10", 22, "root"), ("n1", "192.0.2.11", 2222, "root")]
    assert found.hosts[0].host_keys == (HOST_KEY,) and not found.lab


def test_stack_info_says_what_is_missing():
    with pytest.raises(ValueError, match="deploy it first"):
        stack_info("dev", {}, {})
    with pytest.raises(ValueError, match="no address yet"):
        stack_info("dev", {"vmAddresses": {"n0-vm0": []}}, {})


def test_each_vm_knows_its_host_interface_and_console_and_the_lab_jumps():
    outputs = {"vmAddresses": {"n0-vm0": ["192.168.122.5"], "n0-vm1": ["192.168.122.6"],
                               "n0-vm1-vm0": ["192.168.122.7"]},
               "ncclEnvironment": {"n0-vm0": {"NCCL_SOCKET_IFNAME": "=vela0,vela1"},
                                   "n0-vm1": {"NCCL_SOCKET_IFNAME": "^docker"}}}
    nodes = [{"name": "n0", "address": "192.0.2.10", "hostKey": HOST_KEY},
             {"name": "n0-vm1", "address": "192.0.2.11", "hostKey": HOST_KEY}]
    config = {"vela:nodes": json.dumps(nodes),
              "vela:shape": json.dumps({"nicPorts": ["0000:45:00.0", "0000:85:00.0"]})}
    found = stack_info("prod", outputs, config)
    assert [(m.name, m.interface, m.hypervisor.name, m.jump) for m in found.vms] == [
        ("n0-vm0", "vela0", "n0", False), ("n0-vm1", "", "n0", False),
        ("n0-vm1-vm0", "", "n0-vm1", False)]  # the longest node name that fits owns it
    assert found.vms[0].console_log == "/var/log/libvirt/qemu/vela-n0-vm0-console.log"
    assert [h.interface for h in found.hosts] == ["0000:45:00.0", "0000:45:00.0"]
    assert found.hosts[0].ports == ("0000:45:00.0", "0000:85:00.0")
    lab = stack_info("dev", outputs, {**config, "vela:labHosts": "2"})
    assert all(vm.jump for vm in lab.vms) and lab.lab
    assert all(vm.jump for vm in stack_info("prod", outputs, config, jump=True).vms)


def test_only_and_interface_choose_the_machines_and_what_they_benchmark_over(tmp_path, capsys):
    runner = FakeRunner()
    assert main(["--stack", "dev", "--record-baseline", str(tmp_path / "b.json"), "--out",
                 str(tmp_path), "--only", "n1,n0", "--interface", "eth9", "--test-network",
                 "10.77.1.0/24"], runner=runner, read=lambda name: info(lab=True)) == 0
    addressed = [c[1].split()[-2:] for c in runner.calls if "addr replace" in c[1]]
    assert addressed == [["eth9", "10.77.1.1/24"], ["eth9", "10.77.1.2/24"]]
    assert main(["--stack", "dev", "--out", str(tmp_path), "--only", "n0-vm0,n9-vm0"],
                runner=FakeRunner(), read=lambda name: info(lab=True)) == 2
    assert "--only names n9-vm0, which this run does not have" in capsys.readouterr().err


def test_a_vm_pair_without_a_host_pair_of_its_own_is_held_to_the_fabric_figure():
    def iperf(pairs_and_values, environment):
        return compare.RunResult(stack="dev", environment=environment, plan="network", series=[
            compare.Series(benchmark="iperf3", machine=pair, metric="throughput", unit="Gbit/s",
                           points=[compare.Point(key="received", value=value)])
            for pair, value in pairs_and_values])
    baseline = iperf([("n0->n1", 10.0), ("n1->n2", 20.0), ("n2->n0", 30.0)], "baremetal")
    # Two VMs of node n0 have no n0->n0 pair in the baseline: the median pair (20) counts.
    verdict = compare.compare(iperf([("n0-vm0->n0-vm1", 19.5)], "vm"), baseline)
    assert [(r.baseline, r.passed, r.reference) for r in verdict.rows] == [
        (20.0, True, "n1->n2")]
    text = compare.table(verdict)
    assert "n0-vm0->n0-vm1 *" in text  # the table says which pair it was held to
    assert "* against the fabric's median host pair (n1->n2)" in text
    verdict = compare.compare(iperf([("n0-vm0->n0-vm1", 10.0)], "vm"), baseline)
    assert "10 Gbit/s on the VMs, 20 on bare metal between n1 and n2 (50.0%)" in \
        verdict.problems[0]
    # A pair of nodes the baseline has is held to that pair's own figure.
    verdict = compare.compare(iperf([("n2-vm0->n0-vm0", 27.0)], "vm"), baseline)
    assert [(r.baseline, r.passed, r.reference) for r in verdict.rows] == [(30.0, False, None)]
    assert "*" not in compare.table(verdict)


def test_a_ring_of_three_reads_each_server_address_before_its_client_runs():
    runner = FakeRunner()
    result = plan.execute(plan.network_plan(machines("a", "b", "c")), runner, stack="dev",
                          environment="vm", plan="network", progress=lambda line: None)
    assert [s.machine for s in result.series] == ["a->b", "b->c", "c->a"]
    assert [c[0] for c in runner.calls] == ["b", "b", "a", "c", "c", "b", "a", "a", "c"]


def test_a_vm_run_on_the_baselines_test_network_is_refused_before_anything_runs(tmp_path,
                                                                                 capsys):
    """The baseline's test addresses stay on the hosts' PFs, on the fabric the VMs' VFs use."""
    baseline = tmp_path / "b.json"
    assert main(["--stack", "dev", "--record-baseline", str(baseline), "--out", str(tmp_path),
                 "--test-network", "10.77.1.0/24"], runner=FakeRunner(),
                read=lambda name: info(lab=True)) == 0
    assert compare.read_result(baseline).test_network == "10.77.1.0/24"
    runner = FakeRunner()
    assert main(["--stack", "dev", "--baseline", str(baseline), "--out", str(tmp_path),
                 "--test-network", "10.77.1.128/25"], runner=runner,
                read=lambda name: info(lab=True)) == 2
    assert ("--test-network 10.77.1.128/25 overlaps 10.77.1.0/24, which the baseline gave"
            in capsys.readouterr().err)
    assert runner.calls == []
    assert main(["--stack", "dev", "--baseline", str(baseline), "--out", str(tmp_path),
                 "--test-network", "10.77.3.0/24"], runner=FakeRunner(),
                read=lambda name: info(lab=True)) == 0
