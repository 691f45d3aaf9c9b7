"""The acceptance benchmark's real path, over a real sshd on loopback: SshRunner, VMs reached
through their host (direct-tcpip), their host keys read from a console log in cloud-init's
format, the server's address read with `ip`, real iperf3 both ways, and the files and verdict.
Only the machines are stand-ins: every "host" and "VM" is this machine's loopback sshd."""

from __future__ import annotations

import json

from acceptance.__main__ import SshRunner, main
from acceptance.hostkeys import BEGIN, END
from acceptance.plan import Machine
from acceptance.stack import StackInfo


def _stack(sshd, console) -> StackInfo:
    hosts = [Machine(name=name, address="127.0.0.1", user=sshd.user, port=sshd.port,
                     host_keys=(sshd.host_key,), interface="lo") for name in ("n0", "n1")]
    vms = [Machine(name=f"{host.name}-vm0", address="127.0.0.1", user=sshd.user,
                   port=sshd.port, interface="lo", hypervisor=host, console_log=str(console),
                   jump=True) for host in hosts]
    return StackInfo(name="dev", vms=vms, hosts=hosts, hostfile="", lab=True)


def _runner(sshd, tmp_path) -> SshRunner:
    known = tmp_path / "known_hosts"
    known.write_text("")  # nothing trusted but what the stack pins and the consoles print
    return SshRunner(str(sshd.client_key_path), str(known), connect_timeout=10)


def test_baseline_on_hosts_then_vms_through_their_hosts_with_console_keys(sshd, tmp_path,
                                                                          capsys):
    console = tmp_path / "console.log"
    console.write_text(f"[    9.1] boot\n<14>Nov 30 21:37:42 ec2: {BEGIN}\n"
                       f"<14>Nov 30 21:37:42 ec2: {sshd.host_key} root@vm\n"
                       f"<14>Nov 30 21:37:42 ec2: {END}\n")
    stack = _stack(sshd, console)
    baseline = tmp_path / "baseline.json"
    logins = sshd.logins()
    assert main(["--stack", "dev", "--record-baseline", str(baseline), "--seconds", "1",
                 "--out", str(tmp_path / "bm")], runner=_runner(sshd, tmp_path),
                read=lambda name: stack) == 0
    recorded = json.loads(baseline.read_text())["series"]
    assert [(s["machine"], s["points"][0]["value"] > 0) for s in recorded] == [
        ("n0->n1", True)]
    out = tmp_path / "vm"
    # Loopback both times: the VMs must reach a tenth of the hosts' figure, a margin no
    # scheduling noise crosses, so the status says the path worked.
    status = main(["--stack", "dev", "--baseline", str(baseline), "--seconds", "1", "--out",
                   str(out), "--threshold", "0.9"], runner=_runner(sshd, tmp_path),
                  read=lambda name: stack)
    assert status == 0, capsys.readouterr()
    assert "n0-vm0->n1-vm0" in (out / "table.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "acceptance.png", "acceptance.svg", "result.json", "table.txt", "verdict.json"]
    # Two logins in all: the hosts (one sshd, so one pooled connection for n0 and n1), then
    # the VMs through it (a connection of its own: reached directly, with the same pinned key,
    # they would have shared the hosts' and made it one).
    assert sshd.logins() - logins == 2


def test_a_vm_whose_console_shows_another_key_is_refused(sshd, tmp_path, capsys):
    from tests.support.sshd import keygen

    console = tmp_path / "console.log"
    other = keygen(tmp_path / "other_host_key")
    console.write_text(f"{BEGIN}\n{other}\n{END}\n")
    status = main(["--stack", "dev", "--baseline", str(tmp_path / "none.json"), "--out",
                   str(tmp_path)], runner=_runner(sshd, tmp_path),
                  read=lambda name: _stack(sshd, console))
    assert status == 2 and "--record-baseline" in capsys.readouterr().err
    (tmp_path / "b.json").write_text(json.dumps({"stack": "dev", "environment": "baremetal",
                                                 "plan": "network", "series": []}))
    status = main(["--stack", "dev", "--baseline", str(tmp_path / "b.json"), "--seconds", "1",
                   "--out", str(tmp_path)], runner=_runner(sshd, tmp_path),
                  read=lambda name: _stack(sshd, console))
    err = capsys.readouterr().err
    assert status == 2 and "HOST KEY CHANGED" in err, err
