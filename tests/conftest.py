"""Shared fixtures: the project root, a command runner, a real GCS emulator, fixture machines."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(sys.executable).parent
RECORDER = [PY, "-m", "continuonbrain.recording.arm_episode_recorder"]
CONVERTER = [PY, "-m", "continuonbrain.jax_models.data.tfrecord_converter"]
TPU_TRAIN = [PY, "-m", "continuonbrain.jax_models.train.cloud.tpu_train"]
# The playbook's bucket paths for step 6's data and step 7's checkpoints.
DATA_URI, OUT_URI = "gs://continuon-rlds/rlds/episodes", "gs://continuon-rlds/checkpoints/core_model_v0"
# tpu_train's flags that make a run small enough for tests: a small preset and 24 steps, checkpointed every 8.
SMALL = ["--preset", "development", "--window", "32", "--num-steps", "24", "--checkpoint-every", "8", "--eval-every", "8",
         "--log-every", "8", "--learning-rate", "3e-3"]


def run(argv, cwd=ROOT, timeout=300, env=None, **kw) -> subprocess.CompletedProcess:
    "Run a real process the way a user would, capturing its output."
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def wipe(uri):
    "Delete every object under a gs:// prefix (or file under a folder), if there are any."
    from continuonbrain import store
    try:
        for u in store.ls(uri): store.delete(u)
    except store.ArtefactNotFound: pass


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
    rec = run([*RECORDER, "--output-dir", str(eps), "--backend", "mock", "--steps", "60"])
    assert rec.returncode == 0, rec.stderr
    conv = run([*CONVERTER, "--input-dir", str(eps), "--output-dir", str(tfr), "--compress", "--no-rlds"])
    assert conv.returncode == 0, conv.stderr
    return tfr


@pytest.fixture(scope="session")
def uploaded(gcs, tmp_path_factory):
    "Eight mock-arm episodes of 100 steps, converted, and uploaded to the emulator's bucket (DATA_URI) with step 6's command, once per session."
    root = tmp_path_factory.mktemp("policy")
    eps, tfr = root/"episodes", root/"tfrecord"
    assert run([*RECORDER, "--output-dir", str(eps), "--backend", "mock", "--episodes", "8", "--steps", "100"]).returncode == 0
    assert run([*CONVERTER, "--input-dir", str(eps), "--output-dir", str(tfr), "--compress", "--no-rlds"]).returncode == 0
    r = run([PY, "-m", "continuonbrain.jax_models.utils.upload_to_gcs", "--local-dir", str(tfr), "--gcs-bucket", "continuon-rlds",
             "--gcs-prefix", "rlds/episodes", "--quiet"])
    assert r.returncode == 0, r.stderr
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


# ---- steps 7 to 8b once per worker session (test_export and test_ota build on them) ----

EXPORT_JAX = [PY, "-m", "continuonbrain.jax_models.export.export_jax"]
AS_WRITTEN = ["--checkpoint-path", OUT_URI, "--output-path", "./models/core_model_inference", "--quantization", "fp16"]
PLAYBOOK_ENV = {"PYTHONPATH": str(ROOT)}            # the playbook runs its commands with PYTHONPATH=$PWD at the repo root


@pytest.fixture(scope="session")
def trained(uploaded, tmp_path_factory):
    "Step 7's command (small) with its checkpoints in the playbook's bucket path."
    wipe(OUT_URI)
    tmp = tmp_path_factory.mktemp("trained")
    r = run([*TPU_TRAIN, "--data-path", DATA_URI, "--output-dir", OUT_URI, "--batch-size", "16", *SMALL, "--staging-dir", str(tmp/"s")], cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return OUT_URI


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    "Step 8a's command as written, run once at a repo-like folder: (the folder, what it printed, the continuon-* folders it left in its TMPDIR)."
    cwd, tmp = tmp_path_factory.mktemp("robot"), tmp_path_factory.mktemp("export-tmp")
    r = run([*EXPORT_JAX, *AS_WRITTEN], cwd=cwd, env={**PLAYBOOK_ENV, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, r.stdout, {p.name for p in tmp.glob("continuon-*")}


EXPORT_HAILO = [PY, "-m", "continuonbrain.jax_models.export.export_hailo"]


@pytest.fixture(scope="session")
def hailo(exported):
    "Step 8b's command as written, run where step 8a's left its bundle: (the folder, what it printed)."
    cwd = exported[0]
    r = run([*EXPORT_HAILO, "--checkpoint-path", "./models/core_model_inference", "--output-dir", "./models/core_model_hailo"],
            cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, r.stdout


# `make pytest` runs `-n 2 --dist loadfile`: each module runs whole in one worker, so a module's session fixtures are
# built once in it; test_export and test_ota may land in different workers and then each builds steps 7 to 8b.
