"""A real OpenSSH server on 127.0.0.1 for the SSH transport's tests: a free port, a throw-away
host key, key-only login for the user running the tests (an unprivileged sshd can serve only
that user), stopped by the pid in its PidFile."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Server:
    port: int
    user: str
    key: Path  # the client's private key
    folder: Path

    def profile(self, name: str = "box", **extra) -> str:
        """A device profile (TOML) that reaches this server."""
        fields = {"transport": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
                  "identity_file": str(self.key), "connect_timeout": 5, **extra}
        lines = [f"{k} = {toml_value(v)}" for k, v in fields.items() if not isinstance(v, dict)]
        lines += [f"[{k}]\n" + "\n".join(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())
                  for k, v in fields.items() if isinstance(v, dict)]
        lines.insert(0, f'name = "{name}"')
        return "\n".join(lines) + "\n"


def toml_value(v) -> str:
    import json

    return json.dumps(v) if not isinstance(v, list) else "[" + ", ".join(json.dumps(x) for x in v) + "]"


# Host keys are not checked against a known_hosts file: the server's key is new every run.
CLIENT_OPTIONS = {"StrictHostKeyChecking": "no", "UserKnownHostsFile": "/dev/null", "LogLevel": "ERROR"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start(folder: Path) -> tuple[Server, subprocess.Popen | None]:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    keygen(folder / "host_key")
    keygen(folder / "client_key")
    shutil.copyfile(folder / "client_key.pub", folder / "authorized_keys")
    os.chmod(folder / "authorized_keys", 0o600)
    port, user = free_port(), getpass.getuser()
    (folder / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {folder / 'host_key'}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {user}
StrictModes no
""")
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    subprocess.run([SSHD, "-f", str(folder / "sshd_config"), "-E", str(folder / "sshd.log")], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Server(port, user, folder / "client_key", folder), None
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}: {(folder / 'sshd.log').read_text()[-500:]}")


def stop(server: Server) -> None:
    pidfile = server.folder / "sshd.pid"
    if pidfile.is_file():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
