"""WaveCore training and step-latency benchmark: ratios against references measured in the same run.

    .venv/bin/python tests/bench/bench_wavecore.py [--torch-python /path/to/python-with-torch]

Measures, on this machine:
- the matmul peak (a 1024x1024 float32 matmul, jitted), the reference for model FLOP utilisation (MFU): the table's
  MFU is against the best matmul window of the run, the hybrid's target MFU against the same matmul timed in
  alternating windows with its training step (`paired_mfu`), so the VM's drift cancels;
- training throughput (tokens/s, and matmul FLOP/s counted from the training step's jaxpr: forward, backward and
  optimizer) of the toy configuration (vocab 512, d_model 128, 2 layers, seq 64, batch 16, AdamW) for the hybrid
  `ssm,attention`, pure `attention`, pure `ssm` and the causal `spectral` stacks, on one XLA device and data parallel
  over one device per core (what `seed_train --devices 0` does: `cpu_devices`, `data_mesh`);
- the same for a plain PyTorch model of the original toy (tests/bench/torch_toy.py, run with --torch-python: torch is
  not in the workbook's lock; install it in its own environment: python3.11 -m venv .bench && .bench/bin/pip install
  torch==2.13.0), whose FLOP/s come from torch's FlopCounterMode (matmuls, forward and backward); the hybrid and the
  toy are timed in alternating windows (the toy in a server process, waiting while the hybrid runs), and the ratios
  are the median of the per-pair ratios, so the VM's drifting speed (10-30% within minutes) cancels out;
- the `ssm` block against the `attention` block at equal width for T = 64, 128 and 256 (alternating windows too);
- one step of the `fast` profile at batch 1, p50 and p99: JAX (`step_fn`, and the resident `JaxStep`) in a fresh
  process with inline dispatch, the exported TFLite (LiteRT, XNNPACK) and ONNX (onnxruntime), as `latency_report`
  measures them; the same JAX steps in this process with JAX's default async dispatch; and `step_fn`'s parameters as
  a flat list against an `nnx.State` argument (alternating rounds);
- minor page faults per training step (`getrusage`): memory that glibc's malloc mmaps fresh and frees every step.
The script restarts itself under jemalloc, as the training commands do (CONTINUON_JEMALLOC=0 for glibc's malloc); the
PyTorch toy runs with the environment it would have without us (no LD_PRELOAD, no MALLOC_CONF).
FFT work is not counted as FLOPs on either side (neither counter sees it), so FLOP/s compare the matmul work.
Every training time is the median of several timing windows (this VM's speed wanders); torch_toy.py does the same.
"""
import argparse, json, os, resource, subprocess, tempfile, time
from pathlib import Path

from continuonbrain.config import allocator, restart_with_jemalloc
if __name__ == "__main__": restart_with_jemalloc()   # the training commands' allocator (nbs/00_config.ipynb), before JAX loads

import numpy as np
import jax
from flax import nnx

from continuonbrain.wavecore.model import WaveCoreConfig, create_model, format_rows
from continuonbrain.training import make_optimizer
from continuonbrain.wavecore.train import cpu_devices, data_mesh, make_train_step, on_mesh

HERE = Path(__file__).parent


def dot_flops(jaxpr) -> int:
    "2 x output size x contracted size, summed over every dot_general in a (closed) jaxpr, sub-jaxprs included."
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([eqn.invars[0].aval.shape[i] for i in lc]))
        for v in eqn.params.values():
            for j in (v if isinstance(v, (list, tuple)) else [v]):
                if hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"): total += dot_flops(j.jaxpr)
                elif hasattr(j, "eqns"): total += dot_flops(j)
    return total


def matmul_runner(n: int = 1024):
    "A jitted n x n float32 matmul, warmed up: `(window, flops)`, where `window(reps)` runs it `reps` times and returns seconds per call."
    a = jax.random.normal(jax.random.key(0), (n, n)); b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    def window(reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps): f(a, b).block_until_ready()
        return (time.perf_counter() - t0) / reps
    return window, 2 * n ** 3


def matmul_peak(n: int = 1024, reps: int = 10, windows: int = 10) -> float:
    "FLOP/s of a jitted n x n float32 matmul: the best of `windows` timings of `reps` calls (a peak is the best the VM gives)."
    window, flops = matmul_runner(n)
    return flops / min(window(reps) for _ in range(windows))


