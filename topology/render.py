"""A picture model as Graphviz DOT text. Pure.

The graph runs left to right: the host's PCIe tree from its root ports out to its devices, then
each guest's tree mirrored (its devices first, its root ports last), so a guest device faces the
host device it is and the passthrough edges stay short. NUMA nodes, root complexes, switches,
guests, cells and expander buses are clusters; a switch cluster is filled with its tone, and a
guest switch mirroring it has the same one.
"""

from __future__ import annotations

from .model import Cluster, Edge, Node, Picture

FONT = "Helvetica"
# Device kinds: shape, fill, outline. Distinct in shape as well as colour, so a grey print
# still tells a GPU from a NIC.
KINDS: dict[str, tuple[str, str, str]] = {
    "gpu": ("box3d", "#a6d96a", "#1a6e1a"),
    "nic": ("component", "#74add1", "#123f6e"),
    "vf": ("component", "#c6dbef", "#123f6e"),
    "nvswitch": ("octagon", "#c2a5cf", "#542788"),
    "device": ("note", "#eeeeee", "#888888"),
    "summary": ("folder", "#eeeeee", "#888888"),
}
PORTS = {"root_port", "upstream_port", "downstream_port", "bridge"}
NAMES = {"gpu": "GPU", "nic": "NIC (selected)", "vf": "NIC virtual function",
         "nvswitch": "NVSwitch", "device": "other device", "summary": "other devices"}
ACS_FILL, ACS_LINE = "#fdae6b", "#d94801"
PAIR, PAIR_CPU, PASSTHROUGH, TREE = "#d7191c", "#f58a3c", "#8c8c8c", "#555555"
# Switch tones: (fill, outline); a host with more switches reuses them in order.
TONES = [("#fde0ef", "#c51b7d"), ("#d7ecf7", "#2c7bb6"), ("#fff0b3", "#c79100"),
         ("#dff2d8", "#238b45"), ("#ebe7f5", "#6a51a3"), ("#fee3c8", "#d94801"),
         ("#e6e6e6", "#525252"), ("#d4e4f7", "#08519c")]
CLUSTER_STYLES = {
    "host": 'style="rounded,bold" color="#333333" fontsize=16',
    "guest": 'style="rounded,bold" color="#333333" fontsize=16',
    "numa": 'style="rounded,filled" fillcolor="#f7f7f7" color="#999999" fontsize=13',
    "cell": 'style="rounded,filled" fillcolor="#f7f7f7" color="#999999" fontsize=13',
    "complex": 'style="rounded" color="#bbbbbb" fontsize=10',
    "expander": 'style="rounded" color="#bbbbbb" fontsize=10',
}


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def label(lines: list[str]) -> str:
    return quote("\n".join(lines))


def dot(picture: Picture) -> str:
    out = ["digraph topology {",
           f"  graph [rankdir=LR newrank=true fontname={quote(FONT)} fontsize=18 labelloc=t "
           f"label={quote(picture.title)} nodesep=0.12 ranksep=0.35 pad=0.3];",
           f"  node [fontname={quote(FONT)} fontsize=10 margin=\"0.08,0.04\"];",
           f"  edge [fontname={quote(FONT)} fontsize=9 dir=none color={quote(TREE)}];"]
    for top in [picture.host, *picture.guests]:
        out += _cluster(top, "  ")
    out += [_edge(edge) for edge in picture.edges]
    out += _legend(picture)
    out.append("}")
    return "\n".join(out) + "\n"


def _cluster(cluster: Cluster, indent: str) -> list[str]:
    out = [f"{indent}subgraph {quote('cluster_' + cluster.id)} {{",
           f"{indent}  label={label(cluster.lines)} {_cluster_style(cluster)};"]
    out += [indent + "  " + _node(node) for node in cluster.nodes]
    for inner in cluster.clusters:
        out += _cluster(inner, indent + "  ")
    out.append(indent + "}")
    return out


def _cluster_style(cluster: Cluster) -> str:
    if cluster.tone is not None or cluster.kind in {"switch", "guest_switch"}:
        fill, line = TONES[(cluster.tone or 0) % len(TONES)] if cluster.tone is not None \
            else ("#ffffff", "#333333")
        return (f'style="rounded,filled,bold" fillcolor="{fill}" color="{line}" penwidth=3 '
                f'fontsize=12 fontcolor="{line}"')
    return CLUSTER_STYLES.get(cluster.kind, "")


