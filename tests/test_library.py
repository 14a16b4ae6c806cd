"""The library as a library: light imports, documented symbols, generated code in step with the notebooks."""
import importlib, inspect, json

from conftest import PY, ROOT, run

MODULES = ["config", "store", "hardware", "pi5_hardware_validation", "system_health", "tests.integration_test", "runbook", "docsite",
           "rlds.schema", "rlds.validators", "recording.arm_episode_recorder", "jax_models.data.tfrecord_converter",
           "rlds.export_pipeline", "jax_models.utils.upload_to_gcs"]
WAVECORE = ["wavecore.blocks", "wavecore.model", "wavecore.curriculum", "wavecore.train", "wavecore.eval", "wavecore.export",
            "wavecore.distill", "wavecore.selfplay", "wavecore.scale"]   # JAX modules: jax is their core
HEAVY = ["google.cloud.storage", "matplotlib", "papermill", "nbconvert", "nbdev", "tensorflow", "tensorflow_datasets", "jax", "gcp_storage_emulator"]


def test_imports_stay_light():
    "Importing any module pulls in none of the heavy packages; they load inside the functions that use them."
    code = "import sys\n" + "".join(f"import continuonbrain.{m}\n" for m in MODULES) + \
           f"print([m for m in {HEAVY!r} if m in sys.modules])"
    r = run([PY, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_exported_symbol_is_documented():
    missing = []
    for m in MODULES + WAVECORE:
        mod = importlib.import_module(f"continuonbrain.{m}")
        assert mod.__doc__, f"continuonbrain.{m} has no module docstring (the notebook's '> summary' line)"
        for name in mod.__all__:
            obj = getattr(mod, name)
            own_doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not own_doc:
                missing.append(f"{m}.{name}")
    assert missing == []


def test_module_paths_of_the_playbook_exist():
    for m in ["continuonbrain.config", "continuonbrain.hardware", "continuonbrain.pi5_hardware_validation",
              "continuonbrain.system_health", "continuonbrain.tests.integration_test", "continuonbrain.runbook",
              "continuonbrain.rlds.schema", "continuonbrain.rlds.validators", "continuonbrain.recording.arm_episode_recorder",
              "continuonbrain.jax_models.data.tfrecord_converter", "continuonbrain.rlds.export_pipeline",
              "continuonbrain.jax_models.utils.upload_to_gcs", "continuonbrain.wavecore.model", "continuonbrain.wavecore.train",
              "continuonbrain.wavecore.curriculum", "continuonbrain.wavecore.blocks", "continuonbrain.wavecore.eval",
              "continuonbrain.wavecore.export", "continuonbrain.wavecore.scale"]:
        assert importlib.util.find_spec(m), m


def test_every_notebook_exports_a_module_and_says_what_it_is():
    for nb in sorted((ROOT/"nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        src = ["".join(c["source"]) for c in cells]
        if nb.name == "index.ipynb":
            continue
        assert src[0].startswith("#| default_exp "), nb.name
        titles = [s for c, s in zip(cells, src) if c["cell_type"] == "markdown" and s.startswith("# ")]
        assert titles and "\n> " in titles[0], f"{nb.name}: needs '# Title' and a '> summary' line"


def test_cells_with_imports_hold_only_imports():
    "The docs build runs every cell that imports something (nbdev's show_doc processing), so such cells hold nothing else."
    import ast
    bad = []
    for nb in sorted((ROOT/"nbs").glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or src.startswith("#| export") or "#| export" in src.splitlines()[:2]: continue
            try: body = ast.parse("\n".join(l for l in src.splitlines() if not l.startswith("%"))).body
            except SyntaxError: continue
            kinds = {isinstance(s, (ast.Import, ast.ImportFrom)) for s in body}
            if kinds == {True, False}: bad.append(f"{nb.name} cell {i}")
    assert bad == []
