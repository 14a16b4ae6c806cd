"""The whole playbook as one run (what `make playbook` does): every step on the local profile, its overview page and
release archive, looked at in headless Chromium, and a second run that must give the same bytes."""
import json, shutil, tarfile
from pathlib import Path

import pytest

from conftest import ROOT, run

CONTINUON = str(ROOT/".venv/bin/continuon") if (ROOT/".venv/bin/continuon").exists() else "continuon"


@pytest.fixture(scope="session")
def playbook(tmp_path_factory):
    """One full local playbook run, run id pb, in W/outputs with its brain home in W/home; (W, the command's result).
    Session-scoped: xdist may run other modules' tests between these on the same worker, which would end a module-scoped
    fixture and run the playbook again."""
    w = tmp_path_factory.mktemp("playbook")
    r = run([CONTINUON, "playbook", "--profile", "local", "--run-id", "pb", "--outputs", str(w/"outputs")],
            env={"CONTINUON_HOME": str(w/"home")}, timeout=900)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    return w, r


def test_make_playbook_runs_every_step_on_the_local_profile(playbook):
    "What `make playbook` runs: every step of the local profile, the data path included, into a fresh outputs folder."
    w, r = playbook
    OUT, HOME = w/"outputs", w/"home"
    steps = json.loads((OUT/"pb/run.json").read_text())["steps"]
    assert set(steps) == {"hardware", "capture", "tfrecord", "sanity_train", "export_bundle", "upload", "train", "export", "export_hailo",
                          "deploy", "shadow", "ota", "robot_api", "seed_train"}
    assert steps["sanity_train"]["metrics"]["data"] == "tfrecord" and steps["sanity_train"]["metrics"]["learned"]
    t = steps["train"]["metrics"]
    assert t["data_path"] == str(HOME/"rlds/tfrecord") and t["step"] == 200 and t["final_loss"] < 0.1 * t["first_loss"]
    assert (OUT/"pb/train/core_model/checkpoints/200").is_dir()
    assert all(s["status"] == "ok" for s in steps.values())
    assert steps["capture"]["metrics"]["valid"] == 12                          # the playbook asks for 10-20 episodes
    assert steps["tfrecord"]["metrics"]["steps"] == {"train": 1000, "val": 200}
    h = t["heldout"]                                                            # held-out learning, not memorising
    assert h["heldout_error"] < 0.5 * h["mean_action_error"] and t["warnings"] == [], (h, t["warnings"])
    # the console shows each step's own progress, and none of TensorFlow's log lines
    assert "    | step   200/200  training loss" in r.stdout and "[7/14] train ok in" in r.stdout, r.stdout[-3000:]
    assert "oneDNN" not in r.stdout + r.stderr and "DATA_LOSS" not in r.stdout + r.stderr
    assert "oneDNN" in (OUT/"pb/tfrecord/kernel.log").read_text()
    # each step's report opens with its result
    page = (OUT/"pb/train/13_tpu_train.html").read_text()
    assert page.index("Result: train ok in") < page.index("train_from_folder") and "data:image/png;base64" in page
    assert steps["export_bundle"]["metrics"]["identifiers_leaked"] == 0
    e = steps["export"]["metrics"]                                              # step 8a: this run's checkpoint as the CPU bundle
    assert (e["checkpoint_path"], e["checkpoint_step"], e["quantization"]) == (str(OUT/"pb/train/core_model"), 200, "fp16")
    assert e["output_path"] == str(HOME/"models/core_model_inference") and e["tflite_max_error_std"] <= e["tflite_bound_std"]
    assert (HOME/"models/core_model_inference/manifest.json").is_file()
    hh = steps["export_hailo"]["metrics"]                                       # step 8b: beside the bundle, no HEF here
    assert (hh["bundle"], hh["output_dir"]) == (str(HOME/"models/core_model_inference"), str(HOME/"models/core_model_hailo"))
    assert hh["onnxruntime_max_error_std"] <= 1e-4 and hh["hef"] == "pending"
    d = steps["deploy"]["metrics"]                                              # step 9: deployed, routed, smoke-tested
    assert d["model_dir"] == str(HOME/"model/base_model") and d["backend"] == "jax" and "pending" in d["skipped"]["hailo"]
    assert (HOME/"model/base_model/hailo/step.onnx").is_file() and (HOME/"model/base_model/adapters").is_dir()
    sh = steps["shadow"]["metrics"]                                             # step 10's check: the gate passed, reported
    assert sh["passed"] and sh["failures"] == [] and (HOME/"shadow/shadow_report.json").is_file()
    assert 0 <= sh["closed_loop_success"] <= 1 and sh["scripted_success"] > 0.5
    o = steps["ota"]["metrics"]                                                 # step 10: installed through the signed path, committed
    assert (o["version"], o["active_slot"], o["status"]) == (1, "a", "good") and o["model_dir"] == str(HOME/"robot_ota/slots/a/model")
    assert (HOME/"robot_ota/slots/a/reports/shadow_report.json").is_file() and (HOME/"keys/release.key").stat().st_mode & 0o077 == 0
    a = steps["robot_api"]["metrics"]                                           # a new robot claimed through its API, given the seed
    assert (a["state"], a["seed_version"], a["install"], a["bundle"]) == ("ready", 1, "done", str(HOME/"bundles/core_model-v1"))
    assert (OUT/"pb/robot_api/robot_page.png").stat().st_size > 10_000
    assert steps["upload"]["metrics"]["target"] == "emulator" and steps["upload"]["metrics"]["skipped_second_pass"] > 0
    assert len(list((HOME/"rlds/tfrecord").glob("*.tfrecord"))) == 2
    for step in steps: assert (OUT/f"pb/{step}/metrics.json").is_file()
    assert f"run pb in {OUT/'pb'}" in r.stdout
    assert f"overview: {OUT/'pb/overview.html'}" in r.stdout and f"release archive: {OUT/'pb/release-pb.tar.gz'}" in r.stdout


