"""WaveCore seed training as a user runs it: exact resume after SIGKILL, the memory budget, thermal back-off
read from a (fixture) Pi, and the command line's errors."""
import json, os, random, signal, subprocess, time

from conftest import PY, ROOT, run

TRAIN = [PY, "-m", "continuonbrain.wavecore.train"]
SMALL = ["--profile", "fast", "--d-model", "32", "--steps", "40", "--batch-size", "8", "--ckpt-every", "5",
         "--eval-every", "20", "--level-steps", "10", "--no-progress", "--devices", "0"]   # data parallel where there are cores


def _latest_checkpoint(ckpt_dir) -> int:
    steps = [int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit()] if ckpt_dir.is_dir() else []
    return max(steps, default=0)


def test_resume_after_sigkill_at_random_moments_is_bit_identical(tmp_path):
    """Killed with SIGKILL three times (each at a random moment after the run has made new progress, so during training
    or while a checkpoint is being written) and resumed each time, a run ends with the reference run's parameters."""
    r = run(TRAIN + SMALL + ["--out", str(tmp_path/"ref")])
    assert r.returncode == 0, r.stderr
    ref = json.loads((tmp_path/"ref/metrics.json").read_text())
    assert ref["devices"] > 1 or len(os.sched_getaffinity(0)) == 1   # the rows were split across the cores
    rng, ckpt, kills = random.Random(1234), tmp_path/"killed/checkpoints", []
    cmd = TRAIN + SMALL + ["--out", str(tmp_path/"killed"), "--resume"]
    for _ in range(3):
        before = _latest_checkpoint(ckpt)
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _latest_checkpoint(ckpt) <= before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL); p.wait(); kills.append(_latest_checkpoint(ckpt))
        else:
            assert p.returncode == 0, p.stderr.read()
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path/"killed/metrics.json").read_text())
    assert len(kills) >= 2, f"the run should have been killed at least twice, got {kills}"
    assert got["step"] == 40 and got["params_sha256"] == ref["params_sha256"]
    assert got["resumed_at"] and all(0 < s < 40 for s in got["resumed_at"])
    assert got["final_loss"] == ref["final_loss"]


def test_memory_budget_refuses_before_anything_grows(tmp_path):
    r = run(TRAIN + ["--profile", "slow", "--memory-budget-gb", "0.5", "--steps", "5", "--out", str(tmp_path/"big"), "--no-progress"])
    assert r.returncode == 3, r.stdout + r.stderr
    assert "over the memory budget of 0.5 GB" in r.stderr
    assert not (tmp_path/"big/checkpoints").exists() or not any((tmp_path/"big/checkpoints").iterdir())
    assert not (tmp_path/"big/metrics.json").exists()


def test_peak_rss_is_reported_and_inside_the_budget(tmp_path):
    r = run(TRAIN + SMALL + ["--steps", "10", "--out", str(tmp_path/"m"), "--memory-budget-gb", "6"])
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path/"m/metrics.json").read_text())
    assert 0.1 < m["peak_rss_gb"] < 6 and m["memory_budget_gb"] == 6


def test_thermal_back_off_reads_the_pi_and_recovers_when_it_cools(tmp_path, machine):
    "The guard reads the same probes as system_health; a throttled fixture Pi pauses the loop until it cools."
    from continuonbrain.hardware import write_fixture_tree
    from continuonbrain.training import ThermalGuard, pi_thermal_signal
    from continuonbrain.wavecore.train import SeedSettings, seed_train
    root = machine("pi5-throttled")
    assert pi_thermal_signal(str(root))() == (84.5, True)
    sleeps = []
    def sleep(s):                      # while the loop waits, the Pi cools down: the fixture becomes a healthy Pi 5
        sleeps.append(s)
        if len(sleeps) == 2: write_fixture_tree(root, "pi5-hailo8l")
    guard = ThermalGuard(pi_thermal_signal(str(root)), poll_s=5, sleep=sleep)
    res = seed_train(tmp_path/"t", SeedSettings(profile="fast", steps=30, batch_size=8, level_steps=10, eval_every=30, ckpt_every=30,
                                                d_model=32, thermal_every=10), thermal=guard, progress=False, plot=False)
    events = res.metrics["thermal_events"]
    assert [e["action"] for e in events] == ["pause", "resume"]
    assert events[0] == {"step": 10, "action": "pause", "temp_c": 84.5}
    assert events[1]["temp_c"] == 52.3 and events[1]["waited_s"] == 10
    assert res.step == 30 and sleeps == [5, 5]


