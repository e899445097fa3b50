"""A real OpenSSH server on 127.0.0.1 for deployment tests (no mocked SSH).

Each server gets a random free port, a fresh ed25519 host key, a client key in its
authorized_keys, and writes a ``known_hosts`` (``[127.0.0.1]:PORT ssh-ed25519 ...``) and an
``ssh_config`` (alias ``Host NAME`` with HostName/Port/User/IdentityFile) for the tests.
``stop()``/``start()`` kill and restart it on the same port with the same keys (interrupted
upload drills). Tests skip with one line when ``/usr/sbin/sshd`` is missing (apt package
``openssh-server``).

Use in a test module (tests/ is on sys.path under pytest's default import mode)::

    pytest_plugins = ["sshd"]  # fixtures: sshd_server, sshd_factory
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (sshd forks one process tree per connection)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class SSHServer:
    """One sshd; ``spec`` is ``user@127.0.0.1:PORT``, ``alias`` resolves through ``ssh_config``."""

    def __init__(self, workdir: Path, name: str = "device"):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.user = getpass.getuser()
        self.port = _free_port()
        self.install_dir = str(self.dir / "install")
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.ssh_config = self.dir / "ssh_config"
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._keygen(self.host_key)
        self._keygen(self.client_key)
        shutil.copyfile(f"{self.client_key}.pub", self.dir / "authorized_keys")
        self.write_known_hosts()
        self._write_configs()

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def alias(self) -> str:
        return self.name

    @staticmethod
    def _keygen(path: Path) -> None:
        for p in (path, Path(f"{path}.pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
            check=True,
            capture_output=True,
        )

    def host_key_line(self) -> str:
        kind, blob = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def write_known_hosts(self) -> None:
        self.known_hosts.write_text(self.host_key_line())

    def regenerate_host_key(self) -> None:
        """A reinstalled device: new host key, same address (restart to take effect)."""
        self._keygen(self.host_key)

    def _write_configs(self) -> None:
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUseDNS no\n"
            "MaxSessions 50\nMaxStartups 50\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n"
            # bash sources ~/.bashrc for ssh commands only at SHLVL 1; this machine's root
            # .bashrc runs `pyenv init` (0.3 s per command), which says nothing about transport.
            "SetEnv SHLVL=1\n"
        )
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
            f"Host 127.0.0.1\n  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
        )

    def start(self, timeout: float = 10.0) -> SSHServer:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir
        log = open(self.log, "ab")  # noqa: SIM115 - sshd inherits it for its lifetime
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not accept on port {self.port} within {timeout} s")

    def kill_all(self) -> None:
        """SIGKILL the listener and every connection it serves (a device losing power)."""
        if self.proc is None:
            return
        victims = [*_children(self.proc.pid), self.proc.pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    stop = kill_all


def _require_sshd() -> None:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("needs OpenSSH server (/usr/sbin/sshd, apt package openssh-server)")


@pytest.fixture
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SSHServer]]:
    """``make(name="device") -> SSHServer`` (started); several servers for fleet tests."""
    _require_sshd()
    servers: list[SSHServer] = []

    def make(name: str = "device") -> SSHServer:
        base = tmp_path_factory.mktemp(f"sshd-{name}")
        server = SSHServer(base, name)
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def sshd_server(sshd_factory: Callable[..., SSHServer]) -> SSHServer:
    return sshd_factory()
