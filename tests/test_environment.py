"""environment.yml (conda/mamba) and pyproject.toml must install the same packages."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("book", "test")
# Conda packages whose pip name differs.
CONDA_TO_PIP = {"pytorch": "torch"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(lines: list[str]) -> dict[str, SpecifierSet]:
    """Map canonical name (lowercase, '-', '_' and '.' alike) -> version specifier."""
    out: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice"
        out[name] = req.specifier
    return out


def _pyproject_requirements() -> dict[str, SpecifierSet]:
    project = _pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return _requirements(lines)


def _environment() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of environment.yml."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda, pip = [], []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip += item.get("pip", [])
        else:
            conda.append(str(item))
    return conda, pip


def _environment_requirements() -> dict[str, SpecifierSet]:
    conda, pip = _environment()
    # The editable install of this repository is not a package name.
    lines = [line for line in pip if not line.startswith(("-e", "--editable", "."))]
    for item in conda:
        name = re.split(r"[=<>!\s]", item, maxsplit=1)[0]
        if name not in {"python", "pip"}:
            lines.append(CONDA_TO_PIP.get(name, name))
    return _requirements(lines)


def test_same_package_names() -> None:
    project = set(_pyproject_requirements())
    environment = set(_environment_requirements())
    assert project == environment, (
        f"only in pyproject.toml: {sorted(project - environment)}; "
        f"only in environment.yml: {sorted(environment - project)}"
    )


def test_same_version_constraints() -> None:
    project, environment = _pyproject_requirements(), _environment_requirements()
    differ = {
        name: (str(project[name]), str(environment[name]))
        for name in project.keys() & environment.keys()
        if environment[name] and project[name] != environment[name]
    }
    assert not differ, f"(pyproject, environment.yml) constraints differ: {differ}"


def test_environment_python_satisfies_requires_python() -> None:
    conda, _ = _environment()
    pythons = [item for item in conda if re.match(r"python\b", item)]
    assert len(pythons) == 1, "environment.yml must pin one python"
    version = pythons[0].split("=")[-1]
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(version + ".0")
    assert "pip" in conda


def test_makefile_torch_pin_satisfies_pyproject() -> None:
    """make installs a pinned torch first (CPU wheel); pyproject's range must accept it."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)", makefile, flags=re.M)
    assert match, "Makefile must define TORCH_VERSION"
    torch = _pyproject_requirements()["torch"]
    assert torch.contains(Version(match.group(1))), (match.group(1), str(torch))


#: Fixtures that one worker builds for the whole session: they must stay in one xdist scope.
SHARED_FIXTURES = {"built_book": "book", "installed": "wheel"}


def test_make_test_keeps_each_shared_fixture_in_one_worker() -> None:
    """``make test`` runs two xdist workers with conftest's scopes (``--dist loadscope``); a
    test file that uses the smoke book or the installed wheel is in that fixture's scope (else a
    second worker builds it again, and two wheel builds race in the checkout), and a notebook's
    cells stay together in the book's scope (one kernel; nbval reuses the book's runs)."""
    import ast

    from conftest import xdist_scope

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    xdist = re.search(r"^XDIST\s*\?=\s*(.+)$", makefile, flags=re.M)
    assert xdist and "--dist loadscope" in xdist.group(1), "make test: -n 2 --dist loadscope"
    assert "$(XDIST)" in makefile
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = {
            arg.arg
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            for arg in node.args.args
        }
        nodeid = f"tests/{path.name}::test_x[a]"
        for fixture in sorted(used & SHARED_FIXTURES.keys()):
            assert xdist_scope(nodeid) == SHARED_FIXTURES[fixture], (path.name, fixture)
    assert xdist_scope("notebooks/05_training.ipynb::Cell 3") == "book"
    assert xdist_scope("tests/test_sampling.py::test_x[a::b]") == "tests/test_sampling.py"
