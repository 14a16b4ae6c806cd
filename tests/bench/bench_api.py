"""Load on 127.0.0.1 only: the robot API's /api/ping and /api/ownership/status (anonymous and with the owner's token)
at a stated request rate, against a bare FastAPI route returning a constant under the same uvicorn settings, each
server its own process, measured in one run.

    python tests/bench/bench_api.py [--rate 200] [--seconds 10] [--workers 8]

Requests are sent open-loop on a fixed schedule (request i at i/rate s) from a pool of keep-alive clients; latency
runs from the scheduled time to the answer, so a server that falls behind shows it. Bounded: rate x seconds requests
per endpoint, a 10 s timeout each. Prints the achieved rate, p50 and p99 in ms, errors, and the p99 ratio to the bare
route (the price of the guard, SQLite and the OTA state read per request).
"""
import argparse, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from continuonbrain import store  # noqa: E402
from continuonbrain.store import free_port  # noqa: E402
from continuonbrain.ota.apply import init_device  # noqa: E402
from continuonbrain.ota.bundle import generate_key, make_trust, read_public_key  # noqa: E402

BARE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/api/ping")
def ping(): return {"device_id": "bare", "uptime_s": 1.0}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), proxy_headers=False, server_header=False, log_level="warning")
"""


def start(argv: list[str], url: str) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200: return p
        except httpx.HTTPError: time.sleep(0.1)
    p.kill(); raise SystemExit(f"the server did not answer: {p.stdout.read()}")


def load(url: str, rate: float, seconds: float, workers: int, headers: dict | None = None) -> dict:
    "Send rate x seconds GETs on schedule; latency from each request's scheduled time."
    n, lat, errors = int(rate * seconds), [], []
    with httpx.Client(headers=headers, timeout=10, limits=httpx.Limits(max_connections=workers)) as client:
        client.get(url)                                              # warm the connection
        t0 = time.perf_counter()
        def one(i):
            due = t0 + i / rate
            if (wait := due - time.perf_counter()) > 0: time.sleep(wait)
            try: ok = client.get(url).status_code == 200
            except httpx.HTTPError: ok = False
            lat.append((time.perf_counter() - due) * 1000); ok or errors.append(i)
        with ThreadPoolExecutor(workers) as ex: list(ex.map(one, range(n)))
        wall = time.perf_counter() - t0
    return {"requests": n, "rate": n / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "errors": len(errors)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200); ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    key = generate_key(work/"keys", "release")
    store.write_json(work/"trusted_keys.json", make_trust([read_public_key(key["public_path"])]))
    root = init_device(work/"robot", work/"trusted_keys.json")
    pa, pb = free_port(), free_port()
    api = start([sys.executable, "-m", "continuonbrain.api", "--root", str(root), "--port", str(pa)], f"http://127.0.0.1:{pa}/api/ping")
    bare = start([sys.executable, "-c", BARE, str(pb)], f"http://127.0.0.1:{pb}/api/ping")
    try:
        code = next(line.split()[2] for line in iter(api.stdout.readline, "") if line.startswith("pairing code:"))
        token = httpx.post(f"http://127.0.0.1:{pa}/api/claim", json={"pairing_code": code, "account_id": "bench", "account_type": "personal",
                                                                      "owner_id": "bench"}).json()["token"]
        runs = [("bare FastAPI route", f"http://127.0.0.1:{pb}/api/ping", None),
                ("/api/ping", f"http://127.0.0.1:{pa}/api/ping", None),
                ("/api/ownership/status", f"http://127.0.0.1:{pa}/api/ownership/status", None),
                ("/api/ownership/status + token", f"http://127.0.0.1:{pa}/api/ownership/status", {"Authorization": f"Bearer {token}"})]
        print(f"target {a.rate:.0f} req/s for {a.seconds:.0f} s per endpoint, {a.workers} client threads, 127.0.0.1")
        print(f"{'endpoint':<32}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'p99 / bare':>12}")
        ref = None
        for name, url, headers in runs:
            r = load(url, a.rate, a.seconds, a.workers, headers); ref = ref or r["p99"]
            print(f"{name:<32}{r['requests']:>9}{r['rate']:>9.1f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>8}{r['p99'] / ref:>12.2f}")
    finally:
        api.terminate(); bare.terminate(); api.wait(30); bare.wait(30)


if __name__ == "__main__":
    main()
