"""docs/openapi.yaml documents exactly the routes the server serves."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.control.conftest import Running

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        out = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for v in node.values():
            out |= _refs(v)
        return out
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


async def test_spec_matches_routes(gw: Running) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    assert spec["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    }
    from gateway.api.server import ApiServer
    from gateway.web.app import is_console_path  # the console's HTML pages are no API

    app = ApiServer(gw.services).make_app()
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None and not is_console_path(r.resource.canonical)
    }
    assert documented == served
    for ref in _refs(spec):
        node = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