def test_command_line_errors(tmp_path):
    r = run(TRAIN + ["--profile", "huge", "--out", str(tmp_path/"x")])
    assert r.returncode == 2 and "unknown WaveCore profile 'huge'" in r.stderr
    r = run(TRAIN + ["--tasks", "copy,fly", "--out", str(tmp_path/"x")])
    assert r.returncode == 2 and "unknown curriculum task 'fly'" in r.stderr
    r = run(TRAIN + SMALL + ["--steps", "5", "--out", str(tmp_path/"y")])
    assert r.returncode == 0, r.stderr
    r = run(TRAIN + SMALL + ["--steps", "5", "--out", str(tmp_path/"y")])
    assert r.returncode == 2 and "pass --resume to continue" in r.stderr
    r = run(TRAIN + SMALL + ["--steps", "5", "--seed", "1", "--out", str(tmp_path/"y"), "--resume"])
    assert r.returncode == 3 and "seed was 0, now 1" in r.stderr


def test_wavecore_imports_no_tensorflow_or_cloud():
    code = ("import sys\nimport continuonbrain.wavecore.train, continuonbrain.wavecore.curriculum\n"
            "print([m for m in ('tensorflow', 'google.cloud.storage', 'matplotlib', 'orbax.checkpoint') if m in sys.modules])")
    r = run([PY, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_export_of_a_folder_without_a_run_is_refused(tmp_path):
    "(The evaluation and export of a trained run, as the README writes them, are checked in the README test below.)"
    r = run([PY, "-m", "continuonbrain.wavecore.export", "--train-dir", str(tmp_path/"nothing")])
    assert r.returncode == 3 and "no checkpoint" in r.stderr                # cannot go on: nothing to export


def test_scale_command_stops_at_the_budget(tmp_path):
    "With a budget of 0.3 GB (less than the process itself), no stage runs and the command exits 3."
    r = run([PY, "-m", "continuonbrain.wavecore.scale", "--memory-budget-gb", "0.3", "--out", str(tmp_path/"s")])
    assert r.returncode == 3, r.stdout + r.stderr
    res = json.loads((tmp_path/"s/scale.json").read_text())
    assert res["stopped_by"] == "over budget (predicted)" and res["largest"] is None
    assert "no stage fits in 0.3 GB" in r.stdout


SHORTEN = {"continuonbrain.wavecore.train": ["--steps", "20", "--batch-size", "8", "--d-model", "32", "--eval-every", "10", "--lead-steps", "10", "--no-progress"],
           "continuonbrain.wavecore.scale": ["--max-stages", "2"],
           "continuonbrain.wavecore.selfplay": ["--supervised-steps", "30", "--rounds", "1", "--steps-per-round", "5", "--prompts", "16",
                                               "--samples", "2"],
           "continuonbrain.wavecore.bench_tasks": ["--minutes", "0", "--steps", "10", "--batch-size", "8", "--tasks", "mqar-8",
                                                  "--profile", "fast", "--baselines", "toy"]}


def readme_seed_commands() -> list[list[str]]:
    "The seed-brain commands of the README's playbook, continuation lines joined and comments dropped."
    text = (ROOT/"README.md").read_text()
    block = text.split("### The seed brain")[1].split("```bash\n")[1].split("```")[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [ln.split("#")[0].split() for ln in lines if ln.strip()]


def test_the_seed_brain_commands_of_the_readme_as_written(tmp_path):
    "Each README command with its paths swapped for temporary ones and its long settings shortened (later flags win)."
    cmds = readme_seed_commands()
    assert [c[2] for c in cmds] == ["continuonbrain.wavecore.train"] * 2 + ["continuonbrain.wavecore." + m for m in ("eval", "export", "scale", "selfplay", "bench_tasks")]
    for c in cmds:
        assert c[:2] == ["python", "-m"]
        argv = [PY] + [a.replace("/opt/continuonos/brain", str(tmp_path/"brain")) for a in c[1:]] + SHORTEN.get(c[2], [])
        r = run(argv, timeout=600)
        assert r.returncode == 0, f"{' '.join(c)}\n{r.stdout}\n{r.stderr}"
        if c[2] == "continuonbrain.wavecore.eval": assert "| copy |" in r.stdout        # the hold-out table
    seed = json.loads((tmp_path/"brain/seed/metrics.json").read_text())
    assert seed["step"] == 20 and seed["allocator"] == "jemalloc"      # the command restarted itself under jemalloc (make installs it)
    ev = json.loads((tmp_path/"brain/seed/eval.json").read_text())           # wavecore.eval: every task, a table and a chart
    assert set(ev) == {"copy", "reverse", "continue", "add", "modsum", "parity", "rule", "recall", "selcopy"}
    assert (tmp_path/"brain/seed/eval.png").stat().st_size > 1000
    rep = json.loads((tmp_path/"brain/seed/export/export.json").read_text())  # wavecore.export: both graphs, checked
    assert set(rep["files"]) == {"step.onnx", "step.tflite"} and all(f["max_abs_diff"] < 1e-4 for f in rep["files"].values())
    assert json.loads((tmp_path/"brain/scale/scale.json").read_text())["largest"] is not None
    assert (tmp_path/"brain/selfplay/selfplay.png").is_file()
    bench = json.loads((tmp_path/"brain/bench/results.json").read_text())   # wavecore.bench_tasks: the runs, the table, the chart
    assert [(r["task"], r["model"], r["steps"]) for r in bench["runs"]] == [("mqar-8", "fast", 10), ("mqar-8", "toy", 10)]
    assert bench["machine"]["allocator"] == "jemalloc"
    assert (tmp_path/"brain/bench/bench_tasks.png").is_file() and (tmp_path/"brain/bench/bench_tasks.md").is_file()


DATA_PARALLEL = r'''
import json, re
import numpy as np, jax, optax
from flax import nnx
from continuonbrain.wavecore import curriculum as cur
from continuonbrain.wavecore.model import WaveCoreConfig
from continuonbrain.training import make_optimizer
from continuonbrain.wavecore.train import cpu_devices, data_mesh, fit, make_train_step, on_mesh
print(json.dumps({"devices": cpu_devices(2)}))
cfg = WaveCoreConfig(vocab_size=cur.VOCAB_SIZE, d_model=32, n_layers=2, pattern="ssm,attention", seq_len=32)
c = cur.Curriculum(tasks=["copy", "recall"], batch_size=8, max_level=1, seq_len=32)
runs = {d: fit(cfg, c.batches(), steps=25, learning_rate=3e-3, devices=d, per_example=True) for d in (1, 2)}
leaves = {d: jax.tree.leaves(nnx.state(r.model, nnx.Param)) for d, r in runs.items()}
graphdef, params = nnx.split(runs[1].model)
params = jax.tree.map(np.asarray, params)   # host copies: each step below donates the device buffers it is given
tx, mesh = make_optimizer(1e-3, 25), data_mesh(8)
b = {k: np.asarray(v) for k, v in next(iter(c.batches())).items() if k in ("inputs", "targets", "mask")}
hlo = make_train_step(graphdef, tx, mesh=mesh).lower(on_mesh(params, mesh), tx.init(on_mesh(params, mesh)), b).compile().as_text()
sgd = optax.sgd(1.0)   # AdamW hides a wrongly scaled gradient; one plain SGD step shows it
steps = {n: make_train_step(graphdef, sgd, mesh=m)(on_mesh(params, m), sgd.init(on_mesh(params, m)), b) for n, m in ((1, None), (2, mesh))}
sgd_diff = max(float(np.abs(np.asarray(a) - np.asarray(c)).max()) for a, c in zip(jax.tree.leaves(steps[1][0]), jax.tree.leaves(steps[2][0])))
print(json.dumps({"used": {d: r.devices for d, r in runs.items()},
                  "all_reduce": re.findall(r"= (.+?) all-reduce\(", hlo), "n_params": sum(int(np.prod(x.shape)) for x in leaves[1]),
                  "sgd": {"grad_norm": [float(steps[n][2]["grad_norm"]) for n in (1, 2)], "param_diff": sgd_diff},
                  "final_devices": sorted({len(x.devices()) for x in leaves[2]}),
                  "loss": {d: r.history for d, r in runs.items()},
                  "param_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(leaves[1], leaves[2]))}))
'''


def test_data_parallel_training_matches_one_device():
    "Two CPU devices with four rows each train the same model as one device with all eight, to float tolerance."
    r = subprocess.run([PY, "-c", DATA_PARALLEL], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first, out = (json.loads(line) for line in r.stdout.strip().splitlines()[-2:])
    assert first["devices"] == 2
    assert out["used"] == {"1": 1, "2": 2}
    assert out["final_devices"] == [1]                 # the trained model comes back on one device
    l1, l2 = out["loss"]["1"], out["loss"]["2"]
    assert len(l1) == len(l2) == 25 and l1[-1] < l1[0]  # it trained
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4 * max(l1)
    assert out["param_diff"] < 1e-4, out["param_diff"]
    g1, g2 = out["sgd"]["grad_norm"]                   # the same gradient, not one summed twice
    assert abs(g1 - g2) < 1e-5 * g1 and out["sgd"]["param_diff"] < 1e-5, out["sgd"]
    # one all-reduce per step, of one flat buffer: every gradient plus the loss, correct, scored and normaliser sums
    assert out["all_reduce"] == [f"f32[{out['n_params'] + 4}]{{0}}"], out["all_reduce"]