def paired_mfu(window, flops: int, rounds: int = 15, per: int = 10) -> dict:
    """MFU with its reference beside it: `per` training steps and `per` 1024^3 matmuls in alternating windows, `rounds`
    times (each goes first in every other pair); the median of the per-pair ratios of matmul FLOP/s, so the VM's
    drifting speed cancels as it does against the PyTorch toy. (The table's MFU divides a median by the best matmul
    window of the run, which the VM may not give while the row is timed.)"""
    mm, mm_flops = matmul_runner()
    pairs = []
    for i in range(rounds):
        pairs.append((window(per), mm(per)) if i % 2 == 0 else tuple(reversed((mm(per), window(per)))))
    step, mat = np.array(pairs).T
    return {"mfu": float(np.median((flops / step) / (mm_flops / mat))), "matmul_flops_per_s": mm_flops / float(np.median(mat)),
            "flops_per_s": flops / float(np.median(step)), "rounds": rounds, "per": per}


def train_runner(cfg: WaveCoreConfig, batch: int, seq: int, parallel: bool = False):
    "A compiled training step, warmed up: `(window, flops_per_step, devices)`, where `window(n)` runs n steps and returns seconds per step."
    model = create_model(cfg)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(1e-3, 10_000, warmup=10)
    mesh = data_mesh(batch) if parallel else None
    params = on_mesh(params, mesh)
    opt = tx.init(params)
    rng = np.random.default_rng(0)
    b = {"inputs": rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32),
         "targets": rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32), "mask": np.ones((batch, seq), np.float32)}
    flops = dot_flops(jax.make_jaxpr(make_train_step(graphdef, tx))(params, opt, b).jaxpr)   # the whole batch's work
    compiled = make_train_step(graphdef, tx, mesh=mesh).lower(params, opt, b).compile()
    state = [params, opt]
    def window(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n): state[0], state[1], _ = compiled(state[0], state[1], b)
        jax.block_until_ready(state[0])
        return (time.perf_counter() - t0) / n
    window(10)
    return window, flops, 1 if mesh is None else mesh.size


