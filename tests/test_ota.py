"""Step 10's release path as a user runs it: keys, a signed bundle from the model step 9 deployed, uploaded to the emulator's
bucket, installed on a robot folder through the OTA apply; the attacks of TUF's list against an installed robot; SIGKILL at
every phase of an apply and during the starts of a new model (real processes), then the robot's next start."""
import json, os, shutil, signal, subprocess

import pytest

from conftest import PLAYBOOK_ENV, PY, run, wipe
from continuonbrain import store

BUNDLE = [PY, "-m", "continuonbrain.ota.bundle"]
APPLY = [PY, "-m", "continuonbrain.ota.apply"]
ROUTER = [PY, "-m", "continuonbrain.jax_models.export.inference_router"]
BUCKET = "gs://continuon-rlds/bundles"


@pytest.fixture(scope="session")
def release(hailo, tmp_path_factory):
    "Step 9's deploy, a release key, its pinned key set, and bundles v1-v3 of the deployed model built with the CLI."
    cwd, tmp = hailo[0], tmp_path_factory.mktemp("release")
    r = run([*ROUTER, "--model-dir", str(tmp/"deployed"), "--deploy-from", "./models/core_model_inference", "--hailo-dir",
             "./models/core_model_hailo", "--steps", "5"], cwd=cwd, env=PLAYBOOK_ENV)
    assert r.returncode == 0, r.stderr
    r = run([*BUNDLE, "keygen", "--out", str(tmp/"keys"), "--name", "release"])
    assert r.returncode == 0 and "keep it secret" in r.stdout, r.stderr
    assert oct((tmp/"keys/release.key").stat().st_mode & 0o777) == "0o600"
    r = run([*BUNDLE, "trust", str(tmp/"keys/release.pub.json"), "--out", str(tmp/"trusted_keys.json")])
    assert r.returncode == 0, r.stderr
    for v in (1, 2, 3):
        r = run([*BUNDLE, "build", "--model-dir", str(tmp/"deployed"), "--key", str(tmp/"keys/release.key"), "--version", str(v),
                 "--out", str(tmp/f"bundle-v{v}")])
        assert r.returncode == 0 and f"version {v}, " in r.stdout, r.stderr
    return tmp


def robot(tmp_path, release, version: int | None = 1):
    "A robot OTA folder set up with the release key, registered and paid, with `version` installed and committed (in-process)."
    from continuonbrain.ota.apply import apply_bundle, init_device, set_subscription, start
    root = init_device(tmp_path/"robot", release/"trusted_keys.json")
    set_subscription(root, True, True, "acct-1")
    if version:
        apply_bundle(root, str(release/f"bundle-v{version}"), log=lambda m: None)
        start(root, log=lambda m: None)
    return root


def snapshot(root) -> tuple:
    "What must not change when a bundle is refused before its install: the pointer and every file of both slots."
    from continuonbrain.ota.apply import read_state
    st = read_state(root)
    slots = {p.name: store.file_manifest(p) for p in sorted((root/"slots").iterdir())}
    return (st["active"], st["version"], st["status"], json.dumps(st["last_known_good"]), json.dumps(slots))


