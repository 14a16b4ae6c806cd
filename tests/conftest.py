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


@pytest.fixture(scope="session")
def mock_tfrecords(tmp_path_factory):
    "Three mock-arm episodes of 60 steps, recorded and converted (GZIP) with the playbook's commands, once per session: read, never change."
    root = tmp_path_factory.mktemp("mock_rlds")
    eps, tfr = root/"episodes", root/"tfrecord"
    rec = run([PY, "-m", "continuonbrain.recording.arm_episode_recorder", "--output-dir", str(eps), "--backend", "mock", "--steps", "60"])
    assert rec.returncode == 0, rec.stderr
    conv = run([PY, "-m", "continuonbrain.jax_models.data.tfrecord_converter", "--input-dir", str(eps), "--output-dir", str(tfr),
                "--compress", "--no-rlds"])
    assert conv.returncode == 0, conv.stderr
    return tfr


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
