"""SSH through the system OpenSSH client, so ~/.ssh/config, agents and jump hosts work.

BatchMode (never a password prompt), a connect timeout, and one master connection per device
(ControlMaster) that every later command reuses: a benchmark of many artifacts handshakes once.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from pathlib import Path

from edgeport.devices.profiles import SshProfile
from edgeport.devices.transport import Completed, Device, run_local
from edgeport.errors import DeviceError, DeviceUnreachableError

SSH_FAILED = 255  # ssh's own exit code: the connection, not the command, failed


def control_dir() -> Path:
    # Unix socket paths are limited to ~104 bytes: keep it short and private.
    path = Path(tempfile.gettempdir()) / f"edgeport-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class SshDevice(Device):
    def __init__(self, profile: SshProfile):
        super().__init__(profile)
        p = profile
        # Always after `--` on the command line: a destination is never parsed as an option.
        self.destination = p.ssh_alias or p.host
        key = hashlib.sha256(repr((p.ssh_alias, p.host, p.port, p.user, p.identity_file, p.ssh_config)).encode())
        self.control_path = control_dir() / key.hexdigest()[:16]
        options = {
            "BatchMode": "yes",
            "ConnectTimeout": str(p.connect_timeout),
            "ServerAliveInterval": "5",
            "ServerAliveCountMax": "3",
            "ControlMaster": "auto",
            "ControlPath": str(self.control_path),
            "ControlPersist": "120",
            **p.options,
        }
        self.base = ["ssh", "-T"]
        if p.ssh_config:
            self.base += ["-F", str(Path(p.ssh_config).expanduser())]
        if p.port:
            self.base += ["-p", str(p.port)]
        if p.user:
            self.base += ["-l", p.user]
        if p.identity_file:
            self.base += ["-i", str(Path(p.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        for key_, value in options.items():
            self.base += ["-o", f"{key_}={value}"]
        self._connected = False

    def connect(self) -> None:
        """Open the master connection, bounded by the connect timeout (a host that accepts TCP
        but never speaks SSH must not hang a run)."""
        if self._connected:
            return
        limit = self.profile.connect_timeout + 5
        try:
            done = run_local([*self.base, "--", self.destination, "true"], limit, None, f"device {self.name}")
        except DeviceError as e:  # no answer within the limit
            raise DeviceUnreachableError(str(e)) from e
        if done.returncode != 0:
            raise DeviceUnreachableError(f"device {self.name}: cannot connect to {self.profile.address}: {done.tail(2)}")
        self._connected = True

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        self.connect()
        # ssh hands the remote shell one string: quote every argument so it stays one argument.
        done = run_local([*self.base, "--", self.destination, shlex.join(argv)], timeout, stdin, f"device {self.name}")
        if done.returncode == SSH_FAILED:
            if not self.master_alive():
                self._connected = False
                raise DeviceUnreachableError(f"device {self.name}: connection to {self.profile.address} lost: {done.tail(2)}")
            done.killed = True  # the connection is fine: the remote command died by a signal
        return done

    def master_alive(self) -> bool:
        return run_local([*self.base, "-O", "check", "--", self.destination], 10, None, f"device {self.name}").returncode == 0

    def close(self) -> None:
        if self._connected:
            run_local([*self.base, "-O", "exit", "--", self.destination], 10, None, f"device {self.name}")
            self._connected = False
