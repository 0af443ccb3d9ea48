"""Run the demo's flow against the gateway image: `.venv/bin/python docker/smoke.py [IMAGE]` (as root, podman).

The demo's throwaway PostgreSQL and sshd run on this machine; the gateway runs in the container (host network,
the demo's folder mounted at the same path); the lines `gateway demo` prints are pasted in order, and each one
must do what the demo says. Then `podman stop` must end the container gracefully. Not part of the test suite:
CI has no container engine (docker/README.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.demo import Demo, DemoOptions
from gateway.sandbox import free_port

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "localhost/gateway:dev"
# This machine's sandbox refuses raising rlimits and crun's cgroup handling: runc with modest limits works.
PODMAN_RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
EXPECT_FAIL = ("delete from orders", "-c 'select 1'")  # refused by policy / after the revocation


def healthy(port: int) -> bool:
    """/healthz answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def as_container_user() -> bool:
    """docker/gateway.toml in a fresh /data owned by the image's user (uid 10001), as deployed: the gateway
    starts, writes its store and keys there, and the image's healthcheck says healthy."""
    import re
    import shutil
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="gateway-smoke-data-"))
    name = f"gateway-smoke-data-{data.name[-8:]}".lower()
    try:
        text = (Path(__file__).with_name("gateway.toml")).read_text()
        for key in ("ssh", "postgres", "http"):  # host network here: free ports instead of 2222/6432/8080
            text = re.sub(rf'^{key} = "0\.0\.0\.0:\d+"', f'{key} = "0.0.0.0:{free_port()}"', text, flags=re.M)
        (data / "gateway.toml").write_text(text)
        shutil.chown(data, 10001, 10001)
        shutil.chown(data / "gateway.toml", 10001, 10001)
        run = [*PODMAN_RUN, "-d", "--name", name, "--network", "host", "-v", f"{data}:/data", IMAGE]
        subprocess.run(run, check=True, capture_output=True, text=True)
        t0, check = time.monotonic(), None
        while time.monotonic() - t0 < 60:
            check = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True)
            if check.returncode == 0:
                break
            time.sleep(0.5)
        made = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.stat().st_uid == 10001)
        print(
            f"as uid 10001 with docker/gateway.toml: healthcheck exit {check.returncode if check else '-'} "
            f"after {time.monotonic() - t0:.1f} s; written by the container user: {', '.join(made[:6])} ..."
        )
        return check is not None and check.returncode == 0 and "var/gateway.db" in made
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "10", name], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    """Start the sandbox, the container, paste the flow; 0 when every line did what it says."""
    if not as_container_user():
        return 1
    ports = [free_port() for _ in range(3)]
    demo = Demo(DemoOptions(ssh_port=ports[0], pg_port=ports[1], http_port=ports[2]), print)
    name = f"gateway-smoke-{ports[2]}"
    try:
        demo.make_dir()
        demo.start_sandbox()
        path = demo.write_config()
        config = demo.load(path)
        mounts = ["-v", f"{demo.dir}:{demo.dir}"]
        if demo.sshd is not None and demo.sshd.base_dir is not None:
            mounts += ["-v", f"{demo.sshd.base_dir}:{demo.sshd.base_dir}:ro"]
        # --user 0: the demo's secrets are root's (0600); a real deployment chowns /data to the image's uid 10001.
        env = ["-e", f"GATEWAY_CONFIG={path}"]  # for `gateway run` and the image's `gateway health` check
        cmd = [*PODMAN_RUN, "-d", "--name", name, "--network", "host", "--user", "0", *env, *mounts, IMAGE]
        subprocess.run([*cmd, "run"], check=True, capture_output=True, text=True)
        t0 = time.monotonic()
        while not healthy(ports[2]):
            if time.monotonic() - t0 > 60:
                print(subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr)
                return 1
            time.sleep(0.2)
        print(f"container up and /healthz answering after {time.monotonic() - t0:.1f} s")
        check = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True)
        print(f"podman healthcheck run: exit {check.returncode} {check.stdout.strip() or check.stderr.strip()}")
        demo.write_known_hosts(config.ssh_host_key.with_name(config.ssh_host_key.name + ".pub"))
        lines = [x for x in demo.flow_lines(config) if x and not x.startswith("#")]
        script = "".join(f'{line}\necho "@@ $?"\n' for line in lines)
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
        codes = [int(c.split()[0]) for c in done.stdout.split("@@ ")[1:]]
        bad = [
            (line, code)
            for line, code in zip(lines, codes, strict=True)
            if (code != 0) != any(line.endswith(x + "'") or x in line for x in EXPECT_FAIL)
        ]
        for line, code in zip(lines, codes, strict=True):
            print(f"[{code}] {line[:110]}")
        t0 = time.monotonic()
        stop = subprocess.run(["podman", "stop", "-t", "20", name], capture_output=True, text=True)
        took = time.monotonic() - t0
        state = subprocess.run(["podman", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True)
        print(f"podman stop: {took:.1f} s, exit code {state.stdout.strip()} ({stop.stderr.strip() or 'ok'})")
        if bad:
            print(f"lines that did not do what the demo says: {bad}\n{done.stderr[-3000:]}")
            return 1
        return 0 if state.stdout.strip() == "0" else 1
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        demo.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
