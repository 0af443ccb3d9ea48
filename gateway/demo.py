"""`gateway demo`: throwaway PostgreSQL + sshd, the gateway in front, two users, the flow to paste; Ctrl-C undoes it.

The steps read in order: make a folder, start the sandbox servers, write a gateway.toml for them, start the
gateway, check alice's and bob's keys through the HTTP API, print the lines that take a user through the
whole flow (login, request, approve, connect, revoke, review), wait for Ctrl-C, stop everything, remove the folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gateway.api.auth import hash_api_key, new_api_key
from gateway.app import App
from gateway.config import Config, ConfigError, load_config
from gateway.keyfiles import write_private
from gateway.pg.targetcheck import check_target, render, scope_modes
from gateway.review.sanitize import neutralise
from gateway.sandbox import SandboxStartError, SandboxUnavailable, is_root, port_in_use
from gateway.sandbox.postgres import PG_OS_USER, SAMPLE_COUNTS, PgCluster
from gateway.sandbox.procs import USER_LOCK
from gateway.sandbox.sshd import SSH_OS_USER, SSHD_BIN, SshServer
from gateway.services import Services, load_policies
from gateway.web.links import LINK_TTL, console_url, sign_in_link

HOST = "127.0.0.1"
ENGINEER, APPROVER = "alice", "bob"
REASON = "DEMO-1: trying the gateway"
READY_LINE = "Ctrl-C stops the demo"
"""Start of the last line of the ready block (tests wait for it)."""

NO_SSHD = (
    "gateway demo: the SSH target needs OpenSSH's server: apt-get install openssh-server "
    "(continuing with Postgres only)"
)

_PG_LOGINS = {"read": "app_ro", "write": "app_rw", "admin": "app_admin"}
"""orders-db: scope -> the sandbox role the gateway logs in as."""

_POLICIES = {
    "orders-db": """\
# Who may approve what on orders-db (written by `gateway demo`; README.md, "Policies").
target: orders-db
scopes:
  read:
    max_ttl: 1h
    approvals: {count: 1, groups: [approvers]}   # never the requester
    sql:
      mode: read                                 # SELECTs only; the upstream role is read-only too
      sensitive_tables: [customers]              # reading customers raises an alert
  write:
    max_ttl: 30m
    approvals: {count: 1, groups: [approvers]}
    sql:
      mode: write
      rules:
        - {name: no-drop, kinds: [ddl], action: kill}
  admin:
    max_ttl: 15m
    approvals: {count: 1, groups: [approvers]}
    sql:
      mode: admin
""",
    "web-1": """\
# Who may approve what on web-1 (written by `gateway demo`; README.md, "Policies").
target: web-1
scopes:
  shell:
    max_ttl: 1h
    approvals: {count: 1, groups: [approvers]}
    ssh:
      shell: true
      exec: true
      sftp: read-only
      commands:
        - {pattern: "sudo *", action: alert}
        - {pattern: "regex:^(shutdown|reboot|halt)\\\\b", action: deny}
""",
}


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do, in one or two plain lines."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the command line chose."""

    ssh_port: int = 2222
    pg_port: int = 6432
    http_port: int = 8080
    dir: Path | None = None
    keep: bool = False


