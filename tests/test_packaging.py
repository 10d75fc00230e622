"""Packaging and the dependency rule of DESIGN.md §2."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_PACKAGES = {
    "client": "streamvault.client",
    "dataplane": "streamvault.dataplane",
    "controlplane": "streamvault.controlplane",
    "lts": "streamvault.lts",
    "tools": "streamvault.tools",
}
ALLOWED = {
    "client": {"client"},
    "lts": {"lts", "client.protocol"},
    "dataplane": {"dataplane", "client.protocol", "lts"},
    "controlplane": {"controlplane", "client", "lts"},
    "tools": {"tools", "client", "dataplane", "controlplane", "lts"},
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_dirs() -> dict[str, Path]:
    """Every folder holding an __init__.py, as its installed package name."""
    found = {"streamvault": ROOT}
    for top, name in TOP_PACKAGES.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found[".".join([name, *rel])] = init.parent
    return found


def test_every_package_folder_is_listed_in_pyproject():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    assert set(_package_dirs()) == listed
    for name, path in _package_dirs().items():
        assert (ROOT / tool["package-dir"][name]).resolve() == path.resolve(), name


def test_every_module_imports_from_the_installed_package():
    for name, path in _package_dirs().items():
        importlib.import_module(name)
        for module in path.glob("*.py"):
            if module.stem != "__init__" and name != "streamvault":
                importlib.import_module(f"{name}.{module.stem}")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {
        n
        for n in out
        if n == "streamvault"
        or n.startswith("streamvault.")
        or n.split(".")[0] in ("tests", "perf")
    }


def test_dependency_rule_holds():
    problems = []
    for top, allowed in ALLOWED.items():
        for path in (ROOT / top).rglob("*.py"):
            for name in _imports(path):
                if name.split(".")[0] in ("tests", "perf"):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
                    continue
                inner = name.removeprefix("streamvault").lstrip(".")
                if not inner:
                    problems.append(f"{path.relative_to(ROOT)} imports the root package")
                    continue
                if not any(inner == a or inner.startswith(a + ".") for a in allowed):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "\n".join(problems)


def test_console_script_and_extras_exist():
    project = _pyproject()["project"]
    assert project["scripts"]["streamvault"] == "streamvault.tools.cli:main"
    assert {"test", "perf"} <= set(project["optional-dependencies"])


def test_the_package_version_is_pyprojects():
    import streamvault

    assert streamvault.__version__ == _pyproject()["project"]["version"]
