"""Transports: the few file and command operations the release logic needs on a host.

``releases.py`` holds the release logic once; a transport only moves bytes and runs commands.
``LocalTransport`` is a directory on this machine (the ``local-cpu`` target, and the same layout
as a device, so tests of the release logic need no network); ``SSHTransport`` is a Fabric 3
connection to a device with host keys verified against known_hosts.

Host keys: Fabric's ``Connection`` accepts any host key by default (``AutoAddPolicy``). That is
replaced here by ``RejectPolicy`` after loading ``/etc/ssh/ssh_known_hosts``,
``~/.ssh/known_hosts``, the ssh config's ``UserKnownHostsFile`` and an optional ``known_hosts``
file; an unknown or changed key is refused with an error naming the host. Trust on first use is an
explicit opt-in that records the key in the ``known_hosts`` file (``~/.ssh/known_hosts`` when none
is given). A changed key is refused even then.

Every failure is a ``DeployError`` whose message starts with the host, so a fleet report can be
read line by line. Credentials (passwords, key contents, passphrases) never appear in messages
or logs; key files are only named.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

KEY_ENV = "RECIPE_SSH_KEY"  # os.pathsep-separated private key files, tried after the agent
_HOST_SPEC = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?$"
)


class DeployError(Exception):
    """A deployment step failed on ``host``; ``str()`` is ``"<host>: <message>"``."""

    def __init__(self, host: str, message: str):
        self.host = host
        self.message = message
        super().__init__(f"{host}: {message}")


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it exited (both transports)."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 8) -> str:
        """The last lines of stderr (or stdout), for error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"


@runtime_checkable
class Transport(Protocol):
    """Operations on one host; paths are absolute POSIX paths on that host."""

    host: str  # label used in errors ("pi@reader-01:22", "local:/abs/dir")

    @property
    def root(self) -> str:
        """Absolute install_dir on the host (SSH: resolved against the remote home)."""
        ...

    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a shell command in ``root``; ``check`` raises DeployError on a non-zero exit."""
        ...

    def put(self, local: Path, remote: str) -> None: ...
    def read_bytes(self, remote: str) -> bytes | None: ...
    def write_atomic(self, remote: str, data: bytes) -> None: ...
    def listdir(self, remote: str) -> list[str]: ...
    def is_dir(self, remote: str) -> bool: ...
    def readlink(self, remote: str) -> str | None: ...
    def makedirs(self, remotes: Iterable[str]) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def switch_symlink(self, link: str, target: str) -> None: ...
    def remove_tree(self, remote: str) -> None: ...
    def close(self) -> None: ...


def _check(host: str, result: CommandResult, check: bool) -> CommandResult:
    if check and not result.ok:
        raise DeployError(
            host, f"command failed (exit {result.exit_code}): {result.command}: {result.tail()}"
        )
    return result


class _Base:
    host: str

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host!r})"


# --------------------------------------------------------------------------------------- local


class LocalTransport(_Base):
    """A release root on this machine; commands run through ``/bin/sh`` with ``root`` as cwd."""

    root: str

    def __init__(self, root_dir: str | os.PathLike[str]):
        self.root = str(Path(root_dir).expanduser().resolve())
        self.host = f"local:{self.root}"
        Path(self.root).mkdir(parents=True, exist_ok=True)

    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        try:
            proc = subprocess.run(
                command,
                shell=True,
                cwd=self.root,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeployError(
                self.host, f"command timed out after {timeout} s: {command}"
            ) from None
        return _check(
            self.host, CommandResult(command, proc.returncode, proc.stdout, proc.stderr), check
        )

    def put(self, local: Path, remote: str) -> None:
        shutil.copy(local, remote)  # contents and permission bits, like the SSH upload

    def read_bytes(self, remote: str) -> bytes | None:
        try:
            return Path(remote).read_bytes()
        except FileNotFoundError:
            return None

    def write_atomic(self, remote: str, data: bytes) -> None:
        atomic_write_bytes(remote, data)

    def listdir(self, remote: str) -> list[str]:
        try:
            return sorted(os.listdir(remote))
        except FileNotFoundError:
            return []

    def is_dir(self, remote: str) -> bool:
        return Path(remote).is_dir()

    def readlink(self, remote: str) -> str | None:
        try:
            return os.readlink(remote)
        except (FileNotFoundError, OSError):
            return None

    def makedirs(self, remotes: Iterable[str]) -> None:
        for r in remotes:
            Path(r).mkdir(parents=True, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def switch_symlink(self, link: str, target: str) -> None:
        tmp = f"{link}.tmp"
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)  # rename(2) replaces the old link atomically (mv -T)

    def remove_tree(self, remote: str) -> None:
        shutil.rmtree(remote, ignore_errors=True)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------- ssh


def parse_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host:port`` (user and port optional; host may be an ~/.ssh/config alias)."""
    m = _HOST_SPEC.match(spec.strip())
    if not m:
        raise DeployError(spec, "not a host spec (expected user@host[:port])")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise DeployError(spec, f"port {port} is out of range")
    return m["user"], m["host"], port