@dataclass
class Demo:
    """One demo run: the folder, the sandbox servers and the gateway; `cleanup()` undoes whatever was made."""

    opts: DemoOptions
    say: Callable[[str], None]
    dir: Path = field(default_factory=Path)
    pg: PgCluster | None = None
    sshd: SshServer | None = None
    api_keys: dict[str, str] = field(default_factory=dict)
    _made_dir: bool = False

    # ---- the steps, in order ----------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until SIGINT/SIGTERM, clean up; returns the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        app: App | None = None
        starting: asyncio.Task[None] | None = None
        try:
            check_ports(self.listen_ports())
            self.make_dir()
            # initdb and sshd start in a thread; a Ctrl-C meanwhile is honoured as soon as they are up.
            starting = asyncio.ensure_future(asyncio.to_thread(self.start_sandbox))
            await asyncio.shield(starting)
            if stop.is_set():
                return _interrupted(self.say)
            config = self.load(self.write_config())
            app = App(config)
            svc = await self.start_gateway(app)
            await self.check_users(f"http://{HOST}:{self.opts.http_port}")
            self.say(await self.target_check(config))
            self.write_known_hosts(config.ssh_host_key.with_name(config.ssh_host_key.name + ".pub"))
            self.say(self.ready_text(config, sign_in_link(svc.ring, config, APPROVER, now=time.time())))
            await stop.wait()
            self.say("\ngateway demo: stopping ...")
            return 0
        except DemoError as exc:
            if stop.is_set():  # Ctrl-C also reaches initdb or sshd and makes them fail: not an error then
                return _interrupted(self.say)
            print(f"gateway demo: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            if starting is not None:
                # Cancelled early (a Ctrl-C before our handlers were in place): never remove servers from
                # under the thread that is still starting them.
                await asyncio.wait([starting])
                if not starting.cancelled():
                    starting.exception()  # retrieved: it was reported above, or is moot after a Ctrl-C
            if app is not None:
                await app.stop()
            await asyncio.to_thread(self.cleanup)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def listen_ports(self) -> dict[str, int]:
        """The gateway's three front-end ports, by the option that sets each."""
        return {"--ssh-port": self.opts.ssh_port, "--pg-port": self.opts.pg_port, "--http-port": self.opts.http_port}

    def make_dir(self) -> None:
        """The demo's folder: a new temp dir, or `--dir` (which must be new or empty: it is removed at the end)."""
        if self.opts.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
        else:
            self.dir = self.opts.dir.expanduser().absolute()
            if self.dir.exists() and (not self.dir.is_dir() or any(self.dir.iterdir())):
                raise DemoError(f"{self.dir} exists and is not an empty folder; the demo removes its folder at the end")
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._made_dir = True
        if is_root():
            # The servers run as unprivileged users (PostgreSQL refuses root; sshd logs in SSH_OS_USER):
            # they must be able to walk into this folder. Secrets inside stay 0600.
            self.dir.chmod(0o711)
            _check_traversable(self.dir)

    def start_sandbox(self) -> None:
        """Start PostgreSQL (required) and sshd (optional: without it the demo is Postgres only)."""
        self.say('gateway demo: starting a throwaway PostgreSQL (initdb, sample "orders" database) ...')
        try:
            self.pg = PgCluster(parent=self.dir)
            self.pg.start()
        except SandboxUnavailable as exc:
            raise DemoError(f"the Postgres target needs PostgreSQL's server: {exc}") from None
        except SandboxStartError as exc:
            raise DemoError(f"PostgreSQL did not start:\n{exc}") from None
        if not os.access(SSHD_BIN, os.X_OK):
            self.say(NO_SSHD)
            return
        self.say("gateway demo: starting a throwaway OpenSSH server ...")
        try:
            self.sshd = SshServer(parent=self.dir).start()
        except SandboxUnavailable as exc:
            self.say(f"gateway demo: {exc} (continuing with Postgres only)")
        except SandboxStartError as exc:
            raise DemoError(f"sshd did not start:\n{exc}") from None

    def write_config(self) -> Path:
        """gateway.toml for the sandbox, the upstream passwords (0600), example policies and two API users."""
        assert self.pg is not None
        secrets_dir = self.dir / "secrets"
        for scope, role in _PG_LOGINS.items():
            write_private(secrets_dir / f"orders_{scope}", (self.pg.passwords[role] + "\n").encode())
        policies = self.dir / "policies"
        policies.mkdir()
        for target in self.targets():  # a policy for a target that is not configured would fail the start
            (policies / f"{target}.yaml").write_text(_POLICIES[target])
        self.api_keys = {ENGINEER: new_api_key(), APPROVER: new_api_key()}
        path = self.dir / "gateway.toml"
        path.write_text(self.config_text())
        return path

    def config_text(self) -> str:
        """The demo's gateway.toml: listeners, the two users, the sandbox targets; defaults for the rest."""
        assert self.pg is not None
        o, q = self.opts, _toml_str
        lines = [
            "# gateway.toml written by `gateway demo` for its throwaway servers. Everything not set here is the",
            "# default (`gateway init` writes them all out); relative paths are relative to this folder.",
            "",
            "[listen]",
            f"ssh = {q(f'{HOST}:{o.ssh_port}')}",
            f"postgres = {q(f'{HOST}:{o.pg_port}')}",
            f"http = {q(f'{HOST}:{o.http_port}')}",
            "",
            "[users.alice]                   # the engineer; API key printed by the demo",
            f"api_key_sha256 = {q(hash_api_key(self.api_keys[ENGINEER]))}",
            'groups = ["engineers"]',
            "",
            "[users.bob]                     # the approver; an admin too, so he may revoke alice's grants",
            f"api_key_sha256 = {q(hash_api_key(self.api_keys[APPROVER]))}",
            'groups = ["approvers", "admins"]',
            "",
            "[targets.orders-db]             # the sandbox PostgreSQL",
            'kind = "postgres"',
            f"address = {q(f'{self.pg.host}:{self.pg.port}')}",
            'database = "orders"',
            "[targets.orders-db.logins]",
            *(
                f'{scope} = {{ user = "{role}", password_file = "secrets/orders_{scope}" }}'
                for scope, role in _PG_LOGINS.items()
            ),
        ]
        if self.sshd is not None:
            lines += [
                "",
                "[targets.web-1]                 # the sandbox sshd",
                'kind = "ssh"',
                f"address = {q(f'{self.sshd.host}:{self.sshd.port}')}",
                f"host_key = {q(self.sshd.host_key_line)}",
                "[targets.web-1.logins]",
                f"shell = {{ user = {q(self.sshd.user)}, key_file = {q(str(self.sshd.client_key_path))} }}",
            ]
        return "\n".join(lines) + "\n"

    def load(self, config_path: Path) -> Config:
        """Read back the config just written, exactly as `gateway run` would."""
        try:
            return load_config(config_path)
        except ConfigError as exc:  # a bug in the demo, not the user's doing: say so
            raise DemoError(f"the demo wrote an invalid config: {exc}") from None

    async def start_gateway(self, app: App) -> Services:
        """Start the gateway in this process on the demo's ports."""
        o = self.opts
        self.say(f"gateway demo: starting the gateway (ssh {o.ssh_port}, postgres {o.pg_port}, http {o.http_port}) ...")
        try:
            return await app.start()
        except OSError as exc:  # a port taken since check_ports, or a folder we cannot write
            raise DemoError(f"the gateway did not start: {exc}") from None

    async def check_users(self, base_url: str) -> None:
        """Through the real HTTP API: the keys the demo prints log alice and bob in (a wrong config fails here)."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(base_url, timeout=timeout) as http:
            for user, key in self.api_keys.items():
                try:
                    async with http.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"}) as resp:
                        data = await resp.json()
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    raise DemoError(f"the gateway's HTTP API did not answer GET /v1/whoami: {exc!r}") from None
                if resp.status != 200 or data.get("user") != user:
                    raise DemoError(f"the API does not know {user}'s key: {resp.status} {data}")

    def targets(self) -> list[str]:
        """The targets this run configured."""
        return ["orders-db", *(["web-1"] if self.sshd is not None else [])]

    def write_known_hosts(self, host_pub: Path) -> None:
        """A known_hosts file pinning the gateway's SSH host key, so ssh checks it (and ~/.ssh stays untouched)."""
        key_type, blob = host_pub.read_text().split()[:2]
        port = self.opts.ssh_port
        name = HOST if port == 22 else f"[{HOST}]:{port}"
        (self.dir / "known_hosts").write_text(f"{name} {key_type} {blob}\n")

    async def target_check(self, config: Config) -> str:
        """`gateway target check orders-db`: what the sandbox's logins can do beyond their scopes, and the fixes."""
        target = config.targets["orders-db"]
        reports = await check_target(target, scope_modes(target, load_policies(config)))
        return "\n".join([
            "", f"gateway --config {config.path} target check orders-db",
            "  (the upstream roles, as a stock PostgreSQL leaves them: the parser refuses all of this, but the",
            "   role is the real wall; a DBA runs the FIX column to make it so)", "",
            neutralise(render(target.name, reports)),
        ])  # fmt: skip

    def ready_text(self, config: Config, link: str) -> str:
        """The block a newcomer reads: what runs, who the users are, the console, what to paste, in order."""
        assert self.pg is not None
        o, d = self.opts, self.dir
        out = [
            "",
            f"gateway demo is running. Its files are in {d}",
            "",
            f"  gateway      ssh {HOST}:{o.ssh_port}   postgres {HOST}:{o.pg_port}   http {HOST}:{o.http_port}",
            f"  orders-db    PostgreSQL on {self.pg.host}:{self.pg.port}, database orders "
            f"({SAMPLE_COUNTS['orders']} orders, {SAMPLE_COUNTS['customers']} customers)",
        ]
        if self.sshd is not None:
            out.append(f"  web-1        OpenSSH on {self.sshd.host}:{self.sshd.port}, login {self.sshd.user}")
        out += [
            "",
            f"Two users: {ENGINEER} (engineer: asks for access) and {APPROVER} (approver and admin: approves, revokes)",
            "",
            f"The web console is {console_url(config)} . Open this link in a browser to sign in as {APPROVER}",
            f"(it works once, for {int(LINK_TTL // 60)} minutes; "
            f"gateway --config {shlex.quote(str(config.path))} console-link {APPROVER} prints a new one):",
            f"  {link}",
            f"As {APPROVER} there: approve {ENGINEER}'s requests (Waiting for me), watch her sessions (Live),",
            "revoke them (Grants) and replay them (Sessions).",
            "",
            "Be both: paste these into another terminal, in order. Each step says what it shows.",
            "",
            *(f"  {line}" if line else "" for line in self.flow_lines(config)),
            "",
            f"{READY_LINE} and removes {d}." if not o.keep else f"{READY_LINE}; --keep leaves {d} in place.",
        ]
        return "\n".join(out)

    def flow_lines(self, config: Config) -> list[str]:
        """The whole flow as shell lines: log in, request, approve, connect, revoke, review (tests paste them)."""
        o, q = self.opts, shlex.quote
        gw = "gateway"
        server = f"http://{HOST}:{o.http_port}"
        alice, bob = (f"GATEWAY_CREDENTIALS=${v} {gw}" for v in ("A", "B"))
        creds = {u: q(str(self.dir / f"{u}.credentials")) for u in (ENGINEER, APPROVER)}
        pg_conn = f'"host={HOST} port={o.pg_port} user={ENGINEER} dbname=orders-db sslmode=require"'
        lines = _on_path()
        lines += [
            f"# 1. {ENGINEER} and {APPROVER} log in: one credential file each, so both work from this one shell",
            f"A={creds[ENGINEER]} B={creds[APPROVER]}",
            f"{alice} login --server {server} --key {self.api_keys[ENGINEER]}",
            f"{bob} login --server {server} --key {self.api_keys[APPROVER]}",
            "",
            f"# 2. {ENGINEER} asks for read access to orders-db (prints the request id); {APPROVER} approves it",
            f"REQ=$({alice} request orders-db --scope read --for 15m --reason {q(REASON)})",
            f"{bob} requests --pending",
            f"{bob} approve $REQ --comment 'ok for the demo'",
            "",
            f"# 3. {ENGINEER} connects. Her token is her password at the gateway; stock psql works with it:",
            f"PGPASSWORD=$({alice} token $REQ) psql {pg_conn} -c 'select count(*) from orders'",  # noqa: S608
            "#    gateway psql fetches the token of her newest grant itself, and says which grant it uses.",
            "#    The delete is refused: the grant is read-only. (Leave out -- -c ... for an interactive psql.)",
            f"{alice} psql orders-db -- -c 'select count(*) from customers' -c 'delete from orders'",  # noqa: S608
            "#    A detection to trigger by hand: read the sensitive table customers whole (exfil.sensitive_whole),",
            f"#    {alice} psql orders-db -- -c 'select * from customers'    then see it in gateway detections",  # noqa: S608
        ]
        if self.sshd is not None:
            known = q(str(self.dir / "known_hosts"))
            lines += [
                "",
                "# 4. the same for a shell on web-1: ask, approve, run a command (leave out -- ... for a shell)",
                f"REQ2=$({alice} request web-1 --scope shell --for 15m --reason {q(REASON)})",
                f"{bob} approve $REQ2",
                f"{alice} ssh web-1 -- 'cat hello.txt; uptime'",
                f"#    stock ssh: ssh -p {o.ssh_port} -o UserKnownHostsFile={known} web-1@{HOST}"
                ', then paste the token at "Approval token:"',
            ]
        step = 4 if self.sshd is None else 5
        lines += [
            "",
            f"# {step}. {APPROVER} revokes {ENGINEER}'s orders-db grant: her live sessions end within 1 s, new ones",
            "#    are refused",
            f"{bob} revoke $REQ --reason 'demo: done'",
            f"{alice} psql orders-db -- -c 'select 1'",
            "",
            f"# {step + 1}. review. These read the gateway's own files, so they need its config, not a server:",
            f"export GATEWAY_CONFIG={q(str(config.path))}",
            f"{gw} sessions --user {ENGINEER}",
            f"{gw} show $REQ",
            f"{gw} replay $REQ",
        ]
        if self.sshd is not None:
            lines.append(f"{gw} replay $REQ2          # an SSH session at real speed: space pauses, q quits")
        lines += [f"{gw} detections --since 1h   # what detection flagged (step 3's hint, a quick approval)",
                  f"{gw} audit verify"]  # fmt: skip
        return lines

    def cleanup(self) -> None:
        """Stop the sandbox servers and remove the folder (unless --keep); safe to call at any point."""
        if self.sshd is not None:
            self.sshd.stop()
        if self.pg is not None:
            self.pg.stop()
        if not self._made_dir:
            return
        if self.opts.keep:
            self.say(f"demo stopped; kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.say(f"demo stopped; removed {self.dir}")
        left = what_stays()
        if left:
            self.say(left)


def what_stays() -> str:
    """What the demo made outside its folder and leaves, and why (as root: the servers' OS accounts, a lock)."""
    if not is_root():  # the sandbox makes accounts only as root; as a user it runs the servers as that user
        return ""
    accounts = [(name, why) for name, why in _OS_ACCOUNTS if _account_exists(name)]
    if not accounts and not os.path.exists(USER_LOCK):
        return ""
    lines = ["kept on purpose (other demos and test runs on this machine share them; the next demo reuses them):"]
    lines += [f"  OS account {name}: {why}" for name, why in accounts]
    if os.path.exists(USER_LOCK):
        lines.append(f"  {USER_LOCK}: serialises creating those accounts between concurrent runs")
    users = " ".join(name for name, _ in accounts)
    undo = [f"for u in {users}; do userdel -r $u; done" if users else "", f"rm -f {USER_LOCK}"]
    lines.append(f"  to remove them when nothing else uses them: {'; '.join(u for u in undo if u)}")
    return "\n".join(lines)


_OS_ACCOUNTS = (
    (PG_OS_USER, "PostgreSQL refuses to run as root, so the sandbox cluster runs as this user"),
    (SSH_OS_USER, "the SSH target's login (the gateway logs in upstream as it)"),
)
"""The accounts the sandbox creates when the demo runs as root."""


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def check_ports(ports: dict[str, int]) -> None:
    """Refuse to start (before making anything) when one of the gateway's ports is taken."""
    for option, port in ports.items():
        why = port_in_use(HOST, port)
        if why is not None:
            raise DemoError(f"port {port} on {HOST} is busy ({why}): stop what uses it, or pick another with {option}")


def _check_traversable(path: Path) -> None:
    """As root: every folder above `path` must let other users through, or the unprivileged servers cannot start."""
    for folder in [path, *path.parents]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            raise DemoError(
                f"{folder} is closed to other users (mode {stat.S_IMODE(folder.stat().st_mode):o}), but the demo's "
                f"servers run as {PG_OS_USER} and {SSH_OS_USER}: pick a --dir under /tmp, or leave --dir out"
            )


def _on_path() -> list[str]:
    """Lines that make `gateway` work in the user's shell when it is not on PATH (run as `python -m gateway`)."""
    if shutil.which("gateway"):
        return []
    return [
        "# 0. `gateway` is not on this shell's PATH (activate its virtualenv, or use this shell function):",
        f'gateway() {{ {shlex.quote(sys.executable)} -m gateway "$@"; }}',
        "",
    ]


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def _interrupted(say: Callable[[str], None]) -> int:
    """Exit code 130 for a Ctrl-C before the demo was ready."""
    say("gateway demo: interrupted while starting")
    return 130


async def run_demo(opts: DemoOptions, say: Callable[[str], None] | None = None) -> int:
    """`gateway demo`: returns the exit code (errors are printed, one plain message)."""
    return await Demo(opts, say or _say).run()


def _say(text: str) -> None:
    """Print and flush at once (stdout may be a pipe: the tests read it line by line)."""
    print(text, flush=True)
