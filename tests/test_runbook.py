"""The runbook runner as a user drives it: `continuon steps/run/playbook/params`, parameters, provenance, failures."""
import json, shutil, signal, subprocess, time
from pathlib import Path

from conftest import BIN, ROOT, run
from continuonbrain import store
from continuonbrain.hardware import board_model, is_raspberry_pi
from continuonbrain.runbook import STEPS

CONTINUON = str(BIN/"continuon")


def test_steps_lists_every_step_in_order():
    r = run([CONTINUON, "steps"])
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == len(STEPS)
    for line, s in zip(lines, STEPS):
        assert s.name in line and f"nbs/{s.notebook}" in line and s.summary in line


def test_run_writes_outputs_and_provenance(tmp_path):
    r = run([CONTINUON, "run", "hardware", "--profile", "local", "-p", "trace_seconds", "0.5", "--run-id", "t-run",
             "--outputs", str(tmp_path), "--no-progress"])
    assert r.returncode == 0, r.stdout + r.stderr
    step = tmp_path/"t-run/hardware"
    for name in ("01_hardware.ipynb", "01_hardware.html", "metrics.json", "pi5_check.json", "hardware.png"):
        assert (step/name).stat().st_size > 0, name
    run_json = json.loads((tmp_path/"t-run/run.json").read_text())
    h = run_json["steps"]["hardware"]
    assert h["status"] == "ok" and h["seconds"] > 0 and h["started"] <= h["ended"]
    assert h["git"]["commit"] is None or len(h["git"]["commit"]) == 40
    assert h["packages"]["nbdev"] == "2.4.14" and h["profile"] == "local"
    assert h["parameter_sources"]["out_dir"] == "runner" and h["parameters"]["out_dir"] == str(step)
    for art in h["inputs"] + h["outputs"]:
        assert art["sha256"] == store.sha256(art["path"]), art
    assert {Path(a["path"]).name for a in h["inputs"]} == {"01_hardware.ipynb", "hardware.yaml"}
    metrics = json.loads((step/"metrics.json").read_text())
    assert metrics == h["metrics"] and set(metrics["statuses"]) >= {"board", "hailo", "timing"}
    assert "Hardware check of" in (step/"01_hardware.html").read_text()


def _profile(proj: Path, name: str, step_yaml: str):
    d = proj/"params"/name
    d.mkdir()
    (d/"profile.yaml").write_text((proj/"params/local/profile.yaml").read_text())
    (d/"hardware.yaml").write_text(step_yaml)


def test_parameter_precedence(scratch_project, tmp_path):
    tmp_path = tmp_path/"out"
    _profile(scratch_project, "prec", "trace_hz: 2\nalignment_steps: 7\ntrace_seconds: 0.5\n")
    r = run([CONTINUON, "run", "hardware", "--profile", "prec", "-p", "trace_hz", "8", "--outputs", str(tmp_path),
             "--run-id", "prec", "--no-progress"], cwd=scratch_project)
    assert r.returncode == 0, r.stdout + r.stderr
    h = json.loads((tmp_path/"prec/run.json").read_text())["steps"]["hardware"]
    yaml_file = str(scratch_project/"params/prec/hardware.yaml")
    assert (h["parameters"]["trace_hz"], h["parameter_sources"]["trace_hz"]) == (8.0, "command line -p")
    assert (h["parameters"]["alignment_steps"], h["parameter_sources"]["alignment_steps"]) == (7, yaml_file)
    assert (h["parameters"]["alignment_hz"], h["parameter_sources"]["alignment_hz"]) == (30.0, "notebook default")
    executed = (tmp_path/"prec/hardware/01_hardware.ipynb").read_text()
    assert "alignment_steps = 7" in executed   # papermill's injected cell carries the merged values


def test_bad_parameters_name_key_file_and_type(scratch_project, tmp_path):
    tmp_path = tmp_path/"out"
    _profile(scratch_project, "bad", "alignment_steps: lots\n")
    r = run([CONTINUON, "run", "hardware", "--profile", "bad", "--outputs", str(tmp_path)], cwd=scratch_project)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {scratch_project}/params/bad/hardware.yaml: alignment_steps: expected int, got str 'lots'"
    assert not tmp_path.exists()   # refused before anything ran: nothing written
    r = run([CONTINUON, "run", "hardware", "-p", "trace_secs", "3", "--outputs", str(tmp_path)])
    assert r.returncode == 2 and "command line -p: unknown parameter 'trace_secs'" in r.stderr
    r = run([CONTINUON, "run", "hardware", "--profile", "mars"])
    assert r.returncode == 2 and "unknown profile 'mars'" in r.stderr
    r = run([CONTINUON, "run", "hardwear"])
    assert r.returncode == 2 and "unknown step 'hardwear'" in r.stderr


