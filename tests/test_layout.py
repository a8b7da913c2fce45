"""The packages by audience: each one's __init__ lists its modules, and dependencies flow
one way (common ← client, server ← deploy ← simulations ← fedrec.cli; client and server
never import each other; common imports neither)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedrec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # package -> its folder
    "fedrec.common": "common",
    "fedrec.common.data": "common/data",
    "fedrec.common.secagg": "common/secagg",
    "fedrec.client": "client",
    "fedrec.server": "server",
    "fedrec.deploy": "deploy",
    "fedrec.simulations": "simulations",
    "fedrec.simulations.audit": "simulations/audit",
}
# what each top-level package may import of fedrec (besides itself)
ALLOWED = {
    "common": {"common"},
    "client": {"common", "client"},
    "server": {"common", "server"},
    "deploy": {"common", "client", "server", "deploy"},
    "simulations": {"common", "client", "server", "simulations"},
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_lists_its_modules(package: str) -> None:
    folder = ROOT / PACKAGES[package]
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    listed = ast.literal_eval(
        next(
            node.value
            for node in ast.parse((folder / "__init__.py").read_text()).body
            if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"  # type: ignore[attr-defined]
        )
    )
    assert sorted(listed) == sorted(modules)
    docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
    assert all(name in docstring for name in modules), "the docstring names every module"


def _fedrec_imports(path: Path) -> set[str]:
    """The top-level fedrec packages a module imports (``fedrec.server.x`` -> ``server``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found |= {n.split(".")[1] for n in names if n.startswith("fedrec.") and n.count(".")}
    return found


@pytest.mark.parametrize("top", sorted(ALLOWED))
def test_dependencies_flow_one_way(top: str) -> None:
    """Every import, module-level or inside a function, counts."""
    wrong = {
        str(path.relative_to(ROOT)): sorted(_fedrec_imports(path) - ALLOWED[top])
        for path in (ROOT / top).rglob("*.py")
        if _fedrec_imports(path) - ALLOWED[top]
    }
    assert wrong == {}


def test_the_distribution_has_a_version() -> None:
    assert fedrec.__version__ and fedrec.__version__ != "0+unknown"
