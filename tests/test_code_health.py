"""Habits the repository keeps: a size budget (no module over 500 lines, no function over 60), no
dead code in the product packages (vulture, with the tests counting as users), packages that meet
only at public names, and a setup.py that ships every package.

The budget's standing exceptions are listed with the reason each still exceeds it; a new module
or function over the budget fails here, and so does an exception that no longer needs listing."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("psfops", "kernels", "sdpsfnet", "bench")
MODULE_LINES, FUNCTION_LINES = 500, 60
OVER_BUDGET: dict[str, str] = {}
# Names vulture cannot see being used: framework hooks and public API kept for users.
USED_ELSEWHERE = ("pytest_addoption", "pytest_generate_tests", "extra_repr", "A_adjoint", "__signature__",
                  "__wrapped__")


def _sizes():
    """(key, lines) of every module and function of the product packages."""
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            source = path.read_text()
            yield rel, source.count("\n"), MODULE_LINES
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{rel}:{node.name}", node.end_lineno - node.lineno + 1, FUNCTION_LINES


def test_size_budget():
    over = {key: lines for key, lines, limit in _sizes() if lines > limit}
    assert set(over) - set(OVER_BUDGET) == set(), f"over the size budget: {over}"
    assert set(OVER_BUDGET) - set(over) == set(), "within the budget now: drop from OVER_BUDGET"


@pytest.mark.skipif(shutil.which("vulture") is None and not (Path(sys.executable).parent / "vulture").exists(),
                    reason="vulture is not installed (pip install -e '.[dev]' installs it)")
def test_no_dead_code(tmp_path):
    whitelist = tmp_path / "used_elsewhere.py"
    whitelist.write_text("".join(f"{name}\n" for name in USED_ELSEWHERE))
    run = subprocess.run([sys.executable, "-m", "vulture", *PACKAGES, "tests", str(whitelist),
                          "--min-confidence", "60"], cwd=ROOT, capture_output=True, text=True)
    dead = [line for line in run.stdout.splitlines() if line.startswith(PACKAGES)]  # (tests: fixtures are used by name)
    assert not dead, "dead code (or add a name vulture cannot see to USED_ELSEWHERE):\n" + "\n".join(dead)


def test_documentation_links_resolve():
    """Every relative link of the README and docs/ names a file that exists."""
    import re
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def _imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a module of ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: inside the module's own package
                module = f"{package}.{module}" if module else package
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def test_packages_meet_only_at_public_names():
    """No product package imports another one's private modules or names (``_x``): each meets the
    others at their public seams (kernels/ is installed as psfops.kernels, its own package)."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module, names in _imported_modules(ast.parse(path.read_text()), package):
                parts = module.split(".")
                owner = "kernels" if parts[:2] == ["psfops", "kernels"] else parts[0]
                if owner not in PACKAGES or owner == package:
                    continue
                private = [p for p in parts[1:] + names if p.startswith("_") and not p.startswith("__")]
                if private:
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module} {names}")
    assert not offenders, "\n".join(offenders)


def test_every_package_ships(monkeypatch):
    """setup.py installs every package folder of psfops/ and sdpsfnet/ (and kernels/ as
    psfops.kernels): a folder it leaves out is missing from a wheel and from a non-editable install,
    while the editable installs of the README and CI still import it (psfops.cpu once was)."""
    import runpy

    import setuptools
    setup_args = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: setup_args.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    shipped = set(setup_args["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for pkg in ("psfops", "sdpsfnet")
               for p in (ROOT / pkg).rglob("__init__.py")}
    assert shipped == folders | {"psfops.kernels"}