def _known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


class SSHTransport(_Base):
    """A device reached with Fabric; connects lazily on first use (``connect()`` to force it).

    ``install_dir`` may start with ``~`` or be relative: it is resolved against the remote home
    directory once connected, because SFTP does not expand ``~``.
    """

    def __init__(
        self,
        host_spec: str,
        install_dir: str = "~/ocr-recipe",
        *,
        ssh_config: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        trust_on_first_use: bool = False,
        key_filename: str | os.PathLike[str] | None = None,
        connect_timeout: float = 15.0,
        command_timeout: float = 1800.0,
    ):
        self.spec = host_spec
        self.user, self.hostname, self.port = parse_host_spec(host_spec)
        self.host = host_spec
        self.install_dir = install_dir
        self._root = install_dir  # absolute once connected
        self.ssh_config = Path(ssh_config).expanduser() if ssh_config else None
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.trust_on_first_use = trust_on_first_use
        self.key_filename = str(key_filename) if key_filename else None
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._conn: Any = None
        self._sftp: Any = None

    # -- connection -------------------------------------------------------------------------
    def _make_connection(self) -> Any:
        from fabric import Config, Connection

        if self.ssh_config is not None and not self.ssh_config.is_file():
            raise DeployError(self.host, f"ssh config {self.ssh_config} does not exist")
        config = Config(runtime_ssh_path=str(self.ssh_config)) if self.ssh_config else Config()
        keys = [k for k in os.environ.get(KEY_ENV, "").split(os.pathsep) if k]
        if self.key_filename:
            keys.insert(0, self.key_filename)
        for key in keys:  # named explicitly: a missing file is a mistake, not a fallback
            if not Path(key).expanduser().is_file():
                raise DeployError(self.host, f"key file {key} does not exist")
        connect_kwargs: dict[str, Any] = {"key_filename": keys} if keys else {}
        return Connection(
            self.hostname,
            user=self.user,
            port=self.port,
            config=config,
            connect_timeout=int(max(1, self.connect_timeout)),
            connect_kwargs=connect_kwargs,
        )

    def _setup_host_keys(self, conn: Any) -> list[str]:
        """Load known_hosts files into the client and set the missing-key policy."""
        import paramiko

        client = conn.client
        loaded: list[str] = []
        files = [Path("/etc/ssh/ssh_known_hosts"), Path("~/.ssh/known_hosts").expanduser()]
        for entry in str(conn.ssh_config.get("userknownhostsfile", "")).split():
            files.append(Path(entry).expanduser())
        writable = self.known_hosts
        if self.trust_on_first_use and writable is None:
            writable = Path("~/.ssh/known_hosts").expanduser()
        for path in files:
            if path.is_file() and path != writable:
                client.load_system_host_keys(str(path))
                loaded.append(str(path))
        if writable is not None:
            if self.trust_on_first_use and not writable.exists():
                writable.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                writable.touch(mode=0o600)
            if writable.is_file():
                # load_host_keys makes this the file AutoAddPolicy saves new keys into
                client.load_host_keys(str(writable))
                loaded.append(str(writable))
        if self.trust_on_first_use:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return loaded

    def _ssh_failure(self, exc: Exception, loaded: list[str], name: str) -> DeployError:
        if "not found in known_hosts" in str(exc):
            where = ", ".join(loaded) or "no known_hosts file found"
            port = name.rsplit(":", 1)[1] if name.startswith("[") else "22"
            hostname = name.strip("[").split("]")[0]
            return DeployError(
                self.host,
                f"host key for {name} is unknown (not in {where}); refusing to connect. Add it "
                f"(ssh-keyscan -p {port} {hostname} >> known_hosts, after checking the "
                f"fingerprint) or opt in with trust_on_first_use.",
            )
        return DeployError(self.host, f"SSH failure: {exc}")

    def connect(self) -> SSHTransport:
        """Open the connection, verify the host key and resolve ``root``."""
        if self._conn is not None:
            return self
        import paramiko

        conn = self._make_connection()
        loaded = self._setup_host_keys(conn)
        # ssh skips IdentityFile entries that do not exist; paramiko would abort on them
        wanted = conn.connect_kwargs.get("key_filename") or []
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        absent = [k for k in wanted if not Path(k).expanduser().is_file()]
        if wanted:
            conn.connect_kwargs["key_filename"] = [k for k in wanted if k not in absent]
        name = _known_hosts_name(conn.host, conn.port)
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise DeployError(
                self.host,
                f"host key for {name} has CHANGED (server offers {exc.key.get_name()} "
                f"{exc.key.fingerprint}, known_hosts has {exc.expected_key.fingerprint}); refusing "
                f"to connect. If the device was reinstalled, remove the old entry "
                f"(ssh-keygen -R '{name}') and add the new key.",
            ) from None
        except (paramiko.AuthenticationException, paramiko.SSHException) as exc:
            if not isinstance(exc, paramiko.AuthenticationException) and (
                "No authentication methods" not in str(exc)
            ):
                raise self._ssh_failure(exc, loaded, name) from None
            raise DeployError(
                self.host,
                f"authentication failed as {conn.user!r} (agent and key files tried): {exc}"
                + (f"; missing key files skipped: {', '.join(absent)}" if absent else ""),
            ) from None
        except (OSError, EOFError) as exc:
            raise DeployError(self.host, f"unreachable ({name}): {exc}") from None
        self._conn = conn
        with self._errors("resolving the install directory"):
            self._sftp = conn.sftp()
            home = self._sftp.normalize(".")
        inst = self.install_dir
        if inst == "~" or inst.startswith("~/"):
            inst = home + inst[1:]
        self._root = posixpath.normpath(posixpath.join(home, inst))
        log.debug("%s: connected, install dir %s", self.host, self._root)
        return self

    @property
    def root(self) -> str:
        """The absolute install directory; connects first, since ``~`` is the remote home."""
        self.connect()
        return self._root

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn paramiko/socket/invoke failures into DeployError; drop a dead connection."""
        import paramiko
        from invoke.exceptions import ThreadException

        try:
            yield
        except DeployError:
            raise
        except (paramiko.SSHException, EOFError, OSError, ThreadException) as exc:
            alive = self._conn is not None and self._conn.is_connected
            why = str(exc).strip() or type(exc).__name__
            if (
                alive
                and isinstance(exc, OSError)
                and not isinstance(exc, (ConnectionError, TimeoutError))
            ):
                raise DeployError(self.host, f"{what}: {why}") from None
            self.close()
            raise DeployError(self.host, f"{what}: connection lost ({why})") from None

    @property
    def sftp(self) -> Any:
        self.connect()
        return self._sftp

    def close(self) -> None:
        for obj in (self._sftp, self._conn):
            if obj is not None:
                # closing a dead connection must not hide the real error
                with suppress(Exception):
                    obj.close()
        self._conn = self._sftp = None

    # -- operations -------------------------------------------------------------------------
    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` in ``root`` on one channel of the Fabric connection's client.

        Not ``Connection.run``: invoke relays ``in_stream`` one byte per 10 ms poll, which made a
        checksum list on stdin take seconds; a channel with ``sendall`` + ``shutdown_write`` is
        immediate and keeps stdout and stderr apart.
        """
        self.connect()
        full = f"cd {shlex.quote(self.root)} 2>/dev/null; {command}"
        limit = timeout or self.command_timeout
        out: list[bytes] = []
        err: list[bytes] = []
        with self._errors(f"running {command!r}"):
            chan = self._conn.client.get_transport().open_session(timeout=self.connect_timeout)
            try:
                chan.exec_command(full)
                if stdin:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()
                deadline = time.monotonic() + limit
                while True:
                    busy = False
                    if chan.recv_ready():
                        out.append(chan.recv(1 << 16))
                        busy = True
                    if chan.recv_stderr_ready():
                        err.append(chan.recv_stderr(1 << 16))
                        busy = True
                    if not busy and chan.exit_status_ready():  # also true once the link died
                        break
                    if time.monotonic() > deadline:
                        raise DeployError(
                            self.host, f"command timed out after {limit:.0f} s: {command}"
                        )
                    if not busy:
                        time.sleep(0.002)
                code = chan.recv_exit_status()
            finally:
                chan.close()
        link = self._conn.client.get_transport() if self._conn is not None else None
        if code == -1 and (link is None or not link.is_active()):
            self.close()
            raise DeployError(self.host, f"connection lost while running {command!r}")
        result = CommandResult(
            command,
            int(code),
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
        )
        return _check(self.host, result, check)

    def put(self, local: Path, remote: str) -> None:
        with self._errors(f"uploading {local.name}"):
            self.sftp.put(str(local), remote, confirm=True)
            mode = local.stat().st_mode & 0o777
            if mode & 0o111:  # keep scripts executable; SFTP creates files with the umask
                self.sftp.chmod(remote, mode)

    def read_bytes(self, remote: str) -> bytes | None:
        with self._errors(f"reading {remote}"):
            try:
                with self.sftp.open(remote, "rb") as fh:
                    return bytes(fh.read())
            except FileNotFoundError:
                return None

    def write_atomic(self, remote: str, data: bytes) -> None:
        tmp = f"{remote}.tmp"
        with self._errors(f"writing {remote}"):
            with self.sftp.open(tmp, "wb") as fh:
                fh.write(data)
            self.sftp.posix_rename(tmp, remote)

    def listdir(self, remote: str) -> list[str]:
        with self._errors(f"listing {remote}"):
            try:
                return sorted(self.sftp.listdir(remote))
            except FileNotFoundError:
                return []

    def is_dir(self, remote: str) -> bool:
        import stat

        with self._errors(f"checking {remote}"):
            try:
                return stat.S_ISDIR(self.sftp.stat(remote).st_mode or 0)
            except FileNotFoundError:
                return False

    def readlink(self, remote: str) -> str | None:
        with self._errors(f"reading link {remote}"):
            try:
                return self.sftp.readlink(remote)
            except (FileNotFoundError, OSError):
                return None

    def makedirs(self, remotes: Iterable[str]) -> None:
        paths = sorted(set(remotes))
        if paths:
            self.run("mkdir -p -- " + " ".join(shlex.quote(p) for p in paths))

    def rename(self, src: str, dst: str) -> None:
        self.run(f"mv -T -- {shlex.quote(src)} {shlex.quote(dst)}")

    def switch_symlink(self, link: str, target: str) -> None:
        tmp = shlex.quote(f"{link}.tmp")
        self.run(f"ln -sfn -- {shlex.quote(target)} {tmp} && mv -T -- {tmp} {shlex.quote(link)}")

    def remove_tree(self, remote: str) -> None:
        if remote.rstrip("/") in ("", "/", self.root.rstrip("/")):
            raise DeployError(self.host, f"refusing to remove {remote!r}")
        self.run(f"rm -rf -- {shlex.quote(remote)}")


def open_transport(
    host_spec: str | None, install_dir: str, **ssh_options: Any
) -> LocalTransport | SSHTransport:
    """``None`` or ``"local"`` gives a LocalTransport rooted at ``install_dir``, else SSH."""
    if host_spec in (None, "", "local"):
        return LocalTransport(install_dir)
    return SSHTransport(host_spec, install_dir, **ssh_options)
