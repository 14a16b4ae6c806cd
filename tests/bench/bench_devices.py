"""One XLA device (XLA's own threads on every core) against data parallel over one device per core, at the shapes
`fit` and `seed_train` train: ratios from alternating timing windows in one process.

    .venv/bin/python tests/bench/bench_devices.py [--rounds 12] [--per 5]

For each shape a training step is compiled both ways (`bench_wavecore.train_runner`), then timed in alternating
windows of `per` steps, `rounds` times, each way going first in every other pair; the ratio is the median of the
per-pair ratios (one device's step time over the data-parallel one's), so the VM's drifting speed cancels out.
It restarts itself under jemalloc, as the training commands do (CONTINUON_JEMALLOC=0 for glibc's malloc).
"""
import argparse, sys
from pathlib import Path

from continuonbrain.config import allocator, restart_with_jemalloc
if __name__ == "__main__": restart_with_jemalloc()   # the training commands' allocator (nbs/00_config.ipynb), before JAX loads

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_wavecore import train_runner   # noqa: E402
from continuonbrain.wavecore.model import WaveCoreConfig, format_rows
from continuonbrain.wavecore.train import cpu_devices

SHAPES = [   # (what, profile, vocabulary, batch, T)
    ("benchmark tasks: MQAR-8", "fast", 256, 64, 64), ("benchmark tasks: MQAR-8", "mid", 256, 64, 64),
    ("benchmark tasks: MQAR-16", "mid", 256, 64, 128),
    ("curriculum (packed rows)", "fast", 64, 32, 43), ("curriculum (packed rows)", "mid", 64, 32, 43),
    ("toy benchmark", "toy", 512, 16, 64)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per", type=int, default=5)
    a = ap.parse_args()
    n = cpu_devices()
    if n < 2: sys.exit("one core: nothing to compare")
    print(f"allocator: {allocator()}")
    rows = []
    for what, profile, vocab, batch, t in SHAPES:
        cfg = WaveCoreConfig.profile(profile, vocab_size=vocab, seq_len=max(t, WaveCoreConfig.profile(profile).seq_len))
        one, _, _ = train_runner(cfg, batch, t, parallel=False)
        par, _, dev = train_runner(cfg, batch, t, parallel=True)
        pairs = np.array([(one(a.per), par(a.per)) if i % 2 == 0 else tuple(reversed((par(a.per), one(a.per))))
                          for i in range(a.rounds)])
        rows.append({"shape": what, "profile": profile, "batch x T": f"{batch} x {t}", "vocabulary": vocab,
                     "1 device ms/step": round(1e3 * float(np.median(pairs[:, 0])), 1),
                     f"{dev} devices ms/step": round(1e3 * float(np.median(pairs[:, 1])), 1),
                     "speed-up": round(float(np.median(pairs[:, 0] / pairs[:, 1])), 2)})
        print(rows[-1], flush=True)
    print(f"\nData parallel over {n} CPU devices against one device (median of {a.rounds} paired windows of {a.per} steps)")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
