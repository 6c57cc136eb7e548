"""The runtimes that run a model's ONNX weights on the CPU (config key ``model.engine``), behind bioimageio.core's
model-adapter interface, so its pipeline (padding, blocks, pre- and post-processing) is the same with either:

- ``onnxruntime``: bioimageio.core's own ONNX runtime, told the job's threads (it would start one per core of the
  machine, not of the job) and, for larger tiles, given a copy of the weights whose spatial sizes are free;
- ``openvino``: Intel's OpenVINO runtime, at its own precision for the CPU (bfloat16 where the CPU computes it
  natively, AMX or AVX-512 BF16; else float32), which the model check validates against the model's own tiles
  before ``auto`` uses it (:func:`snakescope.methods.tiling.validate_tiles`).

TorchScript weights and other devices keep bioimageio.core's adapters; torch is told the job's threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENGINES = ("auto", "onnxruntime", "openvino")


@dataclass(frozen=True)
class Engine:
    """What ran a model: the runtime, its version and the precision it computed in."""

    name: str
    version: str | None = None
    precision: str | None = None  # openvino: "bf16" or "f32" (its INFERENCE_PRECISION_HINT); onnxruntime: float32

    def as_record(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "precision": self.precision}


def engine_request(value: Any) -> str:
    """``model.engine`` as asked: ``auto`` (also when unset), ``onnxruntime`` or ``openvino``."""
    if value is None:
        return "auto"
    if value not in ENGINES:
        raise ValueError(f"config key model.engine: {value!r} is not one of {', '.join(ENGINES)}")
    return str(value)


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version, or None when it cannot be imported here."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def onnxruntime_engine() -> Engine:
    import onnxruntime

    return Engine("onnxruntime", onnxruntime.__version__, "f32")


def free_size_onnx(data: bytes) -> bytes:
    """A copy of ONNX weights whose inputs' and outputs' last two (spatial) sizes are free."""
    import onnx

    model = onnx.load_from_string(data)
    for tensor in [*model.graph.input, *model.graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        for dim, name in zip(dims[-2:], ("y", "x")):
            dim.ClearField("dim_value")
            dim.dim_param = name
    del model.graph.value_info[:]  # intermediate shapes inferred from the fixed size would contradict the free one
    return model.SerializeToString()


def model_adapter(descr: Any, settings: Any, threads: int | None, *, free_size: bool = False,
                  engine: str = "onnxruntime", precision: str | None = None, streams: int = 1) -> Any:
    """An adapter that runs ``descr``'s weights with ``engine`` on exactly ``threads`` CPU threads (the job's declared
    cores; None: the runtime's default), or None where bioimageio.core's own adapter does (it is then told the threads
    where it can be). ``free_size``: the ONNX weights' spatial sizes are made free (larger tiles, :mod:`.tiling`).
    ``precision``: OpenVINO's inference precision (``bf16``, ``f32``), the one the model check validated; None: its
    default for this CPU. ``streams``: OpenVINO runs that many inputs at once, the threads shared among them (a
    batch's fields side by side); one runs each input on all the threads (a single field's latency)."""
    if engine == "openvino":
        return _openvino_adapter(descr, threads, free_size, precision, max(1, streams))
    if not free_size and (not threads or settings.device != "cpu"):
        return None
    if settings.weight_format in ("torchscript", "pytorch_state_dict"):
        import torch

        torch.set_num_threads(threads)
        return None
    if settings.weight_format != "onnx":
        return None
    import onnxruntime
    from bioimageio.core.backends.onnx_backend import ONNXModelAdapter

    class ThreadedONNXAdapter(ONNXModelAdapter):
        engine = onnxruntime_engine()

        def _init_model_on_device(self, device: Any) -> Any:
            weights = self._onnx_descr
            if getattr(weights, "external_data", None) is not None and not free_size:  # large models: bioimageio.core's own
                return super()._init_model_on_device(device)
            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                # idle threads sleep instead of spinning: a spinning thread burns a core the other jobs need (bench/README)
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            data = weights.get_reader().read()
            session = onnxruntime.InferenceSession(free_size_onnx(data) if free_size else data, sess_options=options,
                                                   providers=None if device is None else [device])
            if self._input_names is None:
                self._input_names = [str(i.name) for i in session.get_inputs()]
            return session

    return ThreadedONNXAdapter(model_description=descr, devices=["CPUExecutionProvider"])


def _openvino_adapter(descr: Any, threads: int | None, free_size: bool, precision: str | None, streams: int) -> Any:
    """bioimageio.core's ONNX adapter with the weights compiled by OpenVINO for the CPU instead of an onnxruntime
    session: inputs in the model's order, outputs copied out of the request (the next call reuses its buffers).
    bioimageio.core keeps one (device, model) pair per device in a queue that each call takes one from: with
    ``streams`` > 1 the adapter names the CPU that many times, each with its own request on one compiled model."""
    import numpy as np
    import openvino
    from bioimageio.core.backends.onnx_backend import ONNXModelAdapter

    class OpenVINOAdapter(ONNXModelAdapter):
        engine = Engine("openvino", openvino_version(), precision)

        compiled: Any = None

        def _parse_devices(self, devices: Any) -> list[Any]:
            return ["CPU"] * streams

        def _init_model_on_device(self, device: Any) -> Any:
            if self.compiled is None:
                weights = self._onnx_descr
                if getattr(weights, "external_data", None) is not None:
                    raise ValueError("ONNX weights with external data are run by onnxruntime")
                data = weights.get_reader().read()
                core = openvino.Core()
                config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                                          "NUM_STREAMS": streams, "ENABLE_CPU_PINNING": False}
                if threads:
                    config["INFERENCE_NUM_THREADS"] = threads
                if precision:
                    config["INFERENCE_PRECISION_HINT"] = precision
                self.compiled = core.compile_model(core.read_model(free_size_onnx(data) if free_size else data), "CPU", config)
                self.engine = Engine("openvino", openvino_version(),
                                     self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string())
                self._input_names = [port.get_any_name() for port in self.compiled.inputs]
            return self.compiled, self.compiled.create_infer_request()

        def _forward_impl(self, device: Any, model: Any, input_arrays: Any) -> list[Any]:
            compiled, request = model
            result = request.infer({i: np.ascontiguousarray(a) for i, a in enumerate(input_arrays)})
            return [np.array(result[port]) for port in compiled.outputs]

    return OpenVINOAdapter(model_description=descr, devices=["CPU"])