def test_run_json_names_what_cannot_repeat_and_why(playbook):
    "Every step's record lists its time-bound and keyed artefacts and its measured metrics, each with why; the data path's artefacts are not among them."
    w, _ = playbook
    steps = json.loads((w/"outputs/pb/run.json").read_text())["steps"]
    for name, e in steps.items():
        nr = e["not_reproducible"]
        assert all(f["why"] and f["kind"] in ("time", "key") for f in nr["files"]) and all(m["why"] for m in nr["metrics"]), name
        listed = {f["path"] for f in nr["files"]}
        assert any(p.endswith(".ipynb") for p in listed) and not [o for o in e["outputs"] if "error" in o and "gs://" not in o["path"]], name
    listed = lambda step: {Path(f["path"]).name for f in steps[step]["not_reproducible"]["files"]}
    assert not {p for p in listed("capture") if p.startswith("sim-s0")} and "_CHECKPOINT_METADATA" in listed("train")
    assert "trusted_keys.json" in listed("ota") and "edge_manifest.json" in listed("ota") and "api.sqlite3" in listed("robot_api")
    assert {m["metric"] for m in steps["train"]["not_reproducible"]["metrics"]} == {"steps_per_s", "examples_per_s"}
    outs = {Path(o["path"]).name for o in steps["deploy"]["outputs"]}            # a folder the step made is described file by file
    assert {"deploy.json", "manifest.json", "step.onnx"} <= outs


