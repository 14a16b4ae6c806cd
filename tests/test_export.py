"""Step 8a as the playbook runs it: export_jax on step 7's checkpoint in the emulator's bucket, the bundle loaded where
the robot loads it (LiteRT alone for step.tflite), an export killed with SIGKILL over an existing bundle, and bad input."""
import json, os, shutil, signal, subprocess, time

import numpy as np

from conftest import AS_WRITTEN, DATA_URI, EXPORT_HAILO, EXPORT_JAX, OUT_URI, PLAYBOOK_ENV, PY, ROOT, run


def test_export_jax_as_written_from_the_bucket(exported):
    cwd, stdout, litter = exported
    assert "(fp16, " in stdout and f"from {OUT_URI} step 24" in stdout and stdout.count("(bound 0.05)") == 2
    assert litter == set()                                                  # the staged checkpoint and data were removed
    out = cwd/"models/core_model_inference"
    m = json.loads((out/"manifest.json").read_text())
    assert m["source"] == {"checkpoint_path": OUT_URI, "step": 24, "data_path": DATA_URI} and m["quantization"] == "fp16"
    assert len(m["git"]["commit"]) == 40 and m["tool"].startswith("continuonbrain ")
    assert sorted(f["path"] for f in m["files"]) == ["config.json", "example.npz", "export_report.json", "norm_stats.json",
                                                     "step.tflite", "weights.npz"]
    with np.load(out/"weights.npz") as z: assert z["head/kernel"].dtype == np.float16
    cfg = json.loads((out/"config.json").read_text())
    assert cfg["model"]["obs_dim"] == 128 and cfg["action_layout"]["gripper"] and cfg["quantization"] == "fp16"
    rep = json.loads((out/"export_report.json").read_text())
    assert rep["split"] == "val" and all(c["finite"] and c["max"] <= c["bound"] for c in rep["checks"].values())
    # the robot's CPU path: step.tflite and the example with LiteRT and numpy alone, no JAX and no continuonbrain
    code = f"""
import json, sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
d = {str(out)!r}
cfg, stats, ex = json.load(open(d + '/config.json')), json.load(open(d + '/norm_stats.json')), np.load(d + '/example.npz')
it = Interpreter(model_path=d + '/step.tflite'); it.allocate_tensors()
ins = {{x['name']: x['index'] for x in it.get_input_details()}}
outs = [x['index'] for x in sorted(it.get_output_details(), key=lambda x: 0 if x['name'] == 'Identity' else int(x['name'].split('_')[1]))]
state = [np.zeros(i['shape'], i['dtype']) for i in cfg['step_graph']['inputs'][2:]]
worst = 0.0
for o, f, a in zip(ex['observation'], ex['is_first'], ex['action']):
    for name, v in zip(['obs', 'is_first'] + ['s%d' % i for i in range(len(state))], [o, f, *state]): it.set_tensor(ins[name], v)
    it.invoke()
    act, *state = [it.get_tensor(i) for i in outs]
    worst = max(worst, float((np.abs(act - a) / np.asarray(stats['action']['std'])).max()))
print(worst, 'jax' in sys.modules, 'continuonbrain' in sys.modules)
"""
    worst, jax_loaded, cb_loaded = run([PY, "-c", code]).stdout.split()
    assert float(worst) <= 0.05 and jax_loaded == cb_loaded == "False", (worst, jax_loaded, cb_loaded)


def test_an_export_killed_with_sigkill_leaves_the_old_bundle_whole(exported, tmp_path):
    from continuonbrain.jax_models.export.export_jax import load_bundle
    out = tmp_path/"models/core_model_inference"
    shutil.copytree(exported[0]/"models/core_model_inference", out)         # the fp16 bundle is in place
    args = [*EXPORT_JAX, "--checkpoint-path", OUT_URI, "--output-path", str(out), "--quantization", "int8", "--rollout", "20", "--episodes", "1"]
    p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not any((s/"weights.npz").exists() for s in tmp_path.glob("models/.core_model_inference.staging-*")):
        assert p.poll() is None and time.monotonic() - t0 < 240, "the export ended (or stalled) before it wrote its staging folder"
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert load_bundle(out).config["quantization"] == "fp16"                 # the old bundle, every hash intact
    r = run(args, cwd=tmp_path)                                              # the next export cleans up after the killed one
    assert r.returncode == 0, r.stderr
    assert load_bundle(out).config["quantization"] == "int8"
    assert sorted(p.name for p in (tmp_path/"models").iterdir()) == ["core_model_inference"]


