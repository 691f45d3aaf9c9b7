"""A guest's SSH host keys, read from its console log as cloud-init prints them there.

cloud-init's keys_to_console module runs tools/write-ssh-key-fingerprints at the first boot,
which prints every host public key between `-----BEGIN SSH HOST KEY KEYS-----` and
`-----END SSH HOST KEY KEYS-----` through `logger --stderr -t ec2`, so on the serial console
each line may carry a prefix (`ec2: `, a syslog header, a kernel timestamp). The console log is
written by the hypervisor (GpuVm's `/var/log/libvirt/qemu/vela-NAME-console.log`), which vela
reaches with a pinned key: reading the keys there is how a guest's key is trusted before the
first login, as with a cloud's get-console-output. The lab's minimal guest prints the same
block for its dropbear key. The last block counts: a reinstalled guest prints new keys.
"""

from __future__ import annotations

import re

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
_KEY = re.compile(r"(?:^|\s)((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|"
                  r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
                  r"AAAA[0-9A-Za-z+/]+={0,3})(?:\s|$)")


def console_host_keys(text: str) -> list[str]:
    """"type base64" of each key in the last complete block of `text`; [] when there is none
    (the guest has not printed it yet, or its image turns keys_to_console off)."""
    keys: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if BEGIN in line:
            block = []
        elif END in line and block is not None:
            keys, block = block, None
        elif block is not None:
            found = _KEY.search(line)
            if found:
                block.append(found.group(1))
    return keys