def test_params_shows_sources():
    r = run([CONTINUON, "params", "hardware", "--profile", "pi5", "-p", "trace_hz", "1"])
    assert r.returncode == 0
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()}
    assert rows["require_pi"].split()[1] == "True" and rows["require_pi"].endswith("params/pi5/hardware.yaml")
    assert rows["trace_hz"].endswith("command line -p")
    assert rows["fail_on_error"].endswith("notebook default")


def test_playbook_stops_at_failure_and_resumes(scratch_project, tmp_path):
    if is_raspberry_pi(board_model()):
        import pytest; pytest.skip("the failure below needs a machine that is not a Raspberry Pi")
    tmp_path = tmp_path/"out"
    _profile(scratch_project, "strict", "require_pi: true\ntrace_seconds: 0.25\n")
    r = run([CONTINUON, "playbook", "--profile", "strict", "--run-id", "pb", "--outputs", str(tmp_path), "--no-progress"],
            cwd=scratch_project)
    assert r.returncode == 1
    assert "[1/1] hardware FAILED" in r.stdout and "ContinuonError: hardware checks failed: board: not a Raspberry Pi" in r.stdout
    partial = tmp_path/"pb/hardware/01_hardware.ipynb"
    assert f"partly executed notebook: {partial}" in r.stdout and partial.exists()
    assert "continue with: continuon playbook --profile strict --run-id pb --from hardware" in r.stdout
    assert json.loads((tmp_path/"pb/run.json").read_text())["steps"]["hardware"]["status"] == "failed"
    # after fixing the cause (here: the local profile), the same run continues from the failed step
    r = run([CONTINUON, "playbook", "--profile", "local", "--run-id", "pb", "--from", "hardware", "--to", "hardware",
             "--outputs", str(tmp_path), "--no-progress"], cwd=scratch_project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path/"pb/run.json").read_text())["steps"]["hardware"]["status"] == "ok"


def test_playbook_rejects_steps_the_profile_does_not_run():
    r = run([CONTINUON, "playbook", "--profile", "tpu", "--from", "capture"])
    assert r.returncode == 2 and "--from capture: profile 'tpu' does not run that step (it runs: train, export)" in r.stderr
    r = run([CONTINUON, "playbook", "--from", "nowhere"])
    assert r.returncode == 2 and "unknown step 'nowhere'" in r.stderr


def test_settings_keep_papermill_tags():
    "nbdev_clean must keep cell tags, or it deletes papermill's parameters cell tag."
    ini = (ROOT/"settings.ini").read_text()
    assert "allowed_cell_metadata_keys = tags" in ini and "tst_flags = notest" in ini
    for s in STEPS:
        nb = json.loads((ROOT/"nbs"/s.notebook).read_text())
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]) == 1, s.notebook