def test_export_jax_refuses_what_it_cannot_use(exported, tmp_path):
    r = run([*EXPORT_JAX, "--checkpoint-path", "gs://continuon-rlds/checkpoints/none", "--output-path", str(tmp_path/"b")])
    assert r.returncode == 3 and "gs://continuon-rlds/checkpoints/none" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run([*EXPORT_JAX, *AS_WRITTEN[:4], "--quantization", "int4"], cwd=tmp_path)
    assert r.returncode == 2 and "--quantization 'int4': expected one of fp32, fp16, int8" in r.stderr
    (tmp_path/"mine").mkdir(); (tmp_path/"mine/notes.txt").write_text("keep")
    r = run([*EXPORT_JAX, "--checkpoint-path", OUT_URI, "--output-path", str(tmp_path/"mine")])
    assert r.returncode == 2 and "mine: exists and is not a bundle" in r.stderr and (tmp_path/"mine/notes.txt").read_text() == "keep"
    (tmp_path/"file").write_text("x")
    r = run([*EXPORT_JAX, "--checkpoint-path", OUT_URI, "--output-path", str(tmp_path/"file/bundle")])
    assert r.returncode != 0 and "file: is a file, not a folder" in r.stderr, r.stderr
    r = run([*EXPORT_JAX, "--checkpoint-path", OUT_URI, "--output-path", str(tmp_path/"b"), "--data-path", str(tmp_path/"none")])
    assert r.returncode == 2 and "none: no such folder" in r.stderr and not (tmp_path/"b").exists()
    r = run([*EXPORT_JAX, "--output-path", str(tmp_path/"b")])
    assert r.returncode == 2 and "--checkpoint-path and --output-path are required" in r.stderr


# Steps 8b and 9: the Hailo folder beside the bundle, the compile script through the compiler's stand-in, deploy and route.
ROUTER = [PY, "-m", "continuonbrain.jax_models.export.inference_router"]
STANDINS = str(ROOT/"tests"/"standins")        # stand-ins for Hailo's compiler and HailoRT (see their docstrings)


def test_export_hailo_as_written(hailo):
    cwd, stdout = hailo
    h = cwd/"models/core_model_hailo"
    assert "all on the Hailo list" in stdout and "model.hef: pending" in stdout
    assert not list(h.rglob("*.hef")) and "not importable" in json.loads((h/"model.hef.pending.json").read_text())["why"]
    rep = json.loads((h/"hailo_report.json").read_text())
    assert {r["status"] for r in rep["audit"]} == {"accepted"} and rep["onnx"]["opset"] == 13
    assert not {"Einsum", "Expand", "ReduceSumSquare", "Where", "ConstantOfShape"} & set(rep["onnx"]["operators"])
    assert rep["onnxruntime"]["max"] <= 1e-4 and rep["int8_standin"]["finite"] and "not the chip" in rep["int8_standin"]["what"]
    with np.load(h/"calib.npz") as z:                                      # observations and the states a rollout produces
        assert {"obs", "is_first", "s0", "s1"} <= set(z.files) and np.abs(z["s1"]).max() > 0 and len(z["obs"]) == rep["calibration"]["rows"]
    m = json.loads((h/"manifest.json").read_text())
    assert m["source"]["bundle"] == str(cwd/"models/core_model_inference") and m["source"]["data_path"] == DATA_URI


