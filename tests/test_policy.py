"""The robot policy as the playbook runs it: step 4's and step 7's commands as written on real TFRecords (gs:// on the
GCS emulator, 8 simulated devices, two processes as two hosts), SIGKILL and resume, and their failures."""
import json, os, shutil, signal, subprocess, time

import numpy as np

from conftest import DATA_URI, OUT_URI, PY, SMALL, TPU_TRAIN, run, wipe

SANITY = [PY, "-m", "continuonbrain.jax_models.train.local_sanity_check"]


def test_the_sanity_check_command_as_written(tmp_path, mock_tfrecords):
    tfr = mock_tfrecords
    r = run([*SANITY, "--rlds-dir", str(tfr), "--obs-dim", "128", "--action-dim", "32", "--max-steps", "10", "--batch-size", "4"],
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" loss ") >= 10 and "step    10/10" in r.stdout and "(tfrecord data)" in r.stdout
    m = json.loads((tmp_path/"outputs/sanity_check/metrics.json").read_text())
    assert m["data"] == "tfrecord" and m["rlds_dir"] == str(tfr) and len(m["losses"]) == 10 and m["learned"]
    assert m["final_loss"] < m["first_loss"] and m["episodes"]["train"] == 2
    assert (tmp_path/"outputs/sanity_check/loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_sanity_check_refuses_what_it_cannot_learn_from(tmp_path, mock_tfrecords):
    r = run([*SANITY, "--rlds-dir", str(tmp_path/"nothing"), "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "nothing: no such folder" in r.stderr and "Traceback" not in r.stderr
    r = run([*SANITY, "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "no --rlds-dir given" in r.stderr
    tfr = tmp_path/"tfrecord"; shutil.copytree(mock_tfrecords, tfr)       # a copy: one of its shards is cut below
    r = run([*SANITY, "--rlds-dir", str(tfr), "--action-dim", "16", "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and "the data has action_dim 32, but 16 was asked for" in r.stderr
    shard = next(tfr.glob("train-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[:300])
    r = run([*SANITY, "--rlds-dir", str(tfr), "--out", str(tmp_path/"o")])
    assert r.returncode == 2 and f"{shard}: unreadable TFRecord shard" in r.stderr
    assert not (tmp_path/"o/metrics.json").exists()                        # no report of a run that did not happen
    r = run([*SANITY, "--synthetic", "--obs-dim", "16", "--action-dim", "4", "--max-steps", "20", "--out", str(tmp_path/"s")])
    assert r.returncode == 0 and "(synthetic data)" in r.stdout
    assert json.loads((tmp_path/"s/metrics.json").read_text())["data"] == "synthetic"


# ---- step 7: sharded training (tpu_train) on 8 simulated devices, against the GCS emulator ----

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
# The playbook's command with its flags as written; a smaller preset and fewer steps (SMALL) so it runs in seconds on 2 cores.
AS_WRITTEN = ["--data-path", DATA_URI, "--output-dir", OUT_URI, "--batch-size", "256", "--num-steps", "10000", "--learning-rate", "1e-4"]


def _metrics(uri):
    from continuonbrain import store
    return store.read_json(store.join(uri, "metrics.json"))


def test_tpu_train_as_written_on_8_devices_with_gs_data_and_checkpoints(uploaded, tmp_path):
    wipe(OUT_URI)
    r = run([*TPU_TRAIN, *AS_WRITTEN, *SMALL, "--staging-dir", str(tmp_path/"stage")], env=EIGHT, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 8 device(s)" in r.stdout and "ok: step 24 (num_steps)" in r.stdout
    m = _metrics(OUT_URI)
    assert (m["devices"], m["hosts"], m["step"], len(m["losses"])) == (8, 1, 24, 24)
    assert m["final_loss"] < 0.5 * m["first_loss"] and m["evals"][-1]["heldout_error"] < m["evals"][-1]["mean_action_error"]
    from continuonbrain import store
    objs = store.ls(OUT_URI)
    assert {f"{OUT_URI}/checkpoints/{s}/MIRRORED.json" for s in (8, 16, 24)} <= set(objs) and f"{OUT_URI}/loss.png" in objs
    # one device, the same batches: the same losses within float tolerance
    r = run([*TPU_TRAIN, *AS_WRITTEN[:2], "--output-dir", str(tmp_path/"one"), *AS_WRITTEN[4:], *SMALL, "--devices", "1",
             "--staging-dir", str(tmp_path/"stage")], env=EIGHT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    one = _metrics(tmp_path/"one")
    assert one["devices"] == 1 and np.allclose(one["losses"], m["losses"], rtol=1e-5, atol=1e-6), (one["losses"], m["losses"])
    # parameters split over the 8 devices (FSDP) train to the same numbers
    r = run([*TPU_TRAIN, *AS_WRITTEN[:2], "--output-dir", str(tmp_path/"fsdp"), *AS_WRITTEN[4:], *SMALL, "--shard-params",
             "--staging-dir", str(tmp_path/"stage")], env=EIGHT, cwd=tmp_path)
    assert r.returncode == 0 and "sharded" in r.stdout, r.stderr
    assert np.allclose(_metrics(tmp_path/"fsdp")["losses"], m["losses"], rtol=1e-5, atol=1e-6)


def test_tpu_train_killed_with_sigkill_resumes_from_the_bucket_to_the_same_parameters(uploaded, tmp_path):
    from continuonbrain import store
    out = "gs://continuon-rlds/checkpoints/killed"
    wipe(out)
    args = [*TPU_TRAIN, "--data-path", DATA_URI, "--output-dir", out, "--batch-size", "64", *SMALL, "--num-steps", "48"]
    ref = run([*args[:6], str(tmp_path/"ref"), *args[7:], "--staging-dir", str(tmp_path/"s0")], env=EIGHT, cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    p = subprocess.Popen([*args, "--staging-dir", str(tmp_path/"s1")], cwd=tmp_path, env={**os.environ, **EIGHT},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = f"{out}/checkpoints/16/MIRRORED.json"
    t0 = time.monotonic()
    while not store.exists(marker):
        assert p.poll() is None and time.monotonic() - t0 < 240, "the run ended (or stalled) before its second checkpoint"
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not store.exists(f"{out}/metrics.json")                          # it never finished
    r = run([*args, "--staging-dir", str(tmp_path/"s2")], env=EIGHT, cwd=tmp_path)   # a fresh machine: nothing staged
    assert r.returncode == 0, r.stdout + r.stderr
    m = _metrics(out)
    assert m["resumed_at"] and m["resumed_at"][0] >= 16 and m["step"] == 48
    assert m["params_sha256"] == _metrics(tmp_path/"ref")["params_sha256"]
    assert m["losses"] == _metrics(tmp_path/"ref")["losses"]


def test_tpu_train_as_two_hosts_of_four_devices(uploaded, tmp_path):
    "The multi-host path: two processes joined by jax.distributed (gloo on CPU), each reading half the episodes."
    from continuonbrain.store import free_port
    def both(out, *extra):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
               "JAX_NUM_PROCESSES": "2"}
        argv = [*TPU_TRAIN, "--data-path", str(uploaded), "--output-dir", str(out), "--batch-size", "16", *SMALL, *extra]
        ps = [subprocess.Popen(argv, cwd=tmp_path, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for i in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in ps]
        assert [p.returncode for p in ps] == [0, 0], outs
        return outs[0]
    log = both(tmp_path/"full")
    assert "on 8 device(s) on 2 hosts" in log and "host 0 of 2" in log
    m = _metrics(tmp_path/"full")
    assert (m["hosts"], m["devices"], m["step"]) == (2, 8, 24) and m["final_loss"] < 0.5 * m["first_loss"]
    assert m["train_windows_this_host"] == 16                               # 4 of the 7 training episodes, 4 windows each
    both(tmp_path/"resumed", "--stop-at", "16")
    both(tmp_path/"resumed")
    r = _metrics(tmp_path/"resumed")
    assert r["resumed_at"] == [16] and r["params_sha256"] == m["params_sha256"]


def test_tpu_train_refuses_what_it_cannot_use(uploaded, tmp_path):
    r = run([*TPU_TRAIN, "--data-path", "gs://no-such-bucket/rlds", "--output-dir", str(tmp_path/"o")])
    assert r.returncode == 2 and "gs://no-such-bucket: no such bucket" in r.stderr and "Traceback" not in r.stderr
    r = run([*TPU_TRAIN, "--data-path", "gs://continuon-rlds/nothing-here", "--output-dir", str(tmp_path/"o")])
    assert r.returncode == 2 and "gs://continuon-rlds/nothing-here: no objects under this prefix" in r.stderr
    r = run([*TPU_TRAIN, "--data-path", str(uploaded), "--output-dir", str(tmp_path/"o"), "--obs-dim", "64"])
    assert r.returncode == 2 and "the data has obs_dim 128, but 64 was asked for" in r.stderr
    r = run([*TPU_TRAIN, "--data-path", str(uploaded), "--output-dir", str(tmp_path/"o"), "--batch-size", "12"], env=EIGHT)
    assert r.returncode == 2 and "--batch-size 12: must be a multiple of the 8 devices" in r.stderr
    r = run([*TPU_TRAIN, "--output-dir", str(tmp_path/"o")])
    assert r.returncode == 2 and "--data-path and --output-dir are required" in r.stderr


def test_evaluate_reads_the_run_from_the_bucket_and_gates_on_the_baselines(uploaded, tmp_path):
    """Step 7's checkpoints in the emulator's bucket, scored by the evaluation command as written: the report lands in the
    bucket, and an undertrained run fails the gate (exit 4). That a trained policy beats both baselines is measured,
    and asserted, in nbs/14_policy_eval.ipynb (40 simulated-arm episodes, 400 steps): one place, not two."""
    from continuonbrain import store
    out = "gs://continuon-rlds/checkpoints/evaluated"
    wipe(out)
    r = run([*TPU_TRAIN, "--data-path", DATA_URI, "--output-dir", out, "--batch-size", "16", *SMALL, "--num-steps", "2",
             "--checkpoint-every", "2", "--eval-every", "2", "--staging-dir", str(tmp_path/"s")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ev = [PY, "-m", "continuonbrain.jax_models.evaluate", "--train-dir", out]
    (tmp_path/"tmp").mkdir()
    r = run(ev, cwd=tmp_path, env={"TMPDIR": str(tmp_path/"tmp")})
    assert r.returncode == 4 and "the policy does not beat the" in r.stderr, r.stdout + r.stderr   # two steps learn nothing
    assert not list((tmp_path/"tmp").glob("continuon-*"))                  # the staged checkpoint and data were removed
    assert "held-out action error" in r.stdout and "ridge's" in r.stdout and "mean action's" in r.stdout
    m = store.read_json(f"{out}/eval/policy_eval.json")                    # the report is written either way, in the bucket
    assert not m["beats_baselines"] and m["step"] == 2 and m["data_path"] == DATA_URI and m["episodes"] == 1
    assert m["action_dims"][-1] == "gripper" and len(m["methods"]["policy"]["rmse"]) == 6
    assert store.read_bytes(f"{out}/eval/policy_eval.png")[:4] == b"\x89PNG"
    r = run([*ev, "--allow-worse", "--out", str(tmp_path/"rep")], cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path/"rep/policy_eval.json").is_file(), r.stderr
    r = run([*ev[:-1], str(tmp_path/"none")])
    assert r.returncode == 3 and "none/checkpoints: no such folder" in r.stderr


# ---- the LoRA trainer with budgets ----

LORA = [PY, "-m", "continuonbrain.trainer.local_lora_trainer"]


def test_the_lora_command_as_written_trains_saves_and_promotes_a_real_adapter(tmp_path):
    home = tmp_path/"home"
    r = run([*LORA, "--config", "continuonbrain/configs/pi5-donkey.json", "--use-stub-hooks"], env={"CONTINUON_HOME": str(home)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hooks: stub" in r.stdout and "promoted:" in r.stdout and "stub stand-in" in r.stdout
    active = home/"adapters/active"
    assert active.is_symlink() and (active/"adapter.json").is_file() and (active/"lora").is_dir()
    rep = json.loads((active/"adapter.json").read_text())
    assert rep["promoted"] and rep["heldout"]["improvement"] > 0.5 and rep["safety"]["ok"] and rep["stopped_by"] == "max_steps"
    from continuonbrain.trainer.local_lora_trainer import load_adapter
    lora, meta = load_adapter(active)
    assert sorted(lora) == rep["lora"]["targets"] and all(v["a"].shape[1] == 8 for v in lora.values())
    # on a machine without the robot's data and base model, and without stand-ins: a clear refusal
    r = run([*LORA, "--config", "continuonbrain/configs/pi5-donkey.json"], env={"CONTINUON_HOME": str(tmp_path/"robot")})
    assert r.returncode == 3 and "checkpoints/core_model_v0: no such folder" in r.stderr and "Traceback" not in r.stderr
    r = run([*LORA, "--config", str(tmp_path/"nope.json"), "--use-stub-hooks"])
    assert r.returncode == 2 and "nope.json: no such file" in r.stderr
