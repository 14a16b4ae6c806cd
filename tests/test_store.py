"""The artefact store against a real GCS emulator process, and atomic local writes under SIGKILL."""
import hashlib, json, os, signal, subprocess

import pytest

from conftest import BIN, PY, run
from continuonbrain import store


def test_gcs_round_trip(gcs):
    data = os.urandom(3 * (1 << 20) + 17)   # larger than one streaming chunk
    uri = store.write_bytes("gs://continuon-test/t1/blob.bin", data)
    assert store.read_bytes(uri) == data
    assert store.sha256(uri) == hashlib.sha256(data).hexdigest()
    assert store.size(uri) == len(data)
    store.verify(uri, hashlib.sha256(data).hexdigest())
    with pytest.raises(store.ChecksumMismatch, match="gs://continuon-test/t1/blob.bin: sha256 is"):
        store.verify(uri, "0" * 64)
    assert store.read_bytes(uri, limit=len(data)) == data                  # a reader's limit (endless data is cut off there)
    with pytest.raises(store.TooLarge, match=f"blob.bin: {len(data):,} bytes, larger than the {len(data) - 1:,} bytes allowed"):
        store.read_bytes(uri, limit=len(data) - 1)                          # refused from its size, before it is read
    store.write_bytes("gs://continuon-test/t1/empty.bin", b"")
    assert store.read_bytes("gs://continuon-test/t1/empty.bin", limit=0) == b""


def test_gcs_listing_is_a_folder_not_a_string_prefix(gcs):
    for name in ("runs/a/x.json", "runs/a/sub/y.json", "runs/ab/z.json"):
        store.write_json(f"gs://continuon-test/{name}", {"name": name})
    assert store.ls("gs://continuon-test/runs/a") == ["gs://continuon-test/runs/a/sub/y.json", "gs://continuon-test/runs/a/x.json"]
    assert store.ls("gs://continuon-test/runs/a/") == store.ls("gs://continuon-test/runs/a")
    assert store.ls("gs://continuon-test/runs/a/x.json") == ["gs://continuon-test/runs/a/x.json"]   # like a local file path
    with pytest.raises(store.ArtefactNotFound, match="runs/none: no objects under this prefix"):   # like a missing folder
        store.ls("gs://continuon-test/runs/none")


def test_gcs_missing_object_and_bucket(gcs):
    with pytest.raises(store.ArtefactNotFound, match="gs://continuon-test/nothing/here.json: no such object"):
        store.read_json("gs://continuon-test/nothing/here.json")
    with pytest.raises(FileNotFoundError):
        store.sha256("gs://no-such-bucket/x.bin")
    with pytest.raises(store.ArtefactNotFound):
        store.delete("gs://continuon-test/nothing/here.json")
    assert not store.exists("gs://continuon-test/nothing/here.json")


def test_copy_between_local_and_gcs(gcs, tmp_path):
    src = tmp_path/"a.txt"
    src.write_text("episode data")
    store.copy(src, "gs://continuon-rlds/copy/a.txt")
    store.copy("gs://continuon-rlds/copy/a.txt", "gs://continuon-rlds/copy/b.txt")
    store.copy("gs://continuon-rlds/copy/b.txt", tmp_path/"back/b.txt")
    assert (tmp_path/"back/b.txt").read_text() == "episode data"
    assert store.sha256(tmp_path/"back/b.txt") == store.sha256(src)


def test_clean_bucket_removes_only_stale_temporary_files(gcs):
    "`continuon clean-bucket` against the emulator: a dry run lists, a fresh temporary file is kept, then only temporary files go."
    base = "gs://continuon-test/runs/r1"
    for p in ("startup-script.sh", "checkpoints/8/state", "checkpoints/16.orbax-checkpoint-tmp-7/state", "upload.json.tmp", "keep/startup-script.sh.md"):
        store.write_text(f"{base}/{p}", "x")
    cmd = [str(BIN/"continuon"), "clean-bucket", base]
    r = run(cmd)                                                            # all fresh: a run may still be writing them
    assert r.returncode == 0 and "0 stale temporary file(s)" in r.stdout, r.stderr
    r = run([*cmd, "--older-than-minutes", "0", "--dry-run"])
    assert r.returncode == 0 and r.stdout.count("would remove ") == 3 and len(store.ls(base)) == 5, r.stdout
    r = run([*cmd, "--older-than-minutes", "0"])
    assert r.returncode == 0 and f"removed {base}/startup-script.sh" in r.stdout, r.stdout + r.stderr
    assert store.ls(base) == [f"{base}/checkpoints/8/state", f"{base}/keep/startup-script.sh.md"]
    r = run([*cmd[:2], "gs://continuon-test/nothing-here"])
    assert r.returncode == 2 and "no objects under this prefix" in r.stderr


def test_cli_writes_its_report_to_gcs(gcs):
    "A playbook command with a gs:// output, as a separate process talking to the emulator."
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--log-json", "gs://continuon-test/reports/pi5_check.json",
             "--alignment-steps", "3"])
    assert "report written to gs://continuon-test/reports/pi5_check.json" in r.stdout, r.stderr
    report = store.read_json("gs://continuon-test/reports/pi5_check.json")
    assert [c["name"] for c in report["checks"]][0] == "board"
    assert r.returncode == (0 if report["ok"] else 1)


def test_dead_gcs_server_is_refused_before_the_work(tmp_path):
    "A gs:// report target whose server does not answer: the command fails in one line before running its checks."
    from continuonbrain.store import free_port
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--log-json", "gs://continuon-rlds/reports/x.json"],
            env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"}, timeout=300)
    assert r.returncode == 3 and r.stdout == "", r.stdout                  # storage that cannot be reached: cannot go on here
    assert r.stderr.startswith("error: gs://continuon-rlds/reports/x.json: "), r.stderr
    assert "cannot reach 127.0.0.1" in r.stderr or "gave up" in r.stderr, r.stderr


def test_no_credentials_is_a_clear_error(tmp_path):
    "Without the emulator and without credentials, gs:// access names the fix (a subprocess, no network used)."
    code = ("from continuonbrain import store\n"
            "try: store.read_bytes('gs://continuon-rlds/x')\n"
            "except store.StoreError as e: print(e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path/"gcloud"), GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="True")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "no Google Cloud credentials for gs:// access" in r.stdout, r.stdout + r.stderr


WRITER = """
import sys, time
from continuonbrain.store import atomic_file
with atomic_file(sys.argv[1]) as f:
    f.write(b"new version, first half ")
    f.flush()
    print("ready", flush=True)
    time.sleep(60)
    f.write(b"second half")
"""


def test_sigkill_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path/"metrics.json"
    store.write_json(target, {"version": 1})
    p = subprocess.Popen([PY, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"version": 1}
    assert store.ls(tmp_path) == [str(target)]   # the orphaned temporary file is not listed as an artefact
