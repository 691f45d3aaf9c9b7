"""scripts/up's preview skips the CLI's per-step checkpoints; nothing else does."""

from __future__ import annotations

from types import SimpleNamespace

from components.runner import preview


class FakeStack:
    """Records the workspace environment the CLI would be started with for each command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.workspace = SimpleNamespace(env_vars=env)
        self.seen: list[dict[str, str]] = []

    def preview(self, **_show) -> None:
        self.seen.append(dict(self.workspace.env_vars))


def test_the_preview_alone_runs_without_checkpoints():
    stack = FakeStack({"PULUMI_BACKEND_URL": "file:///state"})
    preview(stack, diff=False)
    assert stack.seen == [{"PULUMI_BACKEND_URL": "file:///state",
                           "PULUMI_SKIP_CHECKPOINTS": "true"}]
    # The `up` that follows starts the CLI with the environment as it was.
    assert stack.workspace.env_vars == {"PULUMI_BACKEND_URL": "file:///state"}
    kept = FakeStack({"PULUMI_SKIP_CHECKPOINTS": "false"})
    preview(kept)
    assert kept.workspace.env_vars == {"PULUMI_SKIP_CHECKPOINTS": "false"}
