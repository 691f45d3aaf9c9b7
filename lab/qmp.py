"""A minimal QMP (QEMU Machine Protocol) client: enough to reset, stop and query a lab host."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    pass


class Qmp:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(timeout)
        try:
            self.socket.connect(str(path))
        except OSError as exc:
            self.socket.close()
            raise QmpError(f"cannot reach QEMU's monitor at {path}: {exc}") from exc
        self.reader = self.socket.makefile("r")
        self._message()  # greeting
        self.execute("qmp_capabilities")

    def _message(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise QmpError("QEMU closed its monitor")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.socket.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc', message['error'])}")
            # anything else is an asynchronous event: skip it

    def close(self) -> None:
        self.reader.close()
        self.socket.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