def test_concurrent_runs_do_not_share_kernel_sockets(tmp_path):
    "Two steps at once (two robots' worth of runs on one machine): each kernel gets its own IPC sockets."
    procs = [subprocess.Popen([CONTINUON, "run", "hardware", "-p", "trace_seconds", "0.25", "--run-id", f"par{i}",
                                             "--outputs", str(tmp_path), "--no-progress"], cwd=ROOT,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for i in range(2):
        assert json.loads((tmp_path/f"par{i}/run.json").read_text())["steps"]["hardware"]["status"] == "ok"


def test_relative_outputs_land_where_the_user_stands(tmp_path):
    r = run([CONTINUON, "run", "hardware", "-p", "trace_seconds", "0.25", "--outputs", "rel", "--run-id", "r",
             "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name for p in (tmp_path/"rel/r/hardware").iterdir()} >= {"metrics.json", "pi5_check.json", "01_hardware.html"}
    assert not (ROOT/"nbs/rel").exists() and not (ROOT/"rel").exists()


def test_unusable_outputs_and_roots_are_one_line_errors(tmp_path):
    r = run([CONTINUON, "run", "hardware", "--outputs", "/proc/no/such"])
    assert r.returncode == 2 and r.stderr.startswith("error: cannot create the step folder /proc/no/such/"), r.stderr
    r = run([CONTINUON, "run", "hardware", "-p", "root", "/nonexistent", "--outputs", str(tmp_path), "--run-id", "x", "--no-progress"])
    assert r.returncode == 1
    assert "ContinuonError: root='/nonexistent': no such folder" in r.stdout
    assert json.loads((tmp_path/"x/run.json").read_text())["steps"]["hardware"]["seconds"] < 60


def test_non_utf8_params_file(scratch_project, tmp_path):
    _profile(scratch_project, "latin", "root: /\n")
    (scratch_project/"params/latin/hardware.yaml").write_bytes("root: /caf\xe9\n".encode("latin-1"))
    r = run([CONTINUON, "run", "hardware", "--profile", "latin", "--outputs", str(tmp_path)], cwd=scratch_project)
    assert r.returncode == 2 and r.stderr.strip().endswith("params/latin/hardware.yaml: not UTF-8 text (byte 10)"), r.stderr


def test_ctrl_c_marks_the_step_interrupted(tmp_path):
    # Ctrl-C as a terminal sends it; the default SIGINT handler is restored because a shell's background job (nohup ... &,
    # as CI or a timing script may start pytest) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    p = subprocess.Popen([CONTINUON, "run", "hardware", "-p", "trace_seconds", "60", "-p", "smoke", "false", "--run-id", "int",
                          "--outputs", str(tmp_path), "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_json, t0 = tmp_path/"int/run.json", time.monotonic()
    while not (run_json.exists() and (tmp_path/"int/hardware/pi5_check.json").exists()):   # the trace has started
        assert p.poll() is None and time.monotonic() - t0 < 120, "the step ended before it could be interrupted"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    h = json.loads(run_json.read_text())["steps"]["hardware"]
    assert (h["status"], h["error"]) == ("interrupted", "interrupted (Ctrl-C)")
    assert (tmp_path/"int/hardware/01_hardware.ipynb").exists()


def test_export_hailo_without_a_bundle_fails_naming_the_folder(tmp_path):
    "export_hailo on its own, with no CPU bundle in the brain home: it fails naming the folder, and nothing is made up."
    r = run([CONTINUON, "run", "export_hailo", "--profile", "local", "--run-id", "t-nobundle", "--outputs", str(tmp_path), "--no-progress"],
            env={"CONTINUON_HOME": str(tmp_path/"home")})
    assert r.returncode != 0
    run_json = json.loads((tmp_path/"t-nobundle/run.json").read_text())["steps"]["export_hailo"]
    assert run_json["status"] == "failed" and f"{tmp_path}/home/models/core_model_inference: no such folder (expected a bundle written by export_jax)" in run_json["error"]
    assert not (tmp_path/"home/models/core_model_hailo").exists()


def test_papermill_reads_every_step_parameters_cell():
    "papermill parses a parameters cell itself (a comment holding '=' once made it skip a line and warn); it must see what we see."
    import nbformat
    from papermill.translators import PythonTranslator
    from continuonbrain.config import notebook_parameters
    for s in STEPS:
        nb = nbformat.read(ROOT/"nbs"/s.notebook, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert [p.name for p in PythonTranslator.inspect(cell)] == list(notebook_parameters(ROOT/"nbs"/s.notebook)), s.notebook


def test_dry_runs_check_the_parameters_and_print_the_plan(scratch_project):
    "`continuon playbook --dry-run` for the TPU VM and the Pi: every step, what it reads and makes and where; nothing run, nothing written."
    before = sorted(p.name for p in (ROOT/"outputs").iterdir())
    r = run([CONTINUON, "playbook", "--profile", "tpu", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert "[1/2] train: nbs/13_tpu_train.ipynb" in r.stdout and "reads  gs://continuon-rlds/rlds/episodes  (bucket; given, not checked (bucket))" in r.stdout
    assert "reads  gs://continuon-rlds/checkpoints/core_model_v0  (bucket; made by train)" in r.stdout
    r = run([CONTINUON, "playbook", "--profile", "pi5", "--dry-run"])
    assert r.returncode == 0 and "[7/7] seed_train" in r.stdout and "makes  /opt/continuonos/brain/rlds/episodes  (brain home)" in r.stdout
    assert "reads  /opt/continuonos/brain/rlds/tfrecord  (brain home; made by tfrecord)" in r.stdout
    assert sorted(p.name for p in (ROOT/"outputs").iterdir()) == before                        # no run folder, no home
    _profile(scratch_project, "bad", "alignment_steps: lots\n")
    r = run([CONTINUON, "playbook", "--profile", "bad", "--dry-run"], cwd=scratch_project)
    assert r.returncode == 2 and "params/bad/hardware.yaml: alignment_steps: expected int, got str 'lots'" in r.stderr


def test_tpu_plan_and_cleanup_against_the_emulator(gcs, tmp_path, scratch_project):
    "`continuon tpu plan` stages its three files and prints the gcloud commands (never running them); `cleanup` removes those three and nothing else."
    keep = ["gs://continuon-rlds/rlds/episodes-2/dataset_info.json", "gs://continuon-rlds/staging/tpu/other/startup-script.sh",
            "gs://continuon-rlds/startup-script.sh"]
    for u in keep: store.write_text(u, "not the plan's")
    r = run([CONTINUON, "tpu", "plan", "--profile", "tpu", "--name", "run2", "--data-path", "gs://continuon-rlds/rlds/episodes-2",
             "--output-dir", "gs://continuon-rlds/checkpoints/core_model_v1", "--init-from", "gs://continuon-rlds/checkpoints/core_model_v0",
             "--project", "my-proj", "--out", str(tmp_path/"plan")], env={"PATH": "/usr/bin:/bin"})      # no gcloud anywhere on the PATH
    assert r.returncode == 0, r.stdout + r.stderr
    staged = store.ls("gs://continuon-rlds/staging/tpu/run2")
    assert [u.rsplit("/", 1)[1] for u in staged] == ["plan.json", "source.tar.gz", "startup-script.sh"]
    assert "--init-from gs://continuon-rlds/checkpoints/core_model_v0" in r.stdout and "--project=my-proj" in r.stdout
    assert "gcloud compute tpus queued-resources create run2 --node-id=run2 --zone=us-west4-a --project=my-proj --accelerator-type=v5litepod-8" in r.stdout
    script = store.read_text("gs://continuon-rlds/staging/tpu/run2/startup-script.sh")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert (tmp_path/"plan/commands.sh").read_text().count("gcloud ") == 7
    r = run([CONTINUON, "tpu", "cleanup", "--profile", "tpu", "--name", "run2", "--dry-run"])
    assert r.returncode == 0 and r.stdout.count("would remove ") == 3 and len(store.ls("gs://continuon-rlds/staging/tpu/run2")) == 3
    r = run([CONTINUON, "tpu", "cleanup", "--profile", "tpu", "--name", "run2"])
    assert r.returncode == 0 and r.stdout.count("removed ") == 3, r.stdout + r.stderr
    assert not store.exists("gs://continuon-rlds/staging/tpu/run2/plan.json") and all(store.exists(u) for u in keep)
    r = run([CONTINUON, "tpu", "cleanup", "--profile", "tpu", "--name", "run2"])
    assert r.returncode == 2 and "staging/tpu/run2/plan.json: no plan there, so nothing was removed" in r.stderr
    nowhere = scratch_project/"params/nowhere"                                                   # a profile whose bucket does not exist
    shutil.copytree(ROOT/"params/tpu", nowhere)
    (nowhere/"profile.yaml").write_text((nowhere/"profile.yaml").read_text().replace("gs://continuon-rlds", "gs://no-such-bucket"))
    subprocess.run(["git", "init", "-q", str(scratch_project)], check=True)
    subprocess.run(["git", "-C", str(scratch_project), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    r = run([CONTINUON, "tpu", "plan", "--profile", "nowhere", "--name", "run3", "--out", str(tmp_path/"run3")], cwd=scratch_project)
    assert r.returncode != 0 and "staging the plan in gs://no-such-bucket/staging/tpu/run3 failed" in r.stderr, r.stderr
    assert f"The local copies are in {tmp_path/'run3'}" in r.stderr and (tmp_path/"run3/startup-script.sh").is_file()
    r = run([CONTINUON, "tpu", "plan", "--profile", "tpu", "--data-path", "/local/data", "--out", str(tmp_path/"bad")])
    assert r.returncode == 2 and "data_path '/local/data': a TPU run reads and writes a bucket" in r.stderr
    assert not (tmp_path/"bad").exists()


def test_seed_train_step_starts_from_the_training_defaults():
    "The runbook's seed_train step, the command line and fit share one recipe: the step's defaults are `DEFAULTS`."
    from continuonbrain.config import notebook_parameters
    from continuonbrain.wavecore.train import DEFAULTS
    params = notebook_parameters(ROOT/"nbs"/"10c_seed_train.ipynb")
    assert {k: params[k].default for k in ("learning_rate", "devices")} == {"learning_rate": DEFAULTS.learning_rate, "devices": DEFAULTS.devices}
