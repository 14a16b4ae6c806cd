"""Playbook step 1: the three commands exactly as the playbook writes them, and against fixture machines."""
import json
from pathlib import Path

from conftest import PY, run
from continuonbrain.hardware import board_model, is_raspberry_pi

ON_PI = is_raspberry_pi(board_model())


def test_pi5_hardware_validation_as_written():
    out = Path("/tmp/pi5_check.json")
    out.unlink(missing_ok=True)
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--log-json", "/tmp/pi5_check.json"])
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == ["board", "temperature", "throttling", "memory", "disk", "hailo", "cameras", "i2c", "timing"]
    assert all(c["status"] in ("pass", "warn", "fail", "skipped") and c["reason"] for c in report["checks"])
    assert r.returncode == (0 if report["ok"] else 1), r.stdout + r.stderr
    if not ON_PI:
        assert r.returncode == 0
        assert "This is not a Raspberry Pi" in r.stdout
        assert {c["name"]: c["status"] for c in report["checks"]}["hailo"] == "skipped"


def test_require_pi_fails_off_a_pi(machine):
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--require-pi", "--root", str(machine("not-pi"))])
    assert r.returncode == 1
    assert "board        FAIL    not a Raspberry Pi (no device-tree board model)" in r.stdout


def test_validation_on_fixture_machines(machine, tmp_path):
    expect = {  # fixture -> (exit code, {check: status})
        "pi5-hailo8l": (0, {"board": "pass", "throttling": "pass", "hailo": "pass", "cameras": "pass", "i2c": "pass"}),
        "pi5-nohat": (0, {"board": "pass", "hailo": "warn"}),
        "pi5-throttled": (1, {"temperature": "fail", "throttling": "fail"}),
        "not-pi": (0, {"board": "skipped", "throttling": "skipped", "hailo": "skipped"}),
    }
    for kind, (code, statuses) in expect.items():
        out = tmp_path/f"{kind}.json"
        r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--root", str(machine(kind)), "--log-json", str(out),
                 "--alignment-steps", "5"])
        got = {c["name"]: c["status"] for c in json.loads(out.read_text())["checks"]}
        assert r.returncode == code, (kind, r.stdout)
        assert {k: got[k] for k in statuses} == statuses, (kind, got)


def test_system_health_quick_as_written():
    r = run([PY, "-m", "continuonbrain.system_health", "--quick"])
    assert r.returncode in (0, 1), r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["temperature", "throttling", "memory", "disk", "hailo", "advice", "status"]
    assert (r.returncode == 1) == lines[-1].split()[1].startswith("CRITICAL")


def test_system_health_exits_1_when_critical(machine):
    "A critical reading is a failed check: exit code 1 (the README's table)."
    r = run([PY, "-m", "continuonbrain.system_health", "--quick", "--root", str(machine("pi5-throttled"))])
    assert r.returncode == 1
    assert "CRITICAL: temperature 84.5 °C; under_voltage now; throttled now" in r.stdout
    assert "advice       pause" in r.stdout


def test_integration_test_as_written():
    r = run([PY, "-m", "continuonbrain.tests.integration_test"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("6 passed, 0 failed")
    assert "FAIL" not in r.stdout


def test_integration_test_real_hardware_refuses_without_robot(tmp_path):
    from continuonbrain.hardware import FixtureSpec, write_fixture_tree
    bare_pc = write_fixture_tree(tmp_path/"pc", FixtureSpec(model=None, throttled=None, hailo_arch=None, camera=None, i2c=()))
    r = run([PY, "-m", "continuonbrain.tests.integration_test", "--real-hardware", "--root", str(bare_pc)])
    assert r.returncode == 3                                              # cannot run here
    assert r.stdout == ""
    for part in ("a Raspberry Pi 5 (board model: none)", "/dev/hailo*", "hailortcli", "a camera", "/dev/i2c-1"):
        assert part in r.stderr, r.stderr
    if not ON_PI:
        r = run([PY, "-m", "continuonbrain.tests.integration_test", "--real-hardware"])
        assert r.returncode == 3 and "refusing --real-hardware" in r.stderr


def test_mock_sensors_time_the_loop(machine, tmp_path):
    out = tmp_path/"r.json"
    run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--root", str(machine("pi5-hailo8l")), "--mock-sensors",
         "--alignment-steps", "10", "--log-json", str(out)])
    timing = json.loads(out.read_text())["checks"][-1]
    assert timing["name"] == "timing" and timing["data"]["samples"] == 30 and timing["reason"].startswith("mock sensors: ")


def test_unwritable_report_is_refused_before_the_checks():
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--log-json", "/proc/nope/pi5_check.json"])
    assert r.returncode == 2 and r.stdout == ""                           # bad input
    assert r.stderr.strip() == "error: /proc/nope/pi5_check.json: cannot create its folder (No such file or directory)"


def test_bad_flags_are_usage_errors():
    r = run([PY, "-m", "continuonbrain.pi5_hardware_validation", "--log_json", "/tmp/x.json"])
    assert r.returncode == 2 and "unrecognized arguments: --log_json" in r.stderr
