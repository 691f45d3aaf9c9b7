"""Pieces every resource that changes a host shares: the host-side shell action library and
PCIe register writes."""
