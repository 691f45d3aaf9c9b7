"""A guest's host keys read from its console: cloud-init's block, as the real helper prints it."""

from __future__ import annotations

from acceptance.hostkeys import BEGIN, END, console_host_keys
from tests.support.recorded import recorded

CLOUD_INIT = recorded("console/cloud-init-keys-to-console.txt")


def test_cloud_init_keys_to_console_through_logger():
    keys = console_host_keys(CLOUD_INIT)
    assert [key.split()[0] for key in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]
    assert keys[1] == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID1xfSr4wEWNM0cHtXjM3pGda9EUS9sdl0VQ"
                       "qKxRlDpY")
    # The fingerprint block above it holds no keys, only their hashes.
    assert not any("SHA256" in key for key in keys)


def test_the_last_complete_block_counts_and_a_cut_one_does_not():
    first = f"{BEGIN}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld root@guest\n{END}\n"
    # A reinstall prints new keys later in the same log; kernel lines may interleave.
    second = (f"[   41.2] ec2: {BEGIN}\n[   41.3] random: crng init done\n"
              f"[   41.2] ec2: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew root@guest\n"
              f"[   41.2] ec2: {END}\n")
    cut = f"{BEGIN}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICut\n"
    assert console_host_keys(first + second) == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew"]
    assert console_host_keys(first + second + cut) == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew"]
    assert console_host_keys("no keys here\n") == []
    assert console_host_keys(cut) == []