def train_throughput(cfg: WaveCoreConfig, batch: int, seq: int, steps: int = 100, parallel: bool = False, windows: int = 5) -> dict:
    """Tokens/s and matmul FLOP/s of the training step: the median of `windows` timings of `steps / windows` steps each;
    and the process's minor page faults per step over those windows (fresh memory the kernel had to map and zero)."""
    window, flops, devices = train_runner(cfg, batch, seq, parallel)
    n, f0 = max(1, steps // windows), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    dt = float(np.median([window(n) for _ in range(windows)]))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (n * windows)
    return {"step_s": dt, "tokens_per_s": batch * seq / dt, "flops_per_step": flops, "flops_per_s": flops / dt, "devices": devices,
            "faults_per_step": faults}


def step_latency_ratio(model, n: int = 2000, rounds: int = 10) -> dict:
    """The `fast` step as `step_fn` compiles it (parameters as a flat list of arrays) against the same step taking the
    parameters as an `nnx.State` (as it did before), in alternating rounds: medians in ms and the ratio of the medians."""
    from continuonbrain.wavecore.model import step_fn, time_calls
    step, leaves = step_fn(model)
    graphdef, params = nnx.split(model)
    ref = jax.jit(lambda p, s, x: nnx.merge(graphdef, p).step(s, x))
    state, x = model.init_state(1), np.zeros((1,), np.int32)
    a, b = [], []
    for _ in range(rounds):
        a.append(time_calls(step, n // rounds, leaves, state, x)); b.append(time_calls(ref, n // rounds, params, state, x))
    a, b = np.concatenate(a), np.concatenate(b)
    return {"list_p50_ms": float(np.median(a) * 1e3), "state_p50_ms": float(np.median(b) * 1e3), "speedup": float(np.median(b) / np.median(a))}


TORCH_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}   # torch as users run it


def paired_with_torch(torch_python: str, window, flops: int, tokens: int, rounds: int = 15, per: int = 10) -> dict:
    """The PyTorch toy (torch_toy.py --serve) and a WaveCore step timed in alternating windows of `per` steps, `rounds`
    times: each pair sees the same machine speed, so the median of the paired ratios does not wander with the VM."""
    p = subprocess.Popen([torch_python, str(HERE/"torch_toy.py"), "--serve=1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=TORCH_ENV)
    try:
        info = json.loads(p.stdout.readline())
        def torch_window(n):
            p.stdin.write(f"{n}\n"); p.stdin.flush()
            return json.loads(p.stdout.readline())["step_s"]
        def settled(f, n):   # let the other side's idle worker threads stop spinning before a window starts
            time.sleep(0.2)
            return f(n)
        torch_window(per)
        pairs = [(settled(window, per), settled(torch_window, per)) for _ in range(rounds)]
    finally:
        p.stdin.close()   # the server's loop ends
        try: p.wait(timeout=60)
        except subprocess.TimeoutExpired: p.kill()
    jx, tt = np.array(pairs).T
    speed = float(np.median(tt / jx))   # WaveCore tokens/s over torch tokens/s, per pair (both steps see `tokens` tokens)
    return {"torch": info, "torch_tokens_per_s": tokens / float(np.median(tt)), "jax_tokens_per_s": tokens / float(np.median(jx)),
            "torch_flops_per_s": info["flops_per_step"] / float(np.median(tt)), "tokens_ratio": speed,
            "flops_ratio": speed * flops / info["flops_per_step"], "rounds": rounds, "per": per}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-python", default=os.environ.get("BENCH_TORCH_PYTHON", ""))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--latency-only", action="store_true", help="measure only the fast profile's step latency")
    a = ap.parse_args()
    n_dev = cpu_devices()   # one XLA device per core, before anything starts JAX
    print(f"allocator: {allocator()}")
    if not a.latency_only: training(a, n_dev)
    latency()


def training(a, n_dev: int):
    "The training part: throughput against the PyTorch toy, MFU, data parallel against one device, ssm against attention."
    peak0 = matmul_peak()
    toy = WaveCoreConfig.profile("toy")
    rows, res = [], {}
    for name, pattern in (("hybrid ssm,attention", "ssm,attention"), ("attention", "attention"), ("ssm", "ssm"), ("spectral", "spectral")):
        for parallel in (False, True) if n_dev > 1 else (False,):
            r = train_throughput(WaveCoreConfig(**{**toy.to_dict(), "pattern": pattern}), 16, 64, a.steps, parallel)
            res[name, parallel] = r
            rows.append({"model": f"WaveCore {name}", "devices": r["devices"], "tokens/s": round(r["tokens_per_s"]),
                         "GFLOP/s": round(r["flops_per_s"] / 1e9, 2), "page faults/step": round(r["faults_per_step"])})
    peak = max(peak0, matmul_peak())   # before and after the rows: the VM's speed drifts
    print(f"JAX matmul peak (1024^3 float32, best window before and after): {peak / 1e9:.1f} GFLOP/s")
    for row, r in zip(rows, res.values()): row["MFU"] = round(r["flops_per_s"] / peak, 3)
    par = n_dev > 1   # the targets are read off the data-parallel rows when there are several cores
    pair = None
    window, flops, _ = train_runner(WaveCoreConfig(**{**toy.to_dict(), "pattern": "ssm,attention"}), 16, 64, par)
    mfu = paired_mfu(window, flops)
    if a.torch_python and Path(a.torch_python).exists():
        try:
            alone = json.loads(subprocess.run([a.torch_python, str(HERE/"torch_toy.py"), f"--steps={a.steps}"], capture_output=True,
                                              text=True, check=True, env=TORCH_ENV).stdout.strip().splitlines()[-1])
            pair = paired_with_torch(a.torch_python, window, flops, 16 * 64)
            print(f"torch toy alone just before (median of 5 windows): {alone['tokens_per_s']:,.0f} tokens/s; "
                  f"in the alternating windows: {pair['torch_tokens_per_s']:,.0f}")
        except Exception as e:   # a broken torch environment: say so, measure the rest
            print(f"torch reference failed: {e!r}")
        if pair:
            t = pair["torch"]
            rows.append({"model": f"PyTorch original toy (torch {t['torch']})", "devices": f"{t['threads']} threads",
                         "tokens/s": round(pair["torch_tokens_per_s"]), "GFLOP/s": round(pair["torch_flops_per_s"] / 1e9, 2),
                         "page faults/step": "", "MFU": round(pair["torch_flops_per_s"] / t["matmul_peak_flops"], 3)})
    else:
        print("torch reference not measured: pass --torch-python (an interpreter with torch==2.13.0)")
    print("\nTraining at the toy size (vocab 512, d_model 128, 2 layers, seq 64, batch 16, AdamW)")
    print(format_rows(rows))
    if pair:
        print(f"\nhybrid vs PyTorch toy, {pair['rounds']} alternating windows of {pair['per']} steps each "
              f"(hybrid {pair['jax_tokens_per_s']:,.0f} tokens/s, torch {pair['torch_tokens_per_s']:,.0f}): "
              f"{pair['flops_ratio']:.2f}x FLOP/s, {pair['tokens_ratio']:.2f}x tokens/s (target >= 1.0)")
    if n_dev > 1:
        print(f"data parallel over {n_dev} devices against one: " + ", ".join(
            f"{k} {res[k, True]['tokens_per_s'] / res[k, False]['tokens_per_s']:.2f}x" for k, p in res if p))
    print(f"MFU against the run's best matmul window: attention {res['attention', par]['flops_per_s'] / peak:.1%}, "
          f"hybrid {res['hybrid ssm,attention', par]['flops_per_s'] / peak:.1%}")
    print(f"MFU of the hybrid paired with the matmul, {mfu['rounds']} alternating windows of {mfu['per']} each "
          f"(hybrid {mfu['flops_per_s'] / 1e9:.1f} GFLOP/s, matmul {mfu['matmul_flops_per_s'] / 1e9:.1f}): {mfu['mfu']:.1%} (target >= 50%)")
    print(f"\nssm block vs attention block, equal width (d_model 128, 2 layers, batch 16, {'data parallel' if par else 'one device'}), tokens/s")
    sr = []
    for t in (64, 128, 256):   # alternating windows, as against torch: the median of the per-pair ratios
        base = {**toy.to_dict(), "seq_len": t}
        ws, _, _ = train_runner(WaveCoreConfig(**{**base, "pattern": "ssm"}), 16, t, par)
        wa, _, _ = train_runner(WaveCoreConfig(**{**base, "pattern": "attention"}), 16, t, par)
        pairs = []
        for i in range(max(4, a.steps // 5)):   # each goes first in every other pair
            pairs.append((ws(5), wa(5)) if i % 2 == 0 else tuple(reversed((wa(5), ws(5)))))
        pairs = np.array(pairs)
        sr.append({"T": t, "ssm tokens/s": round(16 * t / np.median(pairs[:, 0])), "attention tokens/s": round(16 * t / np.median(pairs[:, 1])),
                   "ratio": round(float(np.median(pairs[:, 1] / pairs[:, 0])), 2)})
    print(format_rows(sr), "\n(target: ratio >= 0.8)")


def latency():
    "The step-latency part: the fast profile at batch 1 in every runtime."
    from continuonbrain.wavecore.export import jax_step_latency, latency_report
    fast = create_model(WaveCoreConfig.profile("fast"))
    lat = latency_report(fast, tempfile.mkdtemp(), n=2000)
    print("\nfast profile, one step at batch 1, JAX in a fresh process with inline dispatch "
          "(targets: p99 <= 0.1 ms for JAX, <= 0.05 ms for LiteRT)")
    print(format_rows(lat))
    print("the same JAX steps in this process, with JAX's default async dispatch: " + "; ".join(
        f"{k} p50 {np.median(t) * 1e3:.3f} ms, p99 {np.percentile(t, 99) * 1e3:.3f} ms" for k, t in jax_step_latency(fast, 2000).items()))
    r = step_latency_ratio(fast)
    print(f"JAX step with the parameters as a flat list (step_fn) against an nnx.State argument, alternating: "
          f"p50 {r['list_p50_ms']:.3f} ms against {r['state_p50_ms']:.3f} ms, {r['speedup']:.2f}x")


if __name__ == "__main__":
    main()
