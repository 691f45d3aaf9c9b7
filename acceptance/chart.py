"""The chart of the seed paper's Figure 2: bus bandwidth per message size, VM against baseline.

One panel per nccl-tests collective (log-2 x axis of message sizes, busbw on y), the VM line
beside the baseline's; for a run without sizes (iperf3, bandwidthTest) a bar per point. Written
as PNG and SVG with matplotlib's Agg backend, which draws without a display (a CI runner or an
SSH session has none).
"""

from __future__ import annotations

from pathlib import Path

from .compare import Row, Verdict


def write_chart(verdict: Verdict, out: Path, stem: str = "acceptance") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in verdict.rows:
        groups.setdefault((row.benchmark, row.machine, row.unit), []).append(row)
    if not groups:
        raise ValueError("nothing to draw: the run measured no point")
    figure, axes = plt.subplots(len(groups), 1, figsize=(8, 3.6 * len(groups)), squeeze=False)
    for axis, ((benchmark, machine, unit), rows) in zip(axes[:, 0], groups.items(),
                                                         strict=True):
        if all(row.size for row in rows):
            _lines(axis, rows, verdict)
        else:
            _bars(axis, rows)
        axis.set_title(f"{benchmark} ({machine})")
        axis.set_ylabel(f"{'bus bandwidth' if all(r.size for r in rows) else 'bandwidth'} "
                        f"({unit})")
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for path in paths:
        # A fixed date keeps the SVG identical from run to run for the same numbers.
        figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return paths


def _lines(axis, rows: list[Row], verdict: Verdict) -> None:
    rows = sorted(rows, key=lambda row: row.size or 0)
    axis.set_xscale("log", base=2)
    axis.plot([r.size for r in rows], [r.vm for r in rows], marker="o", label="VM")
    based = [r for r in rows if r.baseline is not None]
    if based:
        axis.plot([r.size for r in based], [r.baseline for r in based], marker="s",
                  linestyle="--", label="baseline (bare metal)")
    axis.axvline(verdict.min_size, color="grey", linewidth=0.8,
                 label=f"gated from {verdict.min_size} B")
    axis.set_xlabel("message size (bytes)")


def _bars(axis, rows: list[Row]) -> None:
    positions = range(len(rows))
    axis.bar([p - 0.2 for p in positions], [r.vm for r in rows], width=0.4, label="VM")
    axis.bar([p + 0.2 for p in positions], [r.baseline or 0 for r in rows], width=0.4,
             label="baseline (bare metal)")
    axis.set_xticks(list(positions), [r.key for r in rows], rotation=20)
