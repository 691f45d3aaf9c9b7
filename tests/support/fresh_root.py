"""A fresh Debian 12 root, as a machine where nothing was installed, to run scripts/setup in.

The root is `mmdebstrap --variant=minbase bookworm` (essential packages and apt only: no Python,
no QEMU, no compiler), from this machine's own Debian mirror (`lab.apt_sources`), built once and
cached as a tarball, and unpacked anew for every run. Commands run in it with `chroot`, inside a
private mount namespace (`unshare --mount`): /proc, /sys and /dev are mounted there, so they
disappear with the command and nothing can leak onto the host, even if a test is killed.

What the machine's own configuration provides to any machine here comes along, as on a fresh
machine of this workplace: its extra CA certificates (/usr/local/share/ca-certificates, which the
`ca-certificates` package then trusts), its pip configuration (/etc/pip.conf and PIP_*
variables), its DNS resolver. Nothing else from the host is visible inside, except read-only
caches a test binds in on purpose.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.apt_sources import debian_sources
from lab.image import cache_dir as lab_cache_dir

RELEASE = "bookworm"
HOST_CONFIG = ["/etc/resolv.conf", "/etc/pip.conf"]
CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_ONLY_PIP = {"PIP_FIND_LINKS"}  # names a wheel folder of this machine, not in the root


def _sources() -> str:
    return "\n".join(source.deb822() for source in debian_sources(RELEASE))


def root_tarball(log=print) -> Path:
    """The cached minbase root for this machine's mirror, built on first use (about a minute)."""
    sources = _sources()
    digest = hashlib.sha256(f"{RELEASE} minbase\n{sources}".encode()).hexdigest()[:16]
    cache = lab_cache_dir().parent / "fresh-root"
    tarball = cache / f"{RELEASE}-minbase-{digest}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        sources_file = Path(work) / "sources"
        sources_file.write_text(sources)
        partial = Path(work) / "root.tar"
        log(f"fresh root: mmdebstrap --variant=minbase {RELEASE} ...")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--aptopt=Acquire::Retries \"3\"",
                        RELEASE, str(partial), str(sources_file)],
                       check=True, capture_output=True)
        partial.rename(tarball)
    return tarball


def unpack(directory: Path) -> Path:
    """A new root in `directory`/root from the cached tarball, with the machine's own settings."""
    root = directory / "root"
    root.mkdir()
    # tar(1), as root: device nodes, owners and modes exactly as mmdebstrap made them.
    subprocess.run(["tar", "-xf", str(root_tarball()), "-C", str(root)], check=True)
    for name in HOST_CONFIG:
        if Path(name).exists():
            shutil.copy(name, root / name.lstrip("/"), follow_symlinks=True)
    if CA_DIR.is_dir():
        target = root / str(CA_DIR).lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for certificate in CA_DIR.glob("*.crt"):
            shutil.copy(certificate, target / certificate.name)
    return root


def chroot_run(root: Path, script: str, *, env: dict[str, str] | None = None,
               binds: list[str] = (), timeout: float = 1800,
               log_file: Path | None = None) -> subprocess.CompletedProcess:
    """Run `script` with bash as root in `root`, with a clean environment (PATH, HOME, the
    machine's PIP_* settings, and `env`). `binds`: host directories made visible, read-only,
    at the same path inside."""
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                   **{key: value for key, value in os.environ.items()
                      if key.startswith("PIP_") and key not in HOST_ONLY_PIP}, **(env or {})}
    mounts = [f"mount -t proc proc {_q(root / 'proc')}",
              f"mount --rbind /sys {_q(root / 'sys')}",
              f"mount --rbind /dev {_q(root / 'dev')}"]
    for path in binds:
        inside = root / path.lstrip("/")
        mounts += [f"mkdir -p {_q(inside)}", f"mount --bind {_q(path)} {_q(inside)}",
                   f"mount -o remount,bind,ro {_q(inside)}"]
    assignments = " ".join(_q(f"{key}={value}") for key, value in environment.items())
    inner = " && ".join([*mounts, f"exec chroot {_q(root)} /usr/bin/env -i {assignments} "
                                  f"/bin/bash -c {_q(script)}"])
    output = open(log_file, "w") if log_file else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                               "/bin/sh", "-c", inner], stdout=output,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    finally:
        if log_file:
            output.close()


def _q(value) -> str:
    return shlex.quote(str(value))
