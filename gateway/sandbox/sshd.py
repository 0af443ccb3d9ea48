"""Throwaway OpenSSH server on 127.0.0.1 with its own host key and a client key for the gateway."""

from __future__ import annotations

import atexit
import getpass
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.sandbox.procs import (
    SandboxStartError,
    SandboxUnavailable,
    descendants,
    ensure_user,
    free_port,
    is_root,
    kill_pids,
)

SSH_OS_USER = "gwops"
"""Unprivileged login user of the throwaway sshd when we run as root."""

SSHD_BIN = "/usr/sbin/sshd"
HELLO_TEXT = "hello from the gateway sandbox\n"
"""Content of ``SshServer.hello_path``."""

_READY_TIMEOUT = 15.0


def _find_ssh_keygen() -> str:
    """Path of ssh-keygen, or ``SandboxUnavailable``."""
    path = shutil.which("ssh-keygen")
    if not path:
        raise SandboxUnavailable("ssh-keygen not found: install Debian's 'openssh-client' package")
    return path


class SshServer:
    """An OpenSSH sshd (``-D`` under our own subprocess) on a free loopback port.

    As root it logs in the dedicated user ``gwops`` (created once; key login only), otherwise the
    current user. Only ``client_key_path``'s key is authorized, via ``<temp>/authorized_keys``.
    ``stop()`` kills the listener and every session process it forked, then removes the temp dir.
    """

    host: str = "127.0.0.1"

    def __init__(self, user: str | None = None, *, parent: Path | None = None) -> None:
        """Check the binaries (``SandboxUnavailable`` if missing) and choose the login user; nothing starts yet.

        ``parent``: where the server's temp dir is made (default: the system temp dir); it must be traversable
        by the login user, who reads ``authorized_keys`` there.
        """
        if not os.access(SSHD_BIN, os.X_OK):
            raise SandboxUnavailable(
                f"{SSHD_BIN} not found: install Debian's 'openssh-server' package (apt-get install openssh-server)"
            )
        self.ssh_keygen: str = _find_ssh_keygen()
        self.user: str = user or (SSH_OS_USER if is_root() else getpass.getuser())
        self.parent: Path | None = parent
        self.port: int = 0
        self.base_dir: Path | None = None
        self.home: Path = Path()
        self.hello_path: Path = Path()
        self.host_key_line: str = ""
        self.client_pub_line: str = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- paths -------------------------------------------------------------------------------------

    @property
    def _base(self) -> Path:
        """Temp dir of this server; only valid after ``start()``."""
        if self.base_dir is None:
            raise RuntimeError("SshServer is not started")
        return self.base_dir

    @property
    def config_path(self) -> Path:
        """The sshd_config written for this server."""
        return self._base / "sshd_config"

    @property
    def log_path(self) -> Path:
        """sshd's log (``-E``), LogLevel VERBOSE."""
        return self._base / "sshd.log"

    @property
    def host_key_path(self) -> Path:
        """Private ed25519 host key of the server."""
        return self._base / "ssh_host_ed25519_key"

    @property
    def client_key_path(self) -> Path:
        """Private ed25519 key (OpenSSH format, no passphrase) authorized to log in as ``user``."""
        return self._base / "client_ed25519"

    @property
    def authorized_keys_path(self) -> Path:
        """The server's only authorized_keys file (holds ``client_pub_line``)."""
        return self._base / "authorized_keys"

    @property
    def known_hosts_line(self) -> str:
        """known_hosts entry pinning this server: ``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file holding only ``known_hosts_line``."""
        return self._base / "known_hosts"

    @property
    def scratch_dir(self) -> Path:
        """A per-server directory owned by ``user`` for uploads and other writes (removed on stop)."""
        return self._base / "scratch"

    @property
    def pid(self) -> int | None:
        """pid of the sshd listener while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SshServer:
        """Create keys and config in a temp dir, then run sshd until it listens on a free port."""
        if self._proc is not None:
            return self
        entry = self._login_user()
        self.home = Path(entry.pw_dir)
        if is_root():
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.base_dir = Path(tempfile.mkdtemp(prefix="gw-sshd-", dir=self.parent))
        atexit.register(self.stop)
        try:
            # sshd reads authorized_keys as the login user: the dir must be traversable, the file readable
            self._base.chmod(0o755)
            self._keygen(self.host_key_path, "gw-sandbox-host")
            self._keygen(self.client_key_path, "gw-sandbox-client")
            self.host_key_line = _key_line(self.host_key_path.with_suffix(".pub"))
            self.client_pub_line = _key_line(self.client_key_path.with_suffix(".pub"))
            self.authorized_keys_path.write_text(self.client_pub_line + "\n")
            self.authorized_keys_path.chmod(0o644)
            self.scratch_dir.mkdir()
            self.hello_path = (self.home if self.user == SSH_OS_USER else self.scratch_dir) / "hello.txt"
            os.chown(self.scratch_dir, entry.pw_uid, entry.pw_gid)
            # the home may be shared with another sandbox: replace atomically, never delete
            tmp_hello = self.hello_path.with_name(f".hello.{os.getpid()}.tmp")
            tmp_hello.write_text(HELLO_TEXT)
            os.chown(tmp_hello, entry.pw_uid, entry.pw_gid)
            os.replace(tmp_hello, self.hello_path)
            self._run_sshd()
            self.known_hosts_path.write_text(self.known_hosts_line + "\n")
        except BaseException:
            self.stop()
            raise
        return self

    def _login_user(self) -> pwd.struct_passwd:
        """The login user's passwd entry; as root, create ``gwops`` (bash, home, '*' password) once."""
        if is_root() and self.user == SSH_OS_USER:
            return ensure_user(
                SSH_OS_USER,
                ["--create-home", "--user-group", "--shell", "/bin/bash"],
                ["--password", "*", "--shell", "/bin/bash"],  # '*', not '!': a locked account refuses keys
            )
        return pwd.getpwnam(self.user)

    def _keygen(self, path: Path, comment: str) -> None:
        """Generate an ed25519 key pair without passphrase at ``path``."""
        subprocess.run(
            [self.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )

    def _config(self) -> str:
        """sshd_config for this instance."""
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.host_key_path}",
                f"PidFile {self._base / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys_path}",
                f"AllowUsers {self.user}",
                "StrictModes no",
                "UsePAM no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "AcceptEnv LANG LC_* TERM",
                # accepted on purpose: the tests prove the gateway strips these before they get here
                "AcceptEnv LD_PRELOAD BASH_ENV GW_TEST_*",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PermitTTY yes",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "LogLevel VERBOSE",
                "",
            ]
        )

    def _run_sshd(self, attempts: int = 3) -> None:
        """Start ``sshd -D -e`` and wait for 'Server listening'; on a bind race pick a new port."""
        for attempt in range(1, attempts + 1):
            self.port = free_port(self.host)
            self.config_path.write_text(self._config())
            self.log_path.unlink(missing_ok=True)
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [SSHD_BIN, "-D", "-e", "-f", str(self.config_path), "-E", str(self.log_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + _READY_TIMEOUT
            while time.monotonic() < deadline:
                if "Server listening on" in self._read_log():
                    return
                if self._proc.poll() is not None:
                    break
                time.sleep(0.02)
            log_text = self._read_log()
            returncode = self._proc.poll()
            self._kill()
            if ("Address already in use" in log_text or "Cannot bind" in log_text) and attempt < attempts:
                continue
            raise SandboxStartError(
                f"sshd failed to start on port {self.port} (exit {returncode})\n"
                f"--- sshd log {self.log_path} ---\n{log_text}"
            )

    def stop(self) -> None:
        """Kill sshd and all its session processes, then remove the temp dir; idempotent."""
        atexit.unregister(self.stop)
        try:
            self._kill()
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def _kill(self) -> None:
        """SIGTERM (then SIGKILL) the listener and every process it forked (sessions run in own sessions)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            kill_pids([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=10)

    def __enter__(self) -> SshServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the server."""
        self.stop()

    # ---- helpers -----------------------------------------------------------------------------------

    def _read_log(self) -> str:
        """sshd's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        """Short description with the address."""
        return f"<SshServer {self.user}@{self.host}:{self.port} dir={self.base_dir}>"


def _key_line(pub_path: Path) -> str:
    """'type base64' of an OpenSSH public key file, without the comment."""
    key_type, blob = pub_path.read_text().split()[:2]
    return f"{key_type} {blob}"