def test_the_release_commands_as_written_from_keys_to_an_installed_model(release, gcs, tmp_path):
    r = run([*BUNDLE, "verify", str(release/"bundle-v2"), "--trust", str(release/"trusted_keys.json")])
    assert r.returncode == 0 and "verifies: version 2" in r.stdout, r.stderr
    r = run([*BUNDLE, "show", str(release/"bundle-v2")])
    assert r.returncode == 0 and "core_model version 2" in r.stdout and "model/hailo/step.onnx" in r.stdout
    wipe(BUCKET)
    for f in store.ls(release/"bundle-v2"):                                # the bundle published in the bucket
        store.copy(f, f"{BUCKET}/v2/{os.path.relpath(f, release/'bundle-v2')}")
    root = str(tmp_path/"robot")
    r = run([*APPLY, "init", "--root", root, "--trust", str(release/"trusted_keys.json")])
    assert r.returncode == 0 and "no model, not subscribed" in r.stdout, r.stderr
    r = run([*APPLY, "apply", "--root", root, "--bundle", f"{BUCKET}/v2"])
    assert r.returncode == 3 and "not registered and not paid" in r.stderr and "Traceback" not in r.stderr
    r = run([*APPLY, "subscription", "--root", root, "--registered", "--paid", "--account-id", "acct-1"])
    assert r.returncode == 0, r.stderr
    r = run([*APPLY, "apply", "--root", root, "--bundle", f"{BUCKET}/v2"])
    assert r.returncode == 0 and "ok: version 2 active in slot a, on trial" in r.stdout, r.stdout + r.stderr
    r = run([*APPLY, "start", "--root", root])
    assert r.returncode == 0 and "version 2 committed" in r.stdout and r.stdout.rstrip().endswith("slots/a/model"), r.stdout
    r = run([*APPLY, "status", "--root", root])
    assert "active: slot a, version 2 (good)" in r.stdout and "subscription: registered True, paid True" in r.stdout
    # the router runs from the active slot (with the Hailo folder the bundle carried)
    r = run([*ROUTER, "--model-dir", f"{root}/slots/a/model", "--json", "--steps", "5"])
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] == "tflite", r.stderr
    r = run([*APPLY, "apply", "--root", root, "--bundle", str(release/"bundle-v1")])
    assert r.returncode == 1 and "version 1 is not above the installed version 2 (a rollback is refused)" in r.stderr
    # a key rotation as written: robots then refuse bundles signed by the old key, and install those of the new one
    r = run([*BUNDLE, "keygen", "--out", str(tmp_path/"keys2"), "--name", "release-2"])
    r = run([*BUNDLE, "rotate", "--trust", str(release/"trusted_keys.json"), "--old-key", str(release/"keys/release.key"),
             "--new-key", str(tmp_path/"keys2/release-2.key"), "--out", str(tmp_path/"rotation.json")])
    assert r.returncode == 0 and "key set version 2" in r.stdout, r.stderr
    r = run([*APPLY, "rotate-keys", "--root", root, "--rotation", str(tmp_path/"rotation.json")])
    assert r.returncode == 0 and "pinned key set version 2" in r.stdout, r.stderr
    r = run([*APPLY, "apply", "--root", root, "--bundle", str(release/"bundle-v3")])
    assert r.returncode == 1 and "0 valid signature(s) by trusted keys" in r.stderr
    r = run([*BUNDLE, "build", "--model-dir", str(release/"deployed"), "--key", str(tmp_path/"keys2/release-2.key"), "--version", "3",
             "--out", str(tmp_path/"v3-new-key")])
    r = run([*APPLY, "apply", "--root", root, "--bundle", str(tmp_path/"v3-new-key")])
    assert r.returncode == 0 and "ok: version 3 active in slot b" in r.stdout, r.stdout + r.stderr


def _resign(d, release, **change):
    "Re-sign `d`'s manifest with the trusted key after changing some of its signed facts."
    from continuonbrain.ota.bundle import MANIFEST, load_private_key, sign
    env = json.loads((d/MANIFEST).read_text())
    (d/MANIFEST).write_text(json.dumps(sign({**env["signed"], **change}, [load_private_key(release/"keys/release.key")])))


