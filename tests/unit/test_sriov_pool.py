"""SriovPool's pure parts, from recorded real outputs of a lab host (igb PF, libvirt 9.0)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from providers.errors import SriovPoolError
from providers.facts import parse_gather_output
from providers.sriov_pool.bootunit import FRESH, boot_script, settings_args, vf_address
from providers.sriov_pool.observe import (
    PoolObservations,
    VfState,
    domains_using,
    parse_admin_up,
    parse_ip_link,
    paths,
)
from providers.sriov_pool.plan import plan
from providers.sriov_pool.preflight import preflight
from providers.sriov_pool.spec import SriovPoolArgs, derived_mac
from providers.sriov_pool.target import VfTarget, desired_target, find_pf, original_target
from tests.support.recorded import recorded

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PF = "0000:44:00.0"


def _spec(**changes) -> SriovPoolArgs:
    return SriovPoolArgs.model_validate({"address": "10.0.0.7", "hostKey": HOST_KEY,
                                         "pf": "enp68s0", "numVfs": 4, **changes})


@pytest.fixture(scope="module")
def facts():
    return parse_gather_output(recorded("gather/lab-host-q35-switch.txt"))


def test_ip_link_json_from_a_real_igb():
    states = parse_ip_link(recorded("ip_link/igb-3vfs-lab.json.txt"))
    assert states[0] == VfState(index=0, mac="02:11:22:33:44:00", vlan=100, qos=3,
                                spoofchk=False, trust=False, link_state="auto")
    assert states[1].mac == "02:11:22:33:44:01" and states[1].vlan == 0
    assert states[2].mac is None and states[2].spoofchk is True  # a fresh VF
    assert parse_ip_link("not json") == {}
    assert parse_admin_up(recorded("ip_link/igb-3vfs-lab.json.txt")) is False  # flags lack UP
    assert parse_admin_up("not json") is None


def test_who_uses_the_vfs_from_real_libvirt_xml():
    xml = recorded("libvirt/domain-vf-hostdev-and-interface.xml.txt")
    users = domains_using({"uuid": xml}, {"0000:44:10.0", "0000:44:10.2", "0000:44:10.4"}, None)
    assert users == {"vf-user": ["0000:44:10.0", "0000:44:10.2"]}
    assert domains_using({"uuid": xml}, {"0000:84:10.0"}, None) == {}
    network_user = xml.replace("<devices>", "<devices><interface type='network'><source "
                                            "network='pool-a'/></interface>")
    assert domains_using({"u": network_user}, set(), "pool-a") == {"vf-user": ["network pool-a"]}


def test_vf_addresses_follow_offset_and_stride(facts):
    pf = facts.device(PF)  # igb: First VF Offset 128, stride 2
    assert [vf_address(pf, index) for index in range(3)] == [
        "0000:44:10.0", "0000:44:10.2", "0000:44:10.4"]


# Pinned: every deployed VF keeps its MAC across vela versions. 02 (locally administered,
# unicast), then the first 5 bytes of sha256("vela/10.0.0.7/enp68s0/INDEX"), as
# `printf vela/10.0.0.7/enp68s0/0 | sha256sum` shows (be f1 8e 5e 5c ...).
PINNED_MACS = ["02:be:f1:8e:5e:5c", "02:a5:00:8d:3a:6b", "02:49:02:3c:b1:73", "02:3b:86:a8:bd:72"]


def test_macs_are_stable_per_cluster_node_port_and_index():
    spec = _spec()
    macs = [spec.settings(index).mac for index in range(4)]
    assert macs == PINNED_MACS  # a change of derivation would change every deployed VF's MAC
    assert len(set(macs)) == 4 and all(mac.startswith("02:") for mac in macs)
    assert _spec(cluster="other").settings(0).mac != macs[0]
    assert _spec(node="node-7").settings(0).mac != macs[0]
    assert derived_mac("vela", "10.0.0.7", "enp68s0", 0) == macs[0]
    given = _spec(overrides=[{"index": 1, "mac": "02:AA:00:00:00:01", "trust": True}])
    assert given.settings(1).mac == "02:aa:00:00:00:01" and given.settings(1).trust is True
    assert given.settings(0).trust is False  # the pool's default


@pytest.mark.parametrize("changes, words", [
    ({"numVfs": 300}, "less than or equal to 256"),
    ({"overrides": [{"index": 5}]}, "numVfs is 4"),
    ({"overrides": [{"index": 1}, {"index": 1}]}, "more than once"),
    ({"overrides": [{"index": 0, "mac": "01:00:5e:00:00:01"}]}, "multicast"),
    ({"overrides": [{"index": 0, "mac": "02:00:00:00:00:0g"}]}, "not a MAC"),
    ({"overrides": [{"index": 0, "mac": "02:00:00:00:00:01"},
                    {"index": 1, "mac": "02:00:00:00:00:01"}]}, "more than one VF"),
    ({"pf": "eth0;reboot"}, "neither a PCI address"),
    ({"defaults": {"vlan": 5000}}, "less than or equal to 4094"),
    ({"network": {"name": "Pool A"}}, "lower-case letters"),
    ({"nicInventory": [{"address": PF, "interfaces": ["enp68s0"], "sriovTotalVfs": 2}]},
     "offers at most 2 VFs"),
    ({"nicInventory": [{"address": "0000:84:00.0", "interfaces": ["enp132s0"]}]},
     "not one of this host's NIC ports"),
])
def test_bad_inputs(changes, words):
    with pytest.raises(ValidationError, match=words):
        _spec(**changes)


def test_count_change_is_planned_alone(facts):
    spec = _spec()
    observed = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="1")
    pf = find_pf(spec, facts, observed)
    assert preflight(spec, pf) == []
    target = desired_target(spec, facts, observed, pf)
    changes = plan(spec, target, facts, observed, pf).changes
    # New VFs must not go through the NIC's VF driver on their way to vfio-pci.
    assert [change.kind for change in changes] == ["autoprobe", "vf-count", "file", "file",
                                                   "unit"]
    assert changes[1].calls == [f"vela_sriov_numvfs {PF} 4 120"]
    script = boot_script(spec, target, pf)
    assert "vela_bind 0000:44:10.6 vfio-pci" in script and "vela_wait_vfio" in script
    assert 'vela_vf_set "$netdev" 0 mac 02:' in script and "spoofchk" not in script


def test_too_many_and_no_sriov_are_preflight_errors(facts):
    pf = facts.device(PF)
    assert "NUM_OF_VFS" in preflight(_spec(numVfs=8), pf)[0]
    gpu = facts.device("0000:43:00.0")
    assert "SR-IOV Support" in preflight(_spec(), gpu)[0]
    with pytest.raises(SriovPoolError, match="no NIC port 'enp9s0'.*enp68s0"):
        find_pf(_spec(pf="enp9s0"), facts, PoolObservations())


def test_count_change_refused_while_a_domain_uses_a_vf(facts):
    xml = recorded("libvirt/domain-vf-hostdev-and-interface.xml.txt")
    with_vfs = facts.model_copy(deep=True)
    pf = with_vfs.device(PF)
    pf.sriov_numvfs = 3
    from providers.facts.models import VirtualFunction
    pf.virtfns = [VirtualFunction(index=i, address=vf_address(pf, i)) for i in range(3)]
    observed = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="0", domains={"u": xml})
    spec = _spec(numVfs=2)
    target = desired_target(spec, with_vfs, observed, pf)
    with pytest.raises(SriovPoolError, match=r"refusing to change the VF count.*vf-user "
                                        r"\(0000:44:10.0, 0000:44:10.2\).*Nothing was changed"):
        plan(spec, target, with_vfs, observed, pf)
    assert plan(spec, target, with_vfs, observed, pf, refuse=False).changes[0].kind == "vf-count"


def test_settings_only_where_they_differ():
    wanted = VfTarget(mac="02:00:00:00:00:01", vlan=100, qos=3, spoofchk=False, trust=False,
                      link_state="auto")
    assert settings_args(wanted, FRESH) == [("mac", "02:00:00:00:00:01"),
                                            ("vlan", "100", "qos", "3"), ("spoofchk", "off")]
    same = VfState(index=0, mac="02:00:00:00:00:01", vlan=100, qos=3, spoofchk=False,
                   trust=False, link_state="auto")
    assert settings_args(wanted, same) == []


def test_paths_are_per_port():
    assert paths(_spec())["unit"] == "/etc/systemd/system/vela-sriov-enp68s0.service"
    assert paths(_spec(pf="0000:44:00.0"))["script"] == \
        "/usr/local/sbin/vela-sriov-0000-44-00-0"


def test_mtu_for_host_driver_vfs_and_the_pf(facts):
    with pytest.raises(ValidationError, match="a vfio-pci VF's MTU is set by its guest"):
        _spec(defaults={"mtu": 9000})
    spec = _spec(driver="host", defaults={"mtu": 9000}, pfMtu=9000, numVfs=0)
    observed = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="1", mtus={"enp68s0": 1500})
    pf = find_pf(spec, facts, observed)
    changes = plan(spec, desired_target(spec, facts, observed, pf), facts, observed, pf).changes
    assert changes[0].kind == "mtu" and changes[0].calls == [f"vela_mtu {PF} 9000"]
    assert "vela_mtu" in boot_script(spec, desired_target(spec, facts, observed, pf), pf)


def test_a_down_pf_is_brought_up_now_and_at_boot_and_put_back_on_delete(facts):
    spec = _spec()
    observed = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="0", pf_up=False)
    pf = find_pf(spec, facts, observed)
    target = desired_target(spec, facts, observed, pf)
    changes = plan(spec, target, facts, observed, pf).changes
    assert [(c.kind, c.calls) for c in changes if c.kind == "link"] == \
        [("link", [f"vela_link {PF} up"])]
    assert f"vela_link {PF} up" in boot_script(spec, target, pf)
    original = original_target(spec, target, facts, observed, pf)
    up = PoolObservations(pf=PF, netdev="enp68s0", autoprobe="0", pf_up=True)
    restore = plan(spec, original, facts, up, pf, refuse=False).changes
    assert [c.calls for c in restore if c.kind == "link"] == [[f"vela_link {PF} down"]]


def test_vf_registers_are_ats_only(tmp_path):
    """A VF's Max Read Request is RsvdP: the pool never writes it (the PF's value applies)."""
    from providers.facts import gather_facts
    from providers.host import LocalHost
    from tests.support.hgx import hgx_a100

    with pytest.raises(ValidationError, match="maxReadRequest"):
        _spec(maxReadRequest=4096)
    fake, layout = hgx_a100(nic_vfs=2, nic_ats=True)
    facts = gather_facts(LocalHost(str(fake.write(tmp_path))))
    switch = layout.switches[0]
    pf = facts.device(switch.nic_pfs[0])
    spec = _spec(pf=pf.address, numVfs=2)
    observed = PoolObservations(pf=pf.address, netdev=switch.nic_interfaces[0], autoprobe="0")
    target = desired_target(spec, facts, observed, pf)
    whats = [register.what for register in target.registers.values()]
    assert whats == ["ATS enable", "ATS enable"]  # one per VF, nothing else


def test_the_libvirt_hook_is_a_managed_file(tmp_path):
    """The hook that writes the VFs' ATS again after vfio-pci reset them: created executable with
    a reload of libvirt (which looks for hooks only when it starts or reloads), observed so a
    second run changes nothing and a changed hook is drift, removed on delete, also when the
    originals were saved before the pool had a hook."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from providers.facts import gather_facts
    from providers.host import LocalHost
    from providers.sriov_pool.observe import observe_script
    from providers.sriov_pool.provider import _originals, observe
    from tests.support.hgx import hgx_a100

    fake, layout = hgx_a100(nic_vfs=2, nic_ats=True)
    facts = gather_facts(LocalHost(str(fake.write(tmp_path))))
    switch = layout.switches[0]
    pf = facts.device(switch.nic_pfs[0])
    spec = _spec(pf=pf.address, numVfs=2)
    where = paths(spec)
    hook = where["hook"]
    assert hook.startswith("/etc/libvirt/hooks/qemu.d/vela-sriov-")
    assert f"observe_file {hook}\n" in observe_script(spec)
    fresh = PoolObservations(pf=pf.address, netdev=switch.nic_interfaces[0], autoprobe="0")
    target = desired_target(spec, facts, fresh, pf)
    assert target.files[hook] is not None

    created = [c for c in plan(spec, target, facts, fresh, pf).changes if c.subject == hook]
    assert [c.detail for c in created] == ["create"]
    assert created[0].calls[0].startswith(f"vela_write_file {hook} 755 ")
    assert created[0].calls[1] == (
        'for unit in libvirtd.service virtqemud.service; do vela_system systemctl -q is-active '
        '"$unit" || continue; vela_system systemctl reload "$unit" || vela_fail "cannot reload '
        '$unit: it would not run the new qemu hook until it restarts"; done')

    # Installed as the plan writes them, then read back by the pool's own observation.
    root = tmp_path
    for path, text in target.files.items():
        if text is not None:
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_text(text)
    (root / where["link"].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / where["link"].lstrip("/")).symlink_to(f"../{Path(where['unit']).name}")
    seen = observe(LocalHost(str(root)), spec).observed
    assert seen.files[hook] == target.files[hook]
    done = PoolObservations(**{**fresh.__dict__, "files": seen.files, "links": seen.links})
    assert [c for c in plan(spec, target, facts, done, pf).changes if c.kind in ("file", "unit")] \
        == []
    edited = PoolObservations(**{**done.__dict__, "files": {**done.files, hook: "#!/bin/sh\n"}})
    updated = [c for c in plan(spec, target, facts, edited, pf).changes if c.subject == hook]
    assert [c.detail for c in updated] == ["update"] and len(updated[0].calls) == 1

    original = original_target(spec, target, facts, fresh, pf)
    assert original.files[hook] is None
    removed = [c for c in plan(spec, original, facts, done, pf, refuse=False).changes
               if c.subject == hook]
    assert [c.calls for c in removed] == [[f"vela_remove_file {hook}"]]

    # A record saved by a version without the hook: delete still removes it.
    old = original.model_dump(mode="json")
    del old["files"][hook]
    found = _originals(SimpleNamespace(name="h"), spec, {"originals": json.dumps(old)},
                       PoolObservations())
    assert found is not None and found.files[hook] is None
