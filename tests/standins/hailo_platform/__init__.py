"""A STAND-IN for HailoRT's Python API (`hailo_platform`), for tests and docs only: no chip, no HailoRT.

It has the InferModel call surface the router uses (VDevice, create_infer_model, input/output streams with
set_format_type and shape, configure, create_bindings, bindings.input/output set_buffer/get_buffer, run) and
checks it the way HailoRT documents it: formats set before configure, buffers in the stream's shape, the device
used only from the process that created it. It runs only the stand-in HEF that the stand-in `hailo_sdk_client`
compiles (the ONNX step behind a header), in onnxruntime. With CONTINUON_HAILO_STANDIN_FAULT=1 it adds 1.0 to
every output, to play a chip that answers wrongly.
"""
import json, os

import numpy as np

HEADER = b"STAND-IN HEF (tests only; not a Hailo binary)\n"

class FormatType:
    UINT8, UINT16, FLOAT32 = "uint8", "uint16", "float32"

class HailoSchedulingAlgorithm:
    NONE, ROUND_ROBIN = 0, 1

class HailoRTException(Exception):
    pass

class _Stream:
    def __init__(self, name, shape): self.name, self.shape, self.format_type = name, tuple(shape), FormatType.UINT8
    def set_format_type(self, t): self.format_type = t

class _Buffer:
    def __init__(self, stream, buf=None): self.stream, self.buf = stream, buf
    def set_buffer(self, a):
        if tuple(a.shape) != self.stream.shape or a.dtype != np.float32: raise HailoRTException(f"buffer {a.shape} {a.dtype} for stream {self.stream.name} {self.stream.shape}")
        self.buf = a
    def get_buffer(self): return self.buf

class Bindings:
    def __init__(self, model, output_buffers):
        self._in = {n: _Buffer(s) for n, s in model._inputs.items()}
        self._out = {n: _Buffer(s, (output_buffers or {}).get(n, np.empty(s.shape, np.float32))) for n, s in model._outputs.items()}
    def input(self, name=""): return self._in[name]
    def output(self, name=""): return self._out[name]

class ConfiguredInferModel:
    def __init__(self, model): self.model = model
    def __enter__(self): return self
    def __exit__(self, *a): self.shutdown()
    def shutdown(self): pass
    def create_bindings(self, input_buffers=None, output_buffers=None): return Bindings(self.model, output_buffers)
    def run(self, bindings_list, timeout_ms):
        m = self.model
        if os.getpid() != m.vdevice.pid: raise HailoRTException("stand-in: the VDevice was created in another process")
        for b in bindings_list:
            feeds = {m._onnx_name[n]: b.input(n).get_buffer().reshape(m._onnx_shape[n]) for n in m._inputs}
            outs = m.sess.run(None, feeds)
            fault = 1.0 if os.environ.get("CONTINUON_HAILO_STANDIN_FAULT") == "1" else 0.0
            for (n, s), o in zip(m._outputs.items(), outs): b.output(n).get_buffer()[...] = o.reshape(s.shape) + fault

class InferModel:
    def __init__(self, vdevice, hef: bytes):
        import onnxruntime as ort
        if not hef.startswith(HEADER): raise HailoRTException("stand-in: not a stand-in HEF (a real HEF needs real HailoRT)")
        meta_line, onnx = hef[len(HEADER):].split(b"\n", 1)
        meta = json.loads(meta_line)
        self.vdevice, self.sess = vdevice, ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        shapes = {i.name: i.shape for i in self.sess.get_inputs()}
        self._inputs = {layer: _Stream(layer, shape) for layer, _, shape in meta["inputs"]}
        self._onnx_name = {layer: name for layer, name, _ in meta["inputs"]}
        self._onnx_shape = {layer: shapes[name] for layer, name, _ in meta["inputs"]}
        self._outputs = {layer: _Stream(layer, shape) for layer, shape in meta["outputs"]}
    input_names = property(lambda self: list(self._inputs))
    output_names = property(lambda self: list(self._outputs))
    def input(self, name=""): return self._inputs[name]
    def output(self, name=""): return self._outputs[name]
    def configure(self):
        bad = [s.name for s in [*self._inputs.values(), *self._outputs.values()] if s.format_type != FormatType.FLOAT32]
        if bad: raise HailoRTException(f"stand-in: streams {bad} are not FLOAT32 (set_format_type before configure)")
        return ConfiguredInferModel(self)

class VDevice:
    def __init__(self, params=None): self.pid = os.getpid()
    @staticmethod
    def create_params(): return type("VDeviceParams", (), {"scheduling_algorithm": HailoSchedulingAlgorithm.ROUND_ROBIN})()
    def __enter__(self): return self
    def __exit__(self, *a): self.release()
    def release(self): pass
    def create_infer_model(self, hef_source, network_name=""):
        return InferModel(self, hef_source if isinstance(hef_source, bytes) else open(hef_source, "rb").read())