def test_compile_script_deploy_and_route_through_the_hailo_standins(hailo, tmp_path):
    "compile_hef.py on the compiler's stand-in, then deploy, then the router on HailoRT's stand-in with a device present."
    cwd = hailo[0]
    shutil.copytree(cwd/"models/core_model_hailo", tmp_path/"hailo")
    r = run([PY, "compile_hef.py", "--hw-arch", "hailo8l"], cwd=tmp_path/"hailo", env={"PYTHONPATH": STANDINS})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path/"hailo/model.hef").read_bytes().startswith(b"STAND-IN HEF") and not (tmp_path/"hailo/model.hef.pending.json").exists()
    model_dir = tmp_path/"robot/model/base_model"
    (tmp_path/"dev").mkdir(); (tmp_path/"dev/hailo0").touch()
    r = run([*ROUTER, "--model-dir", str(model_dir), "--deploy-from", str(cwd/"models/core_model_inference"), "--hailo-dir",
             str(tmp_path/"hailo"), "--hailo-devices", str(tmp_path/"dev/hailo*"), "--json"], cwd=cwd,
            env={"PYTHONPATH": f"{ROOT}:{STANDINS}"})
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["backend"] == "hailo" and rep["action_shape"] == [32] and rep["finite"]
    assert (model_dir/"hailo/model.hef").is_file() and (model_dir/"adapters").is_dir() and (model_dir/"deploy.json").is_file()


def test_router_as_written_falls_back_and_says_why(hailo, tmp_path):
    cwd = hailo[0]
    model_dir = tmp_path/"opt/continuonos/brain/model/base_model"
    r = run([*ROUTER, "--model-dir", str(model_dir), "--deploy-from", "./models/core_model_inference", "--hailo-dir",
             "./models/core_model_hailo", "--steps", "20"], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 0 and "deployed models/core_model_inference and ./models/core_model_hailo into" in r.stdout, r.stdout + r.stderr
    # the playbook's command, as written but for the folder
    r = run([*ROUTER, "--model-dir", str(model_dir), "--obs-dim", "128", "--action-dim", "32"], cwd=cwd,
            env={**PLAYBOOK_ENV, "CONTINUON_PREFER_JAX": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("backend: jax\n  skipped hailo: no model.hef: the HEF is pending") and "action shape (32,)" in r.stdout
    assert "p50" in r.stdout and "p99" in r.stdout
    r = run([*ROUTER, "--model-dir", str(model_dir), "--json", "--steps", "20"], cwd=cwd, env=PLAYBOOK_ENV)
    rep = json.loads(r.stdout)
    assert rep["backend"] == "tflite" and [t["backend"] for t in rep["tried"]] == ["hailo", "tflite"]
    r = run([*ROUTER, "--model-dir", str(model_dir), "--obs-dim", "64"], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 2 and "the bundle's model has obs_dim 128, but obs_dim 64 was given" in r.stderr
    (model_dir/"weights.npz").write_bytes(b"altered")
    r = run([*ROUTER, "--model-dir", str(model_dir)], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 2 and "weights.npz: 7 bytes" in r.stderr


def test_export_hailo_refuses_what_it_cannot_use(hailo, tmp_path):
    cwd = hailo[0]
    ops = json.loads((ROOT/"continuonbrain/jax_models/export/hailo_onnx_ops.json").read_text())
    del ops["accepted"]["Sigmoid"]
    (tmp_path/"ops.json").write_text(json.dumps(ops))
    r = run([*EXPORT_HAILO, "--checkpoint-path", "./models/core_model_inference", "--output-dir", str(tmp_path/"h"), "--ops-file",
             str(tmp_path/"ops.json")], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 2 and "operator Sigmoid (node" in r.stderr and "unlisted" in r.stderr, r.stderr
    assert not (tmp_path/"h").exists() and not list(tmp_path.glob(".h.*"))
    r = run([*EXPORT_HAILO, "--checkpoint-path", str(tmp_path/"nothing"), "--output-dir", str(tmp_path/"h")], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 2 and "nothing: no such folder" in r.stderr
    (tmp_path/"afile").write_text("x")
    r = run([*EXPORT_HAILO, "--checkpoint-path", "./models/core_model_inference", "--output-dir", str(tmp_path/"afile/h")], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 2 and "afile: is a file, not a folder" in r.stderr, r.stderr
