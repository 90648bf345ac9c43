"""A non-editable `pip install .` still finds the task YAMLs and the baselines (they live outside cachebench/)."""

from __future__ import annotations

import os
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
