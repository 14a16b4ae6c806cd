"""Shared fixtures: the project root, a command runner, a real GCS emulator, fixture machines."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(sys.executable).parent


def run(argv, cwd=ROOT, timeout=300, env=None, **kw) -> subprocess.CompletedProcess:
    "Run a real process the way a user would, capturing its output."
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope="session")
def gcs():
    "A GCS emulator on 127.0.0.1 (a separate process) with buckets continuon-rlds and continuon-test."
    from continuonbrain.store import gcs_emulator
    with gcs_emulator(buckets=("continuon-rlds", "continuon-test")) as url:
        yield url


@pytest.fixture
def machine(tmp_path):
    "Build a fixture tree: machine('pi5-throttled') -> its root."
    from continuonbrain.hardware import write_fixture_tree
    return lambda kind: write_fixture_tree(tmp_path/kind, kind)


@pytest.fixture
def scratch_project(tmp_path):
    "A minimal copy of the project (settings.ini, nbs/, params/) to run steps with custom profiles."
    proj = tmp_path/"proj"
    (proj/"nbs").mkdir(parents=True)
    shutil.copy(ROOT/"settings.ini", proj)
    for nb in (ROOT/"nbs").glob("*.ipynb"): shutil.copy(nb, proj/"nbs")
    shutil.copytree(ROOT/"params", proj/"params")
    return proj
