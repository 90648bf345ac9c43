"""tasks/ and baselines/ live outside cachebench/ but import as cachebench.tasks and cachebench.baselines: a
non-editable `pip install .` finds its installed copies, and a source checkout (editable or not, beside another
one) always finds the folders next to its own cachebench/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

from conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


def test_non_editable_install_finds_tasks_and_baselines(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO)],
                   check=True, timeout=600, capture_output=True)
    probe = (
        "import cachebench, pathlib;"
        f"assert pathlib.Path(cachebench.__file__).is_relative_to({str(target)!r}), cachebench.__file__;"
        "from cachebench.taskspec import all_tasks; from cachebench.registry import method_class;"
        "tasks = all_tasks(); assert len(tasks) >= 17, len(tasks);"
        "assert method_class('full').name == 'full';"
        "from cachebench.models.random_init import preset_names; assert 'llama-3.1-8b' in preset_names();"
        "import cachebench.tasks.builders.passkey"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_second_checkout_imports_its_own_tasks_and_baselines(tmp_path):
    """This venv's editable finder maps cachebench.baselines / cachebench.tasks to REPO; a copy of the checkout run
    from its own root must still get the folders beside its cachebench/, not REPO's."""
    clone = tmp_path / "clone"
    for folder in ("cachebench", "baselines", "tasks"):
        shutil.copytree(REPO / folder, clone / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    full = clone / "baselines" / "kv" / "full.py"
    full.write_text(full.read_text().replace('summary = "', 'summary = "CLONE ', 1))
    probe = (
        "import pathlib, cachebench, cachebench.baselines.kv.full, cachebench.tasks.builders.passkey;"
        "from importlib import resources; from cachebench.registry import method_class;"
        "root = pathlib.Path.cwd().resolve();"
        "files = [cachebench.__file__, cachebench.baselines.__file__, cachebench.baselines.kv.full.__file__,"
        " cachebench.tasks.__file__, cachebench.tasks.builders.passkey.__file__,"
        " str(resources.files('cachebench.tasks'))];"
        "outside = [f for f in files if not pathlib.Path(f).resolve().is_relative_to(root)];"
        "assert not outside, outside;"
        "assert method_class('full').summary.startswith('CLONE '), method_class('full').summary"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, cwd=clone, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
