"""The library as a library: light imports, documented symbols, generated code in step with the notebooks."""
import importlib, inspect, json

from conftest import PY, ROOT, run

MODULES = ["config", "store", "hardware", "pi5_hardware_validation", "system_health", "tests.integration_test", "runbook", "docsite",
           "rlds.schema", "rlds.validators", "recording.arm_episode_recorder", "jax_models.data.tfrecord_converter",
           "rlds.export_pipeline", "jax_models.utils.upload_to_gcs", "training", "jax_models.data.windows", "jax_models.export.hailo_compile",
           "ota.bundle", "ota.apply", "ota.shadow", "api.state", "api.page", "api.server"]
WAVECORE = ["wavecore.blocks", "wavecore.model", "wavecore.curriculum", "wavecore.train", "wavecore.eval", "wavecore.export",
            "wavecore.distill", "wavecore.selfplay", "wavecore.scale", "wavecore.bench_tasks", "jax_models.core_model", "jax_models.policy_train",
            "jax_models.train.local_sanity_check", "jax_models.train.cloud.tpu_train", "jax_models.evaluate",
            "trainer.local_lora_trainer", "jax_models.export.export_jax", "jax_models.export.export_hailo",
            "jax_models.export.inference_router"]   # JAX modules: jax is their core
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
              "continuonbrain.wavecore.export", "continuonbrain.wavecore.scale", "continuonbrain.jax_models.export.export_jax",
              "continuonbrain.jax_models.export.export_hailo", "continuonbrain.jax_models.export.inference_router",
              "continuonbrain.ota.bundle", "continuonbrain.ota.apply", "continuonbrain.ota.shadow", "continuonbrain.api",
              "continuonbrain.api.__main__"]:
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


CLI_MODULES = ("local_sanity_check", "tpu_train", "local_lora_trainer")   # thin commands: no module builds on them


def _generated():
    import ast
    for p in sorted((ROOT/"continuonbrain").rglob("*.py")):
        if p.name != "_modidx.py": yield p, ast.parse(p.read_text())


def test_no_module_imports_a_command_module_or_another_modules_private_name():
    "One home for each piece of logic: commands are thin and nothing reaches into another module's `_private` names."
    import ast
    bad = []
    for p, tree in _generated():
        modules = set()                                            # names bound to a continuonbrain module in this file
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                last = n.module.split(".")[-1]
                if last in CLI_MODULES and last != p.stem: bad.append(f"{p}:{n.lineno} imports the command module {n.module}")
                bad += [f"{p}:{n.lineno} imports {a.name} from {n.module}" for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]
                pkg = (ROOT/"continuonbrain").joinpath(*n.module.split(".")[1:]) if n.module.startswith("continuonbrain") else None
                modules |= {a.asname or a.name for a in n.names if pkg is not None and (pkg/f"{a.name}.py").is_file()}
            if isinstance(n, ast.Import):
                modules |= {a.asname for a in n.names if a.name.startswith("continuonbrain") and a.asname}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                bad.append(f"{p}:{n.lineno} uses {n.value.id}.{n.attr}")
    assert bad == []


def test_functions_stay_under_60_lines():
    import ast
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, tree in _generated()
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_one_definition_of_each_training_piece():
    "One checkpoint layer, one resume check, one memory budget, one thermal guard, one optimizer, one TrainError."
    import ast
    pieces = {"Checkpoints", "check_resume", "check_budget", "over_budget", "ThermalGuard", "make_optimizer", "TrainError",
              "MemoryBudgetError", "params_digest", "rss_bytes", "RESUME_KEYS", "ExportError"}
    homes = {}
    for p, tree in _generated():
        for n in tree.body:
            names = [n.name] if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else [t.id for t in getattr(n, "targets", []) if isinstance(t, ast.Name)]
            for name in set(names) & pieces: homes.setdefault(name, []).append(str(p.relative_to(ROOT)))
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}
    assert all(v == ["continuonbrain/training.py"] for k, v in homes.items() if k != "ExportError"), homes   # ExportError: the model exporters'