def _attacks(release, tmp_path) -> dict:
    "TUF's attack list (and ours) as bundle folders: name -> (folder, the reason the robot must give)."
    from continuonbrain.ota.bundle import MANIFEST, SAFETY, base_safety, generate_key, load_private_key, sign
    def copy(name):
        d = tmp_path/"attacks"/name; shutil.copytree(release/"bundle-v3", d); return d
    env = json.loads((release/"bundle-v3"/MANIFEST).read_text())
    out = {}
    d = copy("unsigned"); (d/MANIFEST).unlink(); out["unsigned"] = (d, "no such file (an unsigned bundle is refused)")
    d = copy("wrong-key"); k = load_private_key(generate_key(tmp_path/"attacker", "k")["private_path"])
    (d/MANIFEST).write_text(json.dumps(sign(env["signed"], [k]))); out["wrong key"] = (d, "0 valid signature(s) by trusted keys")
    d = copy("mix-and-match"); (d/MANIFEST).write_text(json.dumps({**env, "signed": {**env["signed"], "version": 40}}))
    out["signature over another manifest"] = (d, "0 valid signature(s)")
    d = copy("changed"); w = d/"model/weights.npz"; b = bytearray(w.read_bytes()); b[1000] ^= 1; w.write_bytes(b); out["file changed"] = (d, "altered after signing")
    d = copy("added"); (d/"model/hailo/run.sh").write_text("rm -rf /"); out["file added"] = (d, "model/hailo/run.sh is not in the signed manifest")
    d = copy("removed"); (d/"model/norm_stats.json").unlink(); out["file removed"] = (d, "model/norm_stats.json is in the signed manifest but missing")
    out["version equal"] = (release/"bundle-v2", "version 2 is not above the installed version 2")
    out["version lower"] = (release/"bundle-v1", "version 1 is not above the installed version 2")
    d = copy("huge-manifest"); (d/MANIFEST).write_bytes(b" " * (1 << 20) + b"{}"); out["manifest over 1 MiB"] = (d, "larger than the 1,048,576 bytes")
    d = copy("bad-sig-entries"); (d/MANIFEST).write_text(json.dumps({**env, "signatures": [{"keyid": []}, "x", {"keyid": "k", "sig": 5}]}))
    out["malformed signature entries"] = (d, "0 valid signature(s)")
    d = copy("fifo"); os.mkfifo(d/"model/hailo/pipe"); out["a FIFO"] = (d, "pipe: not a regular file")
    d = copy("expired"); _resign(d, release, expires="2021-06-01T00:00:00Z"); out["expired (freeze)"] = (d, "expired at 2021-06-01T00:00:00Z")
    d = copy("robot"); _resign(d, release, compatible=["continuon-rover"]); out["another robot model"] = (d, "not this robot (continuon-arm-5dof)")
    d = copy("traversal"); _resign(d, release, files=[{"path": "model/../../../../home/x", "bytes": 1, "sha256": "0" * 64}, *env["signed"]["files"]])
    out["path traversal"] = (d, "files[0] ('model/../../../../home/x'): not a safe relative path")
    d = copy("symlink"); (d/"model/hailo/model.hef").symlink_to("/dev/zero"); out["symlink"] = (d, "model.hef: a symbolic link")
    d = copy("endless"); (d/"model/step.tflite").write_bytes((d/"model/step.tflite").read_bytes() + os.urandom(1 << 20))
    out["oversized file (endless data)"] = (d, "step.tflite: larger than the")
    d = copy("loosens"); (d/SAFETY).write_text(json.dumps({**base_safety(), "joint_limits": [[-3.5, 3.5]] * 5}))
    files = [{**f, "bytes": (d/SAFETY).stat().st_size, "sha256": store.sha256(d/SAFETY)} if f["path"] == SAFETY else f for f in env["signed"]["files"]]
    _resign(d, release, files=files); out["loosens the safety rules"] = (d, "joint base_yaw: [-3.5, 3.5] goes outside the base [-2.6, 2.6]")
    d = copy("unhealthy"); (d/SAFETY).write_text(json.dumps({**base_safety(), "max_velocity": 0.001}))   # tighter, but the model breaks it
    files = [{**f, "bytes": (d/SAFETY).stat().st_size, "sha256": store.sha256(d/SAFETY)} if f["path"] == SAFETY else f for f in env["signed"]["files"]]
    _resign(d, release, files=files); out["model fails its health check"] = (d, "step(s) break velocity")   # last: it takes the slot
    return out


