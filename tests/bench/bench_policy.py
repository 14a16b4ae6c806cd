"""CoreModel training throughput per preset, and data-parallel scaling over 1 to 8 simulated devices.

    .venv/bin/python tests/bench/bench_policy.py [--batch 32] [--window 64] [--scaling-preset development]

Measures, in one process, the training step that `tpu_train` runs (`make_policy_step` with the trainer's shardings):
- for each preset at one device: steps/s and examples (windows)/s, and the ratio to the `development` preset;
- for one preset at a fixed global batch: examples/s on 1, 2, 4 and 8 devices of one mesh, and the ratio to one device.
The 8 devices are simulated (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set here before JAX starts) and
share this machine's cores, so the scaling ratios show what splitting a batch costs or gains on a CPU; TPU chips
would each bring their own compute. Each figure is the median of several timing windows (this VM's speed wanders).
"""
import argparse, os, sys, time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from continuonbrain.jax_models.core_model import PRESETS, CoreModelConfig, create_policy, make_policy_step, random_batch  # noqa: E402
from continuonbrain.jax_models.policy_train import make_mesh, state_shardings  # noqa: E402
from continuonbrain.training import make_optimizer  # noqa: E402


def steps_per_s(preset: str, batch: int, window: int, devices: int, shard: bool = False, windows: int = 5,
                min_seconds: float = 1.0) -> float:
    "Median steps/s over `windows` timing windows of at least `min_seconds` each, after a compile and warm-up."
    cfg = CoreModelConfig.preset(preset)
    if window > cfg.backbone.seq_len: cfg = CoreModelConfig.preset(preset, seq_len=window)
    mesh = make_mesh(devices)
    graphdef, params, rest = nnx.split(create_policy(cfg, 0), nnx.Param, ...)
    tx = make_optimizer(1e-4, 10_000)
    p_sh, o_sh = state_shardings(params, mesh, shard), state_shardings(jax.eval_shape(tx.init, params), mesh, shard)
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    r_sh = jax.tree.map(lambda _: rep, rest)
    params, rest = jax.device_put(params, p_sh), jax.device_put(rest, r_sh)
    opt = jax.jit(tx.init, out_shardings=o_sh)(params)
    step = make_policy_step(graphdef, tx, shardings=(p_sh, r_sh, o_sh, rows))
    b = jax.device_put(random_batch(cfg, batch, window, seed=0, episode_len=window // 2), rows)
    for _ in range(3): params, opt, loss = step(params, rest, opt, b)
    loss.block_until_ready()
    rates = []
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            params, opt, loss = step(params, rest, opt, b); n += 1
        loss.block_until_ready()
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--scaling-preset", default="development")
    ap.add_argument("--scaling-batch", type=int, default=64)
    ap.add_argument("--presets", default=",".join(PRESETS))
    a = ap.parse_args()
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices ({os.cpu_count()} cores); batch {a.batch} windows of {a.window}")
    print(f"\n{'preset':<15}{'steps/s':>10}{'windows/s':>12}{'vs development':>16}")
    ref = None
    for name in a.presets.split(","):
        r = steps_per_s(name, a.batch, a.window, devices=1)
        ref = ref or (r if name == "development" else None)
        print(f"{name:<15}{r:>10.2f}{r * a.batch:>12.1f}{(f'{r / ref:.3f}x' if ref else '-'):>16}", flush=True)
    print(f"\ndata parallel, {a.scaling_preset}, global batch {a.scaling_batch}:")
    print(f"{'devices':>8}{'steps/s':>10}{'windows/s':>12}{'vs 1 device':>14}{'  FSDP windows/s':>17}")
    one = None
    for n in (1, 2, 4, 8):
        if n > jax.device_count(): break
        r = steps_per_s(a.scaling_preset, a.scaling_batch, a.window, devices=n)
        f = steps_per_s(a.scaling_preset, a.scaling_batch, a.window, devices=n, shard=True) if n > 1 else r
        one = one or r
        print(f"{n:>8}{r:>10.2f}{r * a.scaling_batch:>12.1f}{r / one:>13.3f}x{f * a.scaling_batch:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
