"""A STAND-IN for Hailo's Dataflow Compiler (`hailo_sdk_client`), for tests and docs only: not the compiler.

It has the call surface `continuonbrain.jax_models.export.hailo_compile` uses (ClientRunner: translate_onnx_model,
get_hn_dict, optimize, infer_context, infer, compile; InferenceContext) and checks what it is given the way the
compiler is documented to (calibration keyed by HN input-layer names, each sample in the layer's NHWC shape).
It parses nothing: it keeps the ONNX file and runs it in onnxruntime. In the quantized context every input and
output is rounded to 8 bits per tensor. `compile()` returns the ONNX bytes behind a header that says it is a stand-in (read by the stand-in `hailo_platform`).
"""
from contextlib import contextmanager

import numpy as np

__version__ = "0.0+standin"
HEADER = b"STAND-IN HEF (tests only; not a Hailo binary)\n"

class InferenceContext:
    SDK_NATIVE, SDK_FP_OPTIMIZED, SDK_QUANTIZED = "native", "fp_optimized", "quantized"

def _fake_quant(x: np.ndarray, peak: float) -> np.ndarray:
    scale = max(float(peak), 1e-8) / 127.0
    return (np.clip(np.round(x / scale), -127, 127) * scale).astype(np.float32)

class ClientRunner:
    def __init__(self, hw_arch: str = "hailo8"):
        if hw_arch not in ("hailo8", "hailo8l", "hailo8r"): raise ValueError(f"stand-in: unknown hw_arch {hw_arch!r}")
        self.hw_arch, self.peaks, self.sess = hw_arch, None, None

    def translate_onnx_model(self, path: str, net_name: str, **kw):
        import onnxruntime as ort
        self.onnx = open(path, "rb").read()
        self.sess = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
        flat = lambda s: [-1, 1, 1, int(np.prod(s[1:])) if len(s) > 1 else 1]
        self.layers, self.onnx_of = {}, {}
        for k, i in enumerate(reversed(ins), 1):          # HN numbers inputs in an order of its own
            self.layers[f"{net_name}/input_layer{k}"] = {"type": "input_layer", "original_names": [i.name], "input_shapes": [flat(i.shape)]}
            self.onnx_of[f"{net_name}/input_layer{k}"] = i
        self.order = []
        for k, o in enumerate(outs, 1):                   # the first output without original_names: found by position
            self.layers[f"{net_name}/output_layer{k}"] = {"type": "output_layer", "original_names": [] if k == 1 else [o.name],
                                                          "output_shapes": [flat(o.shape)]}
            self.order.append(f"{net_name}/output_layer{k}")
        return self.get_hn_dict(), None

    def get_hn_dict(self) -> dict:
        return {"layers": self.layers, "net_params": {"output_layers_order": list(self.order)}}

    def _check(self, data: dict, what: str) -> int:
        want = {k for k, v in self.layers.items() if v["type"] == "input_layer"}
        if set(data) != want: raise KeyError(f"stand-in {what}: keys {sorted(data)}; the network's input layers are {sorted(want)}")
        n = {len(v) for v in data.values()}
        for k, v in data.items():
            if list(v.shape[1:]) != self.layers[k]["input_shapes"][0][1:]:
                raise ValueError(f"BadInputsShape (stand-in): data shape {v.shape[1:]} for layer {k} doesn't match {self.layers[k]['input_shapes'][0][1:]}")
        if len(n) != 1: raise ValueError(f"stand-in {what}: inputs with different numbers of rows {sorted(n)}")
        return n.pop()

    def optimize(self, calib: dict):
        self._check(calib, "optimize")
        if not all(np.isfinite(v).all() for v in calib.values()): raise ValueError("stand-in optimize: non-finite calibration data")
        self.peaks = {k: float(np.abs(v).max()) for k, v in calib.items()}

    @contextmanager
    def infer_context(self, context):
        if context == InferenceContext.SDK_QUANTIZED and self.peaks is None: raise RuntimeError("stand-in: optimize() before a quantized context")
        yield context

    def infer(self, context, dataset: dict, batch_size: int = 1, **kw):
        n, q = self._check(dataset, "infer"), context == InferenceContext.SDK_QUANTIZED
        rows = []
        for r in range(n):
            feeds = {}
            for k, v in dataset.items():
                x = _fake_quant(v[r], self.peaks[k]) if q else v[r]
                i = self.onnx_of[k]
                feeds[i.name] = x.reshape(i.shape).astype(np.float32)
            outs = self.sess.run(None, feeds)
            rows.append([_fake_quant(o, np.abs(o).max()) if q else o for o in outs])
        return [np.stack([row[j].reshape(self.layers[k]["output_shapes"][0][1:]) for row in rows]) for j, k in enumerate(self.order)]

    def compile(self) -> bytes:
        "The stand-in HEF: the header, one JSON line naming the streams (as the stand-in hailo_platform reads them), the ONNX bytes."
        import json
        if self.peaks is None: raise RuntimeError("stand-in: compile() needs optimize() first")
        meta = {"inputs": [[k, self.onnx_of[k].name, v["input_shapes"][0][1:]] for k, v in self.layers.items() if v["type"] == "input_layer"],
                "outputs": [[k, self.layers[k]["output_shapes"][0][1:]] for k in self.order]}
        return HEADER + json.dumps(meta).encode() + b"\n" + self.onnx
