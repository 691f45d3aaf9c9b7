"""Run the vela program through the real Pulumi engine without a language host.

`pulumi up` on a project directory needs the Python language host (`pulumi-language-python`),
which ships with the official CLI but cannot be built from the Go module proxy. The Automation
API's inline mode needs none: the CLI (`pulumi up --client`) talks to a language server inside
this process, which runs `components.program.main`, the same function `__main__.py` runs. The
engine, the state, the providers (`pulumi-resource-pulumi-python`) and the stack files
(`Pulumi.<stack>.yaml`) are the same as with `pulumi up`.

    .venv/bin/python -m components.runner up --stack dev [--yes] [--diff] [--refresh] [-p N]
    .venv/bin/python -m components.runner preview|refresh|destroy --stack dev

`scripts/up` uses this wherever the language host is missing. State goes to
`PULUMI_BACKEND_URL` (scripts/up sets a local file backend) and secrets are encrypted with the
passphrase in `PULUMI_CONFIG_PASSPHRASE(_FILE)`, exactly as for the CLI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_NAME = "vela"


def cli_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: this virtualenv's bin first (where scripts/setup puts `pulumi` and
    the dynamic-provider plugin), and no calls home: no update check, no plugin downloads (every
    plugin vela needs is local)."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join([venv_bin, *[p for p in env.get("PATH", "").split(os.pathsep)
                                                if p and p != venv_bin]])
    env.setdefault("PULUMI_SKIP_UPDATE_CHECK", "true")
    env.setdefault("PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION", "true")
    return env


def pulumi_command(env: Mapping[str, str]):
    """The CLI the Automation API runs: the first `pulumi` on the CLI's PATH (the Automation API
    itself looks only at this process's PATH)."""
    from pulumi import automation as auto

    found = shutil.which("pulumi", path=env.get("PATH"))
    if found is None:
        raise SystemExit("the Pulumi CLI is not installed: run scripts/setup (it builds the "
                         "pinned CLI into .venv/bin), or see README 'The Pulumi CLI'")
    binary = Path(found)
    return auto.PulumiCommand(root=str(binary.parent.parent) if binary.parent.name == "bin"
                              else None)


def select_stack(name: str, work_dir: Path = PROJECT_ROOT, *,
                 program: Callable[[], object] | None = None,
                 env: Mapping[str, str] | None = None):
    """The stack `name` of the project in `work_dir` (created if missing), running `program`
    (the vela program by default) inline. The CLI runs in `work_dir`, so the provider plugin
    starts there and imports `providers` from it."""
    from pulumi import automation as auto

    if program is None:
        from components.program import main as program
    env = cli_environment(env)
    return auto.create_or_select_stack(
        stack_name=name, project_name=PROJECT_NAME, program=program,
        opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=env,
                                        pulumi_command=pulumi_command(env)))


def _print_error(line: str) -> None:
    print(line, file=sys.stderr)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        print("runner: not a terminal, so nothing was changed; pass --yes to apply",
              file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}


def preview(stack, **show) -> None:
    """`pulumi preview` without the per-step checkpoints: the CLI (v3.274.1, file backend)
    serializes the whole snapshot after every step even in a preview, which writes no state,
    so a new stack's preview grows with N^2 (bench/preview_cli.py: 200 nodes 53 s, 7.7 s
    without). PULUMI_SKIP_CHECKPOINTS only for the preview: an `up` keeps its checkpoints, the
    state a failure half way leaves for the next run to finish from."""
    env = stack.workspace.env_vars
    before = env.get("PULUMI_SKIP_CHECKPOINTS")
    env["PULUMI_SKIP_CHECKPOINTS"] = "true"
    try:
        stack.preview(**show)
    finally:
        if before is None:
            env.pop("PULUMI_SKIP_CHECKPOINTS", None)
        else:
            env["PULUMI_SKIP_CHECKPOINTS"] = before


def run(command: str, stack_name: str, *, yes: bool, diff: bool, refresh: bool,
        parallel: int | None) -> int:
    from pulumi import automation as auto

    stack = select_stack(stack_name)
    show = {"on_output": print, "on_error": _print_error, "color": "auto", "parallel": parallel}
    try:
        if command == "preview":
            preview(stack, diff=diff, refresh=refresh, **show)
        elif command == "up":
            if not yes:
                preview(stack, diff=diff, refresh=refresh, **show)
                if not _confirm("Do you want to perform this update?"):
                    return 1
            stack.up(diff=diff, refresh=refresh, **show)
        elif command == "refresh":
            if not yes and not _confirm("Refresh the state from the hosts?"):
                return 1
            stack.refresh(**show)
        elif command == "destroy":
            if not yes and not _confirm(f"Destroy every resource of stack {stack_name}?"):
                return 1
            stack.destroy(**show)
    except auto.errors.CommandError:
        # The engine already printed its diagnostics through on_output: no traceback here.
        print(f"runner: `pulumi {command}` on stack {stack_name} failed; the messages above "
              "say why", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.runner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["preview", "up", "refresh", "destroy"])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    parser.add_argument("--diff", action="store_true", help="show the detailed diff")
    parser.add_argument("--refresh", action="store_true", help="refresh the state first")
    parser.add_argument("--parallel", "-p", type=int, default=None,
                        help="steps at once (the engine's default: 4 per CPU core here)")
    options = parser.parse_args(argv)
    return run(options.command, options.stack, yes=options.yes, diff=options.diff,
               refresh=options.refresh, parallel=options.parallel)


if __name__ == "__main__":
    sys.exit(main())
