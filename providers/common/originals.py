"""The values a host had before vela changed them: saved, found again, and cleaned up.

HostTuning and SriovPool restore them on delete through their own planner. They are saved on
the host (a root-only JSON file written before the first change, so a run that fails half way
still knows them) and in the resource's outputs, as a JSON string: Pulumi drops null values
inside output objects, and "absent" is an original value vela must keep. The copy on the host
wins: it was written before anything changed.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel

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


def load(model: type[T], on_host: str | None, props: dict) -> T | None:
    """The saved originals: the host's file, else the last outputs' `originals`."""
    saved = parse(on_host)
    if saved is None and isinstance(props.get("originals"), str):
        saved = parse(props["originals"])
    return model.model_validate(saved) if saved is not None else None


def save_calls(path: str, originals: BaseModel, on_host: str | None) -> list[str]:
    """The call that saves `originals` on the host, unless it holds them already."""
    text = record(originals)
    return [] if on_host == text else [shell.write_file(path, text, 0o600)]


def removal_calls(path: str, directories: list[str]) -> list[str]:
    """Once the originals are restored: the record and the directories it leaves empty."""
    return [shell.call("vela_remove_file", path),
            shell.call("vela_remove_empty_dirs", *directories)]
