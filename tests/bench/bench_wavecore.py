"""WaveCore training and step-latency benchmark: ratios against references measured in the same run.

    .venv/bin/python tests/bench/bench_wavecore.py [--torch-python /path/to/python-with-torch]

Measures, on this machine:
- the matmul peak (a 1024x1024 float32 matmul, jitted), the reference for model FLOP utilisation (MFU);
- training throughput (tokens/s, and matmul FLOP/s counted from the training step's jaxpr: forward, backward and
  optimizer) of the toy configuration (vocab 512, d_model 128, 2 layers, seq 64, batch 16, AdamW) for the hybrid
  `ssm,attention`, pure `attention`, pure `ssm` and the causal `spectral` stacks, on one XLA device and data parallel
  over one device per core (what `seed_train --devices 0` does: `cpu_devices`, `data_mesh`);
- the same for a plain PyTorch model of the original toy (tests/bench/torch_toy.py, run with --torch-python: torch is
  not in the workbook's lock; install it in its own environment: python3.11 -m venv .bench && .bench/bin/pip install
  torch==2.13.0), whose FLOP/s come from torch's FlopCounterMode (matmuls, forward and backward);
- the `ssm` block against the `attention` block at equal width for T = 64, 128 and 256;
- one step of the `fast` profile at batch 1: jitted JAX and the exported TFLite (LiteRT, XNNPACK), p50 and p99.
FFT work is not counted as FLOPs on either side (neither counter sees it), so FLOP/s compare the matmul work.
Every training time is the median of several timing windows (this VM's speed wanders); torch_toy.py does the same.
"""
import argparse, json, os, subprocess, tempfile, time
from pathlib import Path

import numpy as np
import jax
from flax import nnx

from continuonbrain.wavecore.model import WaveCoreConfig, create_model, format_rows
from continuonbrain.wavecore.train import cpu_devices, data_mesh, make_optimizer, make_train_step, on_mesh

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


def matmul_peak(n: int = 1024, reps: int = 30) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n)); b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps): f(a, b).block_until_ready()
    return 2 * n ** 3 / ((time.perf_counter() - t0) / reps)


def train_throughput(cfg: WaveCoreConfig, batch: int, seq: int, steps: int = 100, parallel: bool = False, windows: int = 5) -> dict:
    "Tokens/s and matmul FLOP/s of the training step: the median of `windows` timings of `steps / windows` steps each."
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
    for _ in range(10): params, opt, m = compiled(params, opt, b)
    jax.block_until_ready(params)
    times, per = [], max(1, steps // windows)
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(per): params, opt, m = compiled(params, opt, b)
        jax.block_until_ready(params)
        times.append((time.perf_counter() - t0) / per)
    dt = float(np.median(times))
    return {"step_s": dt, "tokens_per_s": batch * seq / dt, "flops_per_step": flops, "flops_per_s": flops / dt,
            "devices": 1 if mesh is None else mesh.size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-python", default=os.environ.get("BENCH_TORCH_PYTHON", ""))
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    n_dev = cpu_devices()   # one XLA device per core, before anything starts JAX
    peak = matmul_peak()
    print(f"JAX matmul peak (1024^3 float32): {peak / 1e9:.1f} GFLOP/s")
    toy = WaveCoreConfig.profile("toy")
    rows, res = [], {}
    for name, pattern in (("hybrid ssm,attention", "ssm,attention"), ("attention", "attention"), ("ssm", "ssm"), ("spectral", "spectral")):
        for parallel in (False, True) if n_dev > 1 else (False,):
            r = train_throughput(WaveCoreConfig(**{**toy.to_dict(), "pattern": pattern}), 16, 64, a.steps, parallel)
            res[name, parallel] = r
            rows.append({"model": f"WaveCore {name}", "devices": r["devices"], "tokens/s": round(r["tokens_per_s"]),
                         "GFLOP/s": round(r["flops_per_s"] / 1e9, 2), "MFU": round(r["flops_per_s"] / peak, 3)})
    par = n_dev > 1   # the targets are read off the data-parallel rows when there are several cores
    torch_ref = None
    if a.torch_python and Path(a.torch_python).exists():
        out = subprocess.run([a.torch_python, str(HERE/"torch_toy.py"), f"--steps={a.steps}"], capture_output=True, text=True)
        if out.returncode == 0:
            torch_ref = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": f"PyTorch original toy (torch {torch_ref['torch']})", "devices": f"{torch_ref['threads']} threads",
                         "tokens/s": round(torch_ref["tokens_per_s"]),
                         "GFLOP/s": round(torch_ref["flops_per_s"] / 1e9, 2), "MFU": round(torch_ref["flops_per_s"] / torch_ref["matmul_peak_flops"], 3)})
        else:
            print("torch reference failed:", out.stderr[-2000:])
    else:
        print("torch reference not measured: pass --torch-python (an interpreter with torch==2.13.0)")
    print("\nTraining at the toy size (vocab 512, d_model 128, 2 layers, seq 64, batch 16, AdamW)")
    print(format_rows(rows))
    if torch_ref:
        h = res["hybrid ssm,attention", par]
        print(f"\nhybrid vs PyTorch toy: {h['flops_per_s'] / torch_ref['flops_per_s']:.2f}x FLOP/s (target >= 1.0), "
              f"{h['tokens_per_s'] / torch_ref['tokens_per_s']:.2f}x tokens/s (target >= 0.75)")
    if n_dev > 1:
        print(f"data parallel over {n_dev} devices against one: " + ", ".join(
            f"{k} {res[k, True]['tokens_per_s'] / res[k, False]['tokens_per_s']:.2f}x" for k, p in res if p))
    print(f"MFU: attention {res['attention', par]['flops_per_s'] / peak:.1%} (target >= 35%), "
          f"hybrid {res['hybrid ssm,attention', par]['flops_per_s'] / peak:.1%} (target >= 25%)")
    print(f"\nssm block vs attention block, equal width (d_model 128, 2 layers, batch 16, {'data parallel' if par else 'one device'}), tokens/s")
    sr = []
    for t in (64, 128, 256):
        base = {**toy.to_dict(), "seq_len": t}
        s = train_throughput(WaveCoreConfig(**{**base, "pattern": "ssm"}), 16, t, max(20, a.steps // 2), par)
        at = train_throughput(WaveCoreConfig(**{**base, "pattern": "attention"}), 16, t, max(20, a.steps // 2), par)
        sr.append({"T": t, "ssm tokens/s": round(s["tokens_per_s"]), "attention tokens/s": round(at["tokens_per_s"]),
                   "ratio": round(s["tokens_per_s"] / at["tokens_per_s"], 2)})
    print(format_rows(sr), "\n(target: ratio >= 0.8)")
    from continuonbrain.wavecore.export import latency_report
    lat = latency_report(create_model(WaveCoreConfig.profile("fast")), tempfile.mkdtemp(), n=2000)
    print("\nfast profile, one step at batch 1 (target p99 < 0.25 ms)")
    print(format_rows(lat))


if __name__ == "__main__":
    main()
