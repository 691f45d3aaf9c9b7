"""The values a host had before vela changed them: saved, found again, and cleaned up.

HostTuning and SriovPool restore them on delete through their own planner. They are saved on
the host (a root-only JSON file written before the first change, so a run that fails half way
still knows them) and in the resource's outputs, as a JSON string: Pulumi drops null values
inside output objects, and "absent" is an original value vela must keep. The copy on the host
wins: it was written before anything changed. A copy on the host that cannot be read is an
error, never "no originals": a later run would save the tuned state in its place, and delete
would restore the wrong values.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import VelaError
from . import shell

T = TypeVar("T", bound=BaseModel)


def record(originals: BaseModel) -> str:
    """The originals as the text saved on the host and in the outputs."""
    return json.dumps(originals.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


def parse(text: str | None) -> dict | None:
    """A saved record as data (None: absent, empty or not JSON)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def load(model: type[T], on_host: str | None, props: dict, *, host: str, path: str,
         error: type[VelaError]) -> T | None:
    """The saved originals: the host's file (`on_host`, None when absent), else the last
    outputs' `originals`. Raises `error` when the host's file is there but unreadable."""
    if on_host is not None:
        try:
            return model.model_validate(json.loads(on_host))
        except (ValueError, ValidationError) as exc:
            problem = str(exc).splitlines()[0]
            raise error(
                f"{host}: {path} is not a record of the values vela found before changing "
                f"anything ({problem}); vela will not guess what to restore. Put the record "
                f"back (this resource's last outputs hold a copy in `originals`: `pulumi stack "
                f"output` or the state) or, if the host was never tuned, remove the file") \
                from None
    saved = parse(props.get("originals")) if isinstance(props.get("originals"), str) else None
    return model.model_validate(saved) if saved is not None else None


def save_calls(path: str, originals: BaseModel, on_host: str | None) -> list[str]:
    """The call that saves `originals` on the host, unless it holds them already."""
    text = record(originals)
    return [] if on_host == text else [shell.write_file(path, text, 0o600)]


def removal_calls(path: str, directories: list[str]) -> list[str]:
    """Once the originals are restored: the record and the directories it leaves empty."""
    return [shell.call("vela_remove_file", path),
            shell.call("vela_remove_empty_dirs", *directories)]