def _node(node: Node) -> str:
    lines = list(node.lines)
    if node.kind in PORTS:
        attributes = {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff",
                      "color": "#777777", "fontsize": "8", "height": "0.2",
                      "margin": "0.04,0.02"}
        if "acs" in node.marks:
            lines.append("ACS set")
            attributes.update(fillcolor=ACS_FILL, color=ACS_LINE, penwidth="2")
        elif "path" in node.marks:
            lines.append("on pair path, no ACS")
            attributes.update(style="rounded,filled,dashed", color=ACS_LINE, penwidth="2")
    else:
        shape, fill, line = KINDS.get(node.kind, KINDS["device"])
        attributes = {"shape": shape, "style": "filled", "fillcolor": fill, "color": line}
        if node.kind in {"gpu", "nic", "nvswitch", "vf"}:
            attributes.update(style="filled,bold", fontsize="11")
        if "gpudirect" in node.marks:
            attributes.update(penwidth="3", color=PAIR)
    attributes["label"] = "\n".join(lines)
    return f"{quote(node.id)} [{_attributes(attributes)}];"


def _attributes(attributes: dict[str, str]) -> str:
    return " ".join(f"{key}={quote(value)}" for key, value in attributes.items())


def _edge_style(kind: str) -> dict[str, str]:
    return {
        "tree": {},
        # Same-rank edges between a switch's devices: they must not pull the tree apart.
        "pair": {"color": PAIR, "penwidth": "3", "constraint": "false"},
        "pair_cpu": {"color": PAIR_CPU, "penwidth": "2", "style": "dashed",
                     "constraint": "false"},
        "passthrough": {"color": PASSTHROUGH, "style": "dashed", "dir": "forward",
                        "arrowsize": "0.6"},
    }.get(kind, {})


def _edge(edge: Edge) -> str:
    tail, head = (edge.head, edge.tail) if edge.mirrored else (edge.tail, edge.head)
    attributes = _edge_style(edge.kind)
    text = f" [{_attributes(attributes)}]" if attributes else ""
    return f"  {quote(tail)} -> {quote(head)}{text};"


def _legend(picture: Picture) -> list[str]:
    """One table node, listing only what the picture shows (a legend never explains something
    absent). A table, not sample nodes and edges: Graphviz places those anywhere it likes."""
    present = picture.kinds()
    rows = []
    for kind, name in NAMES.items():
        if kind in present:
            _, fill, line = KINDS[kind]
            rows.append(_row(f'<td bgcolor="{fill}" color="{line}" border="2">{_html(name)}'
                             f'</td>', _html(SHAPES[kind])))
    if "gpudirect" in present:
        rows.append(_row(f'<td bgcolor="{KINDS["vf"][1]}" color="{PAIR}" border="3">NIC VF'
                         f'</td>', "a guest VF under the same host switch as its GPU: "
                         "GPUDirect"))
    if "acs" in present:
        rows.append(_row(f'<td bgcolor="{ACS_FILL}" color="{ACS_LINE}" border="2">ACS set</td>',
                         "bridge on a GPU-NIC path: HostTuning writes its ACS control"))
    if "path" in present:
        rows.append(_row(f'<td color="{ACS_LINE}" border="2" style="dashed">no ACS</td>',
                         "bridge on a GPU-NIC path whose ACS is not set (no ACS controls, "
                         "or acs: false)"))
    for kind, colour, sample, text in [
            ("pair", PAIR, "━━━━", "GPU-NIC pair: one PCIe switch, GPUDirect"),
            ("pair_cpu", PAIR_CPU, "─ ─ ─", "a guest GPU's NIC through the CPU"),
            ("passthrough", PASSTHROUGH, "- - ▸", "passed through to the guest")]:
        if kind in present:
            rows.append(_row(f'<td border="0"><font color="{colour}"><b>{sample}</b></font>'
                             f'</td>', text))
    if any(cluster.kind in {"switch", "guest_switch"} for cluster in picture.clusters()):
        rows.append(_row('<td bgcolor="#eeeeee" color="#777777" border="2">switch</td>',
                         "a PCIe switch (one fill per host switch; its guest mirror has the "
                         "same)"))
    table = ('<table border="0" cellborder="1" cellspacing="3" cellpadding="4">'
             '<tr><td colspan="2" border="0"><b>legend</b></td></tr>' + "".join(rows) +
             "</table>")
    return [f'  "legend" [shape=plaintext fontsize=10 label=<{table}>];']


SHAPES = {"gpu": "a GPU (box)", "nic": "a NIC HostTuning pairs with GPUs (card)",
          "vf": "a NIC virtual function in a guest (card)", "nvswitch": "an NVSwitch (octagon)",
          "device": "a device vela does not place (page)",
          "summary": "a root complex's other devices, counted (folder)"}


def _row(sample: str, text: str) -> str:
    return f'<tr>{sample}<td border="0" align="left">{text}</td></tr>'


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
