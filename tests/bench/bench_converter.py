"""Conversion throughput against the JSON parse floor, measured in one process.

    python tests/bench/bench_converter.py [--episodes 200] [--steps 100]

Records mock episodes (no images), then times (1) reading and json-parsing every file, nothing else,
and (2) the converter writing GZIP shards and statistics (validation included, RLDS copy excluded, timed
separately). Prints steps/s, MB/s and the ratio conversion / parse floor (target: within 2x).
"""
import argparse, json, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from continuonbrain.recording.arm_episode_recorder import record  # noqa: E402
from continuonbrain.jax_models.data.tfrecord_converter import convert, import_tf  # noqa: E402


def best(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); out = f(); times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-converter-"))
    src = work/"episodes"
    record(src, episodes=a.episodes, steps=a.steps, backend="mock", seed=0, progress=False)
    files = sorted(src.glob("*.json"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    steps = a.episodes * a.steps
    import_tf()    # TensorFlow's import is not conversion work
    floor, _ = best(lambda: [json.loads(f.read_bytes()) for f in files], a.repeat)
    conv, _ = best(lambda: convert(src, work/"out", compress=True, rlds=False, progress=False), a.repeat)
    rlds, _ = best(lambda: convert(src, work/"out_rlds", compress=True, rlds=True, progress=False), 1)
    print(f"{a.episodes} episodes, {steps} steps, {mb:.1f} MB of JSON")
    print(f"parse floor   {floor:7.3f} s  {steps / floor:9.0f} steps/s  {mb / floor:6.1f} MB/s")
    print(f"conversion    {conv:7.3f} s  {steps / conv:9.0f} steps/s  {mb / conv:6.1f} MB/s")
    print(f"with RLDS     {rlds:7.3f} s  {steps / rlds:9.0f} steps/s  {mb / rlds:6.1f} MB/s")
    print(f"ratio conversion / parse floor: {conv / floor:.2f}x (target <= 2x); with the RLDS copy {rlds / floor:.2f}x")


if __name__ == "__main__":
    main()