def test_every_attack_is_refused_and_the_installed_model_is_unchanged(release, tmp_path):
    from continuonbrain.ota.apply import JOURNAL, apply_bundle, history
    from continuonbrain.ota.bundle import BundleRefused
    from continuonbrain.ota.apply import HealthCheckFailed
    from continuonbrain.ota.apply import read_state, start
    root = robot(tmp_path, release, 1)
    apply_bundle(root, str(release/"bundle-v2"), log=lambda m: None); start(root, log=lambda m: None)
    assert read_state(root)["last_known_good"] == {"slot": "a", "version": 1}
    before = snapshot(root)
    for name, (bundle, why) in _attacks(release, tmp_path).items():
        with pytest.raises((BundleRefused, HealthCheckFailed)) as e:
            apply_bundle(root, str(bundle), log=lambda m: None)
            pytest.fail(f"{name}: installed")
        assert why in str(e.value), (name, str(e.value))
        if name != "model fails its health check": assert snapshot(root) == before, name   # both slots and the pointer untouched
        assert read_state(root)["active"] == "b" and read_state(root)["version"] == 2, name
        assert not (root/"staging").exists() and not (root/JOURNAL).exists(), name
        assert history(root, 1)[0]["event"] == "refused" and why in history(root, 1)[0]["reason"], name
    r = run([*APPLY, "apply", "--root", str(root), "--bundle", str(tmp_path/"attacks/added")])   # the exit code a user sees
    assert r.returncode == 1 and "is not in the signed manifest" in r.stderr and "Traceback" not in r.stderr
    r = run([*APPLY, "apply", "--root", str(root), "--bundle", str(tmp_path/"attacks/unhealthy")])
    assert r.returncode == 4 and "break velocity" in r.stderr


def _kill_at(argv, marker: str, delay: float = 0.0) -> bool:
    "Run `argv`, SIGKILL it `delay` s after it prints the line `marker`; whether it was still running then (it must reach the marker)."
    import time
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.strip() == marker: time.sleep(delay); os.kill(p.pid, signal.SIGKILL); break
    p.wait(timeout=120)
    assert seen and seen[-1].strip() == marker, f"it ended before {marker!r}: " + "".join(seen)
    return p.returncode == -signal.SIGKILL


@pytest.mark.parametrize("phase", ["fetching", "verified", "installing", "installed", "healthy", "switched"])
def test_sigkill_at_each_phase_of_an_apply_then_a_start(release, tmp_path, phase):
    "Killed before the switch: the next start is on version 1 (the last-known-good); killed after it: version 2, on trial, then committed."
    from continuonbrain.ota.apply import JOURNAL, read_state
    from continuonbrain.jax_models.export.export_jax import verify_manifest
    root = robot(tmp_path, release, 1)
    killed = _kill_at([*APPLY, "apply", "--root", str(root), "--bundle", str(release/"bundle-v2")], f"ota: {phase}")
    interrupted = (root/JOURNAL).exists()                                     # after the switch, it may have removed it (or ended)
    assert (killed and interrupted) or phase == "switched"
    r = run([*APPLY, "start", "--root", str(root)])
    assert r.returncode == 0, r.stdout + r.stderr
    st = read_state(root)
    want = (2, "b") if phase == "switched" else (1, "a")
    assert (st["version"], st["active"], st["status"]) == (*want, "good"), (phase, st, r.stdout)
    assert not interrupted or ("finished" if phase == "switched" else "undone") in r.stdout, r.stdout
    verify_manifest(root/"slots"/st["active"]/"model")                       # the model it runs is whole
    assert not (root/JOURNAL).exists() and not (root/"staging").exists()
    if phase != "switched": assert not (root/"slots/b").exists()


def test_a_new_model_whose_starts_crash_is_rolled_back_after_its_tries(release, tmp_path):
    "Version 2 switched in; each start is killed during its health check (as a crashing runtime would); the fourth start rolls back."
    from continuonbrain.ota.apply import apply_bundle, history, read_state
    root = robot(tmp_path, release, 1)
    apply_bundle(root, str(release/"bundle-v2"), log=lambda m: None)
    for n in (1, 2, 3):
        assert _kill_at([*APPLY, "start", "--root", str(root)], f"ota: start {n} of 3 for version 2 (on trial)")
        assert read_state(root)["boots"] == n and read_state(root)["active"] == "b"
    r = run([*APPLY, "start", "--root", str(root)])
    assert r.returncode == 0 and "rolled back from version 2 to version 1 (slot a)" in r.stdout, r.stdout + r.stderr
    assert (read_state(root)["active"], read_state(root)["version"]) == ("a", 1)
    assert history(root, 1)[0]["reason"] == "version 2 was not committed in its first 3 start(s)"
    r = run([*APPLY, "apply", "--root", str(root), "--bundle", str(release/"bundle-v2")])   # the version that failed is not taken again
    assert r.returncode == 1 and "version 2 is not above the installed version 2" in r.stderr