def test_overview_page_and_release_archive_in_headless_chromium(playbook):
    "`continuon report` and `continuon release` as a user runs them; the page in Chromium: every step, every link and plot there."
    from playwright.sync_api import sync_playwright
    w, _ = playbook
    out = w/"outputs"
    r = run([CONTINUON, "report", "pb", "--outputs", str(out)])
    assert r.returncode == 0 and f"wrote {out/'pb/overview.html'}" in r.stdout, r.stdout + r.stderr
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((out/"pb/overview.html").as_uri())
        assert page.title() == "Run pb: overview" and "14 of 14 step(s) ok" in page.inner_text("body")
        assert page.locator("tr[id^=step-]").count() == 14
        hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.getAttribute('href'))")
        assert len(hrefs) >= 28 and all((out/"pb"/h).is_file() for h in hrefs), [h for h in hrefs if not (out/"pb"/h).is_file()]
        widths = page.eval_on_selector_all("img", "is => is.map(i => i.naturalWidth)")
        assert len(widths) >= 10 and min(widths) > 0, widths          # every step's first plot, and the durations chart, drawn
        page.screenshot(path=str(w/"overview.png"), full_page=True)
        browser.close()
    assert (w/"overview.png").stat().st_size > 50_000
    r = run([CONTINUON, "release", "pb", "--outputs", str(out)])
    arc = out/"pb/release-pb.tar.gz"
    assert r.returncode == 0 and f"continuon release --verify {arc}" in r.stdout, r.stdout + r.stderr
    with tarfile.open(arc) as tar: names = set(tar.getnames())
    steps = json.loads((out/"pb/run.json").read_text())["steps"]
    assert {f"{s}/{Path(e['notebook']).stem}.{x}" for s, e in steps.items() for x in ("ipynb", "html")} <= names
    assert {"SHA256SUMS", "run.json", "overview.html", "manifests/index.json", "manifests/ota/core_model-v1/edge_manifest.json",
            "manifests/export/core_model_inference/manifest.json", "manifests/tfrecord/tfrecord/dataset_info.json"} <= names, sorted(names)
    r = run([CONTINUON, "release", "--verify", str(arc)])
    assert r.returncode == 0 and "release-pb.tar.gz.sha256: the archive's sha256 matches" in r.stdout, r.stdout + r.stderr
    bad = w/"bad.tar.gz"
    data = bytearray(arc.read_bytes()); data[len(data) // 2] ^= 0xFF; bad.write_bytes(bytes(data))
    r = run([CONTINUON, "release", "--verify", str(bad)])
    assert r.returncode != 0 and str(bad) in r.stderr and r.stdout == "", r.stdout + r.stderr


def test_a_second_run_with_the_same_parameters_gives_the_same_bytes(playbook):
    "The first run moved aside, the chain from capture to the signed install run again in the same place with the same home keys: `continuon compare` finds only what run.json lists."
    w, _ = playbook
    first, second = w.with_name(w.name + "-first"), w.with_name(w.name + "-second")
    w.rename(first)
    try:
        for d in ("keys", "secrets"): shutil.copytree(first/"home"/d, w/"home"/d)     # the brain home's random keys are inputs
        r = run([CONTINUON, "playbook", "--profile", "local", "--from", "capture", "--to", "ota", "--run-id", "pb", "--outputs",
                 str(w/"outputs"), "--no-progress"], env={"CONTINUON_HOME": str(w/"home")}, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        r = run([CONTINUON, "compare", str(first/"outputs/pb"), str(w/"outputs/pb")])
        assert r.returncode == 0 and r.stdout.startswith("same: 11 step(s)") and "not compared" not in r.stdout, r.stdout + r.stderr
        a, b = (json.loads((x/"outputs/pb/run.json").read_text())["steps"] for x in (first, w))
    finally:                                                                    # the first run back in its place, for the other tests
        if w.exists(): w.rename(second)
        first.rename(w)
    assert a["train"]["metrics"]["params_sha256"] == b["train"]["metrics"]["params_sha256"]    # the trained parameters, bit for bit
    episodes = [o for o in a["capture"]["outputs"] if o["path"].endswith(".json") and "/rlds/episodes/" in o["path"]]
    assert len(episodes) == 12 and all(o["sha256"] == {x["path"]: x["sha256"] for x in b["capture"]["outputs"]}[o["path"]] for o in episodes)
