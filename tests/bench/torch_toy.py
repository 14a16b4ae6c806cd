"""The reference for bench_wavecore.py: a plain PyTorch model of the original toy (token embedding, FFT blocks whose
circular convolution leaks future tokens, MLPs, a token head), trained with AdamW. Runs in the benchmark's own
environment (torch is not part of the workbook's lock).

    python torch_toy.py [--steps=200]   one JSON line: tokens/s and FLOP/s (the median of five timing windows)
    python torch_toy.py --serve=1       one JSON line (FLOPs, matmul peak), then for every line N read from stdin,
                                        N training steps and one line with their seconds per step: bench_wavecore.py
                                        alternates these windows with its own, so both see the same machine speed
"""
import json, sys, time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class ToyFFTBlock(nn.Module):
    "The original's block: a learned kernel applied by FFT without zero padding (circular, so non-causal), then an MLP."
    def __init__(self, d: int, seq: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.kernel = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        t = x.shape[1]
        h = self.norm1(x)
        y = torch.fft.irfft(torch.fft.rfft(h, dim=1) * torch.fft.rfft(self.kernel[:t], dim=0), n=t, dim=1)
        x = x + y
        return x + self.mlp(self.norm2(x))


class Toy(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([ToyFFTBlock(d, seq) for _ in range(layers)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks: h = b(h)
        return self.head(self.norm(h))


def matmul_peak(n: int = 1024, reps: int = 10, windows: int = 10) -> float:
    "FLOP/s of an n x n float32 matmul: the best of `windows` timings of `reps` calls, as bench_wavecore.py measures JAX's."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    best = float("inf")
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(reps): a @ b
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best


def window(step, n: int) -> float:
    "Seconds per step over `n` steps."
    t0 = time.perf_counter()
    for _ in range(n): step()
    return (time.perf_counter() - t0) / n


def main(vocab=512, d=128, layers=2, seq=64, batch=16, steps=200, threads=0, serve=0):
    if threads: torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Toy(vocab, d, layers, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq)); y = torch.randint(0, vocab, (batch, seq))
    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        loss.backward(); opt.step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    for _ in range(20): step()
    info = {"flops_per_step": flops, "matmul_peak_flops": matmul_peak(), "params": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "tokens_per_step": batch * seq}
    if serve:
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            if not line.strip(): break
            print(json.dumps({"step_s": window(step, int(line))}), flush=True)
        return
    dt = sorted(window(step, max(1, steps // 5)) for _ in range(5))[2]   # the median of five timing windows
    print(json.dumps({**info, "step_s": dt, "tokens_per_s": batch * seq / dt, "flops_per_s": flops / dt}))


if __name__ == "__main__":
    main(**{k: int(v) for k, v in (a.lstrip("-").split("=") for a in sys.argv[1:])})
