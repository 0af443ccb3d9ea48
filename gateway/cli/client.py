"""The CLI's HTTP client for the control-plane API, and the user's credential file (0600)."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError

URL_ENV = "GATEWAY_URL"
KEY_ENV = "GATEWAY_API_KEY"
CREDENTIALS_ENV = "GATEWAY_CREDENTIALS"


class ApiCallError(CliError):
    """The API refused a call; str() is the server's message (which never contains a credential)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{status} {code}]", 1)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Credentials:
    """Server URL and API key from the credential file; repr hides the key."""

    server: str
    api_key: str

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r}, api_key='***')"


def credentials_path() -> Path:
    """$GATEWAY_CREDENTIALS, else ~/.config/gateway/credentials (XDG_CONFIG_HOME respected)."""
    env = os.environ.get(CREDENTIALS_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gateway" / "credentials"


def load_credentials(path: Path | None = None) -> Credentials | None:
    """The saved credentials, or None; refuses a file others can read (like ssh does with keys)."""
    path = path or credentials_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CliError(f"{path} is readable by others; run: chmod 600 {path}", 2)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(str(doc["server"]), str(doc["api_key"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(f"{path} is not a gateway credential file; run `gateway login` again", 2) from None


def save_credentials(server: str, api_key: str, path: Path | None = None) -> Path:
    """Write the credential file with 0600 permissions (created that way: no window where it is readable)."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"server": server, "api_key": api_key}, f)
        f.write("\n")
    tmp.replace(path)
    return path


def check_server_url(url: str) -> str:
    """An http(s) URL without a trailing slash."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--server must be an http:// or https:// URL, got {url!r}", 2)
    return url.rstrip("/")


class ApiClient:
    """JSON over HTTP with a bearer API key; blocking (the CLI does one thing at a time)."""

    def __init__(self, server: str, api_key: str | None, *, timeout: float = 15.0) -> None:
        self.server = check_server_url(server)
        self._key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ApiClient({self.server!r})"

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None
    ) -> Any:
        """Send one request; the decoded JSON answer, or ApiCallError / CliError."""
        url = self.server + path
        if query:
            clean = {k: _q(v) for k, v in query.items() if v is not None and v is not False}
            if clean:
                url += "?" + urllib.parse.urlencode(clean)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked in __init__
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._key:
            req.add_header("Authorization", f"Bearer {self._key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the gateway at {self.server}: {reason}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise CliError(f"{self.server} answered with something that is not JSON; is --server right?") from None


def _q(value: Any) -> str:
    return "true" if value is True else str(value)


def _api_error(exc: urllib.error.HTTPError) -> ApiCallError:
    try:
        err = json.loads(exc.read())["error"]
        return ApiCallError(exc.code, str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError, OSError):
        return ApiCallError(exc.code, "http", f"HTTP {exc.code} {exc.reason}")


def server_from(explicit: str | None) -> str | None:
    """--server, else $GATEWAY_URL, else the credential file's server, else None."""
    if explicit:
        return explicit
    env = os.environ.get(URL_ENV)
    if env:
        return env
    creds = load_credentials()
    return creds.server if creds else None


def client_from(explicit_server: str | None) -> ApiClient:
    """A client for the configured server and key; a clear error when there is none."""
    server = server_from(explicit_server)
    if server is None:
        raise CliError(f"no gateway server: pass --server URL, set {URL_ENV}, or run `gateway login`", 2)
    key = os.environ.get(KEY_ENV)
    if not key:
        creds = load_credentials()
        key = creds.api_key if creds else None
    if not key:
        raise CliError(f"no API key: run `gateway login --server {server} --key KEY` or set {KEY_ENV}", 2)
    return ApiClient(server, key)
