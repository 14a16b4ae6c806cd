"""The data path as a user runs it: every playbook command of steps 2, 3, 5 and 6 as written, crash recovery
after a real SIGKILL, and bad input at the command line."""
import json, os, random, shutil, signal, subprocess, time

import pytest

from conftest import PY, ROOT, run

RECORDER = [PY, "-m", "continuonbrain.recording.arm_episode_recorder"]
CONVERTER = [PY, "-m", "continuonbrain.jax_models.data.tfrecord_converter"]
UPLOAD = [PY, "-m", "continuonbrain.jax_models.utils.upload_to_gcs"]
VALIDATE = [PY, "scripts/validate_rlds_episodes.py"]


def test_schema_file_matches_the_definition():
    from continuonbrain.rlds.schema import SCHEMA_FILE, schema_text
    assert SCHEMA_FILE.read_text() == schema_text(), "run: python -m continuonbrain.rlds.schema --write"


def test_shipped_sample_episodes_validate_as_the_playbook_says():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT/"continuonbrain/rlds/episodes").glob("*.json"))
    assert len(files) == 3
    r = run([*VALIDATE, *files])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 file(s): 3 valid, 0 invalid or unreadable" in r.stdout


def test_the_playbook_commands_as_written(tmp_path, gcs):
    "Record, validate, convert, bundle and upload with the commands of the README, paths swapped for temporary ones."
    eps, tfr = tmp_path/"brain/rlds/episodes", tmp_path/"brain/rlds/tfrecord"
    r = run([*RECORDER, "--output-dir", str(eps)])
    assert r.returncode == 0, r.stderr
    files = sorted(eps.glob("*.json"))
    assert len(files) == 3 and "recorded 3 episode(s), 300 steps" in r.stdout
    r = run([*VALIDATE, *map(str, files)])
    assert r.returncode == 0, r.stdout
    r = run([*CONVERTER, "--input-dir", str(eps), "--output-dir", str(tfr), "--compress"])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tfr.glob("*.tfrecord")) == ["train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]   # the playbook's glob
    info = json.loads((tfr/"dataset_info.json").read_text())
    assert info["compression"] == "GZIP" and (tfr/"train-00000-of-00001.tfrecord").read_bytes()[:2] == b"\x1f\x8b"
    assert info["splits"]["train"]["steps"] + info["splits"]["val"]["steps"] == 300
    script = ("from pathlib import Path\n"
              "from continuonbrain.rlds.export_pipeline import prepare_cloud_export\n"
              f"bundle = prepare_cloud_export(episodes=list(Path({str(eps)!r}).glob('*.json')), output_dir=Path('./export-bundle'))\n"
              "print(bundle.to_json())\n")
    r = run([PY, "-"], input=script, cwd=tmp_path, env={"CONTINUON_HOME": str(tmp_path/"home"), "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episodes"] == 3
    assert (tmp_path/"export-bundle/manifest.json").is_file()
    assert oct((tmp_path/"home/secrets/export_hmac.key").stat().st_mode & 0o777) == "0o600"
    key = (tmp_path/"home/secrets/export_hmac.key").read_bytes()
    bundle_bytes = b"".join(p.read_bytes() for p in (tmp_path/"export-bundle").rglob("*") if p.is_file())
    assert key not in bundle_bytes and key.hex().encode() not in bundle_bytes
    r = run([*UPLOAD, "--local-dir", str(tfr), "--gcs-bucket", "continuon-rlds", "--gcs-prefix", "rlds/episodes"])
    assert r.returncode == 0, r.stderr
    n = len([p for p in tfr.rglob("*") if p.is_file()])
    assert f"upload: {n} file(s) sent" in r.stdout
    r = run([*UPLOAD, "--download", "--local-dir", str(tmp_path/"back"), "--gcs-bucket", "continuon-rlds", "--gcs-prefix", "rlds/episodes"])
    assert r.returncode == 0, r.stderr
    assert (tmp_path/"back/train-00000-of-00001.tfrecord").read_bytes() == (tfr/"train-00000-of-00001.tfrecord").read_bytes()


def test_a_recording_without_a_glove_carries_glove_placeholders(tmp_path):
    "The playbook's checklist: recorded without a glove, every step has a glove placeholder (valid false) and nothing declares a glove."
    out = tmp_path/"eps"
    r = run([*RECORDER, "--output-dir", str(out), "--backend", "mock", "--steps", "20"])
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("*.json"))
    assert len(files) == 3
    ep = json.loads(files[0].read_text())
    assert "glove" not in ep["metadata"]["capabilities"]
    gloves = [s["observation"]["glove"] for s in ep["steps"]]
    assert len(gloves) == 20 and all(g["valid"] is False for g in gloves)
    assert all(g["timestamp_ns"] == s["timestamp_ns"] for g, s in zip(gloves, ep["steps"]))
    assert {(len(g["flex"]), len(g["fsr"]), tuple(g["orientation_quat"]), len(g["accel"])) for g in gloves} == {(5, 8, (1.0, 0.0, 0.0, 0.0), 3)}
    r = run([*VALIDATE, *map(str, files)])
    assert r.returncode == 0, r.stdout
    assert "glove" not in r.stdout and r.stdout.count("no problems") == 3     # no glove warning
    ep["steps"][7]["observation"]["glove"]["valid"] = True                 # a placeholder claiming to be data
    tampered = out/"tampered.json"
    tampered.write_text(json.dumps(ep))
    r = run([*VALIDATE, str(tampered)])
    assert r.returncode == 1, r.stdout
    assert "1 error(s), 0 warning(s)" in r.stdout
    assert "error: step 7: steps[7].observation.glove.valid: true, but metadata.capabilities has no glove" in r.stdout


def _lines(path):
    try: return path.read_bytes().count(b"\n")
    except FileNotFoundError: return 0


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_during_capture_loses_at_most_the_step_in_flight(tmp_path, seed):
    "Kill the recorder with SIGKILL at a random moment mid-episode; the next run recovers a valid, truncated episode."
    out = tmp_path/"episodes"
    partial = out/f"sim-s{seed}-e0000.partial.jsonl"
    p = subprocess.Popen([*RECORDER, "--output-dir", str(out), "--episodes", "1", "--steps", "5000", "--hz", "100",
                          "--realtime", "--seed", str(seed), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _lines(partial) < 20 and time.monotonic() < deadline: time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        written = _lines(partial)      # complete lines before the kill: metadata + steps
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == -signal.SIGKILL
    assert written >= 20 and partial.exists() and not (out/f"sim-s{seed}-e0000.json").exists()
    complete = _lines(partial) - 1     # step lines fully written when the process died
    r = run([*RECORDER, "--recover", str(out)])
    assert r.returncode == 0, r.stderr
    assert "recovered 1 partial recording(s)" in r.stdout
    final = out/f"sim-s{seed}-e0000.json"
    ep = json.loads(final.read_text())
    assert len(ep["steps"]) >= complete >= written - 1     # nothing finished was lost
    assert ep["metadata"]["provenance"]["truncated"] and ep["metadata"]["provenance"]["recovered"]
    assert ep["steps"][-1]["is_last"] and not ep["steps"][-1]["is_terminal"]
    assert not partial.exists() and not list(out.rglob(".*.tmp"))
    n = len(ep["steps"])
    assert sorted(q.name for q in (out/f"sim-s{seed}-e0000/camera").iterdir()) == [f"{i:06d}.png" for i in range(n)]
    r = run([*VALIDATE, str(final)])
    assert r.returncode == 0, r.stdout


def test_a_new_recording_recovers_what_a_crash_left(tmp_path):
    out = tmp_path/"eps"
    p = subprocess.Popen([*RECORDER, "--output-dir", str(out), "--episodes", "1", "--steps", "5000", "--hz", "200",
                          "--realtime", "--backend", "mock", "--seed", "9", "--quiet"], cwd=ROOT)
    partial = out/"mock-s9-e0000.partial.jsonl"
    deadline = time.monotonic() + 60
    while _lines(partial) < 10 and time.monotonic() < deadline: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait(timeout=10)
    r = run([*RECORDER, "--output-dir", str(out), "--episodes", "1", "--steps", "5", "--backend", "mock", "--seed", "10", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "recovered mock-s9-e0000" in r.stderr
    assert sorted(p.name for p in out.glob("*.json")) == ["mock-s10-e0000.json", "mock-s9-e0000.json"]


def test_bad_input_at_the_command_line(tmp_path):
    (tmp_path/"empty").mkdir()
    r = run([*CONVERTER, "--input-dir", str(tmp_path/"empty"), "--output-dir", str(tmp_path/"out")])
    assert r.returncode == 2 and "no episode files (*.json) found" in r.stderr
    bad = tmp_path/"bad"; bad.mkdir()
    src = next((ROOT/"continuonbrain/rlds/episodes").glob("*.json"))
    shutil.copytree(src.with_suffix(""), bad/src.stem)                                  # its frames
    sample = json.loads(src.read_text())
    sample["steps"][2]["timestamp_ns"] = sample["steps"][1]["timestamp_ns"]          # a duplicated step
    del sample["steps"][3]["action"]["gripper"]                                        # a missing field
    (bad/"dup.json").write_text(json.dumps(sample))
    r = run([*CONVERTER, "--input-dir", str(bad), "--output-dir", str(tmp_path/"out"), "--no-rlds"])
    assert r.returncode == 2
    assert "steps[2].timestamp_ns" in r.stderr and "duplicated step" in r.stderr
    assert "steps[3].action.gripper: missing required field" in r.stderr
    assert not any((tmp_path/"out").iterdir())                                          # nothing half-written
    ro = tmp_path/"ro"; ro.mkdir(); ro.chmod(0o555)
    if os.geteuid() != 0:
        r = run([*RECORDER, "--output-dir", str(ro/"eps"), "--episodes", "1", "--steps", "2"])
        assert r.returncode == 2 and "cannot create the folder" in r.stderr
    r = run([*RECORDER, "--output-dir", str(tmp_path/"x"), "--backend", "real"])
    assert r.returncode == 3 and "missing: camera (picamera2)" in r.stderr
    r = run([*VALIDATE, str(bad/"dup.json"), "--json"])
    assert r.returncode == 1 and json.loads(r.stdout)["valid"] is False
    r = run([*UPLOAD, "--local-dir", str(tmp_path/"nope"), "--gcs-bucket", "continuon-rlds"])
    assert r.returncode == 2 and "no such folder" in r.stderr
