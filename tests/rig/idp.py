"""A real OpenID Provider for browser tests: node runs `oidc-provider` (npm, installed once into a cache dir)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OIDC_PROVIDER = "9.13.3"
SCRIPT = Path(__file__).with_name("oidc_idp.mjs")


def cache_dir() -> Path:
    """Where oidc-provider is installed (outside the repo; reused by every run)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gateway-tests" / f"oidc-provider-{OIDC_PROVIDER}"


def install() -> Path:
    """npm-install the pinned oidc-provider into the cache dir once (locked against a parallel run)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "node_modules" / "oidc-provider" / "package.json").exists():
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(root),
                 f"oidc-provider@{OIDC_PROVIDER}"],
                check=True,
                capture_output=True,
                timeout=600,
            )  # fmt: skip
    # ESM resolves `import 'oidc-provider'` from the script's folder: the script runs from the cache dir.
    shutil.copyfile(SCRIPT, root / SCRIPT.name)
    return root


@dataclass
class NodeIdp:
    """A running provider: its issuer URL and process."""

    issuer: str
    proc: subprocess.Popen[bytes]

    @property
    def jwks_url(self) -> str:
        """oidc-provider's JWKS route."""
        return self.issuer + "/jwks"

    def stop(self) -> None:
        """End the node process."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_idp(port: int, clients: list[dict[str, Any]], users: dict[str, dict[str, Any]], log: Path) -> NodeIdp:
    """Start the provider on `port` with these clients and users; returns once it listens."""
    root = install()
    cfg = json.dumps({"port": port, "clients": clients, "users": users})
    err = log.open("wb")
    proc = subprocess.Popen(["node", str(root / SCRIPT.name), cfg], stdout=subprocess.PIPE, stderr=err, cwd=root)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = proc.stdout.readline()  # the provider prints one line when ready (or exits)
    if not line or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"oidc-provider did not start: {log.read_text()[-2000:]}")
    return NodeIdp(json.loads(line)["ready"], proc)
