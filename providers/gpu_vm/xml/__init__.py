"""Domain XML as pure functions from a typed spec, one module per concern (as virt-manager's
virtinst does): `cpu` (vCPUs, pinning, guest NUMA, CPU model, physical address bits), `memory`
(huge pages, numatune), `pci` (the mirrored PCIe tree), `hostdev` (GPUs and VFs), `storage`
(disks, kernel boot, seed), `devices` (management NIC, console), `domain` (the whole), and
`schema` (RelaxNG validation against the installed libvirt's schema)."""
