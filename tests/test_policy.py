"""The robot policy as the playbook runs it: step 4's command as written on real TFRecords, and its failures."""
import json

from conftest import PY, run

RECORDER = [PY, "-m", "continuonbrain.recording.arm_episode_recorder"]
CONVERTER = [PY, "-m", "continuonbrain.jax_models.data.tfrecord_converter"]
SANITY = [PY, "-m", "continuonbrain.jax_models.train.local_sanity_check"]


def _tfrecords(tmp_path):
    eps, tfr = tmp_path/"rlds/episodes", tmp_path/"rlds/tfrecord"
    assert run([*RECORDER, "--output-dir", str(eps), "--backend", "mock", "--steps", "60"]).returncode == 0
    assert run([*CONVERTER, "--input-dir", str(eps), "--output-dir", str(tfr), "--compress", "--no-rlds"]).returncode == 0
    return tfr


def test_the_sanity_check_command_as_written(tmp_path):
    tfr = _tfrecords(tmp_path)
    r = run([*SANITY, "--rlds-dir", str(tfr), "--obs-dim", "128", "--action-dim", "32", "--max-steps", "10", "--batch-size", "4"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" loss ") >= 10 and "step    10/10" in r.stdout and "(tfrecord data)" in r.stdout
    m = json.loads((tmp_path/"outputs/sanity_check/metrics.json").read_text())
    assert m["data"] == "tfrecord" and m["rlds_dir"] == str(tfr) and len(m["losses"]) == 10 and m["learned"]
    assert m["final_loss"] < m["first_loss"] and m["episodes"]["train"] == 2
    assert (tmp_path/"outputs/sanity_check/loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_sanity_check_refuses_what_it_cannot_learn_from(tmp_path):
    r = run([*SANITY, "--rlds-dir", str(tmp_path/"nothing"), "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "nothing: no such folder" in r.stderr and "Traceback" not in r.stderr
    r = run([*SANITY, "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "no --rlds-dir given" in r.stderr
    tfr = _tfrecords(tmp_path)
    r = run([*SANITY, "--rlds-dir", str(tfr), "--action-dim", "16", "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "the data has action_dim 32, but 16 was asked for" in r.stderr
    shard = next(tfr.glob("train-*.tfrecord.gz"))
    shard.write_bytes(shard.read_bytes()[:300])
    r = run([*SANITY, "--rlds-dir", str(tfr), "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and f"{shard}: unreadable TFRecord shard" in r.stderr
    assert not (tmp_path/"o/metrics.json").exists()                        # no report of a run that did not happen
    r = run([*SANITY, "--synthetic", "--obs-dim", "16", "--action-dim", "4", "--max-steps", "20", "--out", str(tmp_path/"s")])
    assert r.returncode == 0 and "(synthetic data)" in r.stdout
    assert json.loads((tmp_path/"s/metrics.json").read_text())["data"] == "synthetic"