def test_sigkill_at_random_moments_of_an_apply_leaves_one_whole_model(release, tmp_path):
    "Killed a fixed-seed random time after each phase begins (between the markers): the next start runs version 1 or 2, whole, nothing left over."
    import random
    from continuonbrain.jax_models.export.export_jax import verify_manifest
    from continuonbrain.ota.apply import JOURNAL, read_state
    rng = random.Random(20)
    for i, phase in enumerate(["fetching", "verified", "installing", "installed", "healthy"]):
        root = robot(tmp_path/str(i), release, 1)
        _kill_at([*APPLY, "apply", "--root", str(root), "--bundle", str(release/"bundle-v2")], f"ota: {phase}", rng.uniform(0, 0.05))
        r = run([*APPLY, "start", "--root", str(root)])
        st = read_state(root)
        assert r.returncode == 0 and (st["version"], st["active"], st["status"]) in {(1, "a", "good"), (2, "b", "good")}, (phase, st, r.stdout)
        verify_manifest(root/"slots"/st["active"]/"model")
        assert not (root/JOURNAL).exists() and not (root/"staging").exists() and not list(root.glob(".*.tmp"))


def test_one_ota_command_at_a_time(release, tmp_path):
    "While one command holds the robot folder, another is refused (not interleaved); the lock dies with its holder."
    import fcntl
    root = robot(tmp_path, release, 1)
    with open(root/".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = run([*APPLY, "apply", "--root", str(root), "--bundle", str(release/"bundle-v2")])
        assert r.returncode == 2 and "another OTA command is running on this robot folder" in r.stderr, r.stderr
    r = run([*APPLY, "apply", "--root", str(root), "--bundle", str(release/"bundle-v2")])
    assert r.returncode == 0, r.stderr


def test_the_step_10_check_as_written(release, tmp_path):
    "The playbook's step-10 command refuses clearly without the robot; its --shadow mode runs anywhere, on step 9's model."
    it = [PY, "-m", "continuonbrain.tests.integration_test"]
    r = run([*it, "--real-hardware"])
    assert r.returncode == 3 and "refusing --real-hardware: this machine lacks a Raspberry Pi 5" in r.stderr
    r = run([*it, "--shadow", str(release/"deployed"), "--out", str(tmp_path/"shadow")])
    assert r.returncode == 0 and "passed: shadow test of the candidate on tflite" in r.stdout, r.stdout + r.stderr
    rep = json.loads((tmp_path/"shadow/shadow_report.json").read_text())
    assert rep["passed"] and rep["logged"]["episodes"] and rep["actions_checked"] == 2 * 60 + 6 * 60 + 100 * len(rep["logged"]["episodes"])
    assert rep["closed_loop"]["scripted"]["success_rate"] > 0.5 and (tmp_path/"shadow/shadow_report.png").read_bytes()[:4] == b"\x89PNG"
    from continuonbrain.rlds.validators import validate_paths
    results = validate_paths([tmp_path/"shadow/episodes"], check_media=False)
    assert len(results) == 2 + 6 + 6 and not [x for x in results if x.errors or x.unreadable]
    sources = {json.loads(open(x.file).read())["metadata"]["provenance"]["source"] for x in results}
    assert sources == {"mock", "policy"}
    r = run([*it, "--shadow", str(tmp_path/"nothing")])
    assert r.returncode == 2 and "nothing: not a deployed model folder (no config.json)" in r.stderr
