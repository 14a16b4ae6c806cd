"""The router's step against the bare backend call, per backend and preset, batch 1, measured in one process.

    python tests/bench/bench_router.py [--steps 2000] [--presets development,pi5_optimized]

For each preset: records a few simulated-arm episodes, trains 20 steps (latency does not depend on training),
exports the fp32 CPU bundle and the Hailo folder, deploys them, then for each CPU backend (LiteRT, onnxruntime,
JAX) times `InferenceRouter.step` (normalisation, state and batch handling included) and the bare backend call on
the same inputs, after a warm-up. Prints p50/p99 in ms and the ratio router / bare (target: at most 1.10), and
whether the fastest backend's p99 for pi5_optimized is under 1 ms (a 100 Hz loop leaves 10 ms; a Pi 5 core is
several times slower than this machine's). The Hailo backend is not timed: no chip here.
"""
import argparse, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from continuonbrain.recording.arm_episode_recorder import record  # noqa: E402
from continuonbrain.jax_models.data import tfrecord_converter as tfc  # noqa: E402
from continuonbrain.jax_models.policy_train import PolicySettings, train_from_folder  # noqa: E402
from continuonbrain.jax_models.export.export_jax import ExportSettings, export_bundle  # noqa: E402
from continuonbrain.jax_models.export.export_hailo import HailoSettings, export_hailo  # noqa: E402
from continuonbrain.jax_models.export.inference_router import InferenceRouter, RouterSettings, deploy, smoke  # noqa: E402


def model_dir(work: Path, preset: str) -> Path:
    "A deployed model of `preset`, trained briefly on simulated-arm episodes."
    record(work/"episodes", episodes=4, steps=60, backend="sim", progress=False)
    tfc.convert(work/"episodes", work/"tfrecord", compress=True, images=False, rlds=False, val_fraction=0.25, progress=False)
    train_from_folder(str(work/"tfrecord"), str(work/"run"), PolicySettings(preset=preset, window=32, batch_size=8, num_steps=20,
                      eval_every=20, checkpoint_every=20, log_every=20), plot=False)
    export_bundle(ExportSettings(checkpoint_path=str(work/"run"), output_path=str(work/"bundle")), log=lambda m: None)
    export_hailo(HailoSettings(checkpoint_path=str(work/"bundle"), output_dir=str(work/"hailo"), calib_rows=128), log=lambda m: None)
    deploy(work/"bundle", work/"hailo", work/"model", log=lambda m: None)
    return work/"model"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--presets", default="development,pi5_optimized")
    a = ap.parse_args()
    rows = []
    for preset in a.presets.split(","):
        md = model_dir(Path(tempfile.mkdtemp(prefix=f"bench-router-{preset}-")), preset)
        for backend in ("tflite", "onnxruntime", "jax"):
            rep = smoke(InferenceRouter(RouterSettings(model_dir=str(md), backends=backend), log=lambda m: None), a.steps)
            rows.append((preset, backend, rep))
    print(f"{'preset':14s}{'backend':12s}{'router p50':>11s}{'p99':>8s}{'bare p50':>10s}{'p99':>8s}{'router/bare p50':>17s}  (ms, batch 1, {a.steps} steps)")
    for preset, backend, r in rows:
        print(f"{preset:14s}{backend:12s}{r['router']['p50_ms']:11.3f}{r['router']['p99_ms']:8.3f}{r['bare']['p50_ms']:10.3f}"
              f"{r['bare']['p99_ms']:8.3f}{r['router_over_bare_p50']:17.2f}")
    pi5 = [r for p, _, r in rows if p == "pi5_optimized"]
    if pi5:
        best = min(pi5, key=lambda r: r["router"]["p99_ms"])
        print(f"fastest CPU backend for pi5_optimized: {best['backend']}, router p99 {best['router']['p99_ms']:.3f} ms "
              f"({'under' if best['router']['p99_ms'] < 1 else 'OVER'} the 1 ms target)")
    worst = max(r["router_over_bare_p50"] for _, _, r in rows)
    print(f"largest router/bare ratio: {worst:.2f} ({'within' if worst <= 1.10 else 'OVER'} the 1.10 target)")


if __name__ == "__main__":
    main()
