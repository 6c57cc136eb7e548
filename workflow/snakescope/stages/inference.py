"""Stage 3, bioimage.io inference: check a model once, load it once per batch, predict tiled."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from ..core.fields import by_unit
from ..core.blocks import is_large
from ..core.channels import channel_indices, check_model_channels, model_channels
from ..core.costs import inference_streams
from ..core.settings import ModelSettings
from ..core.records import Failure, read_json, write_json
from ..methods.engines import engine_request, openvino_version
from ..methods.tiling import tile_request


class ModelError(RuntimeError):
    """The configured model cannot be used; the message names the config key and the reason."""


def load_description(source: str) -> Any:
    """Load a model description from a local package path, zoo id, DOI or URL."""
    from bioimageio.core import load_model_description

    looks_local = source.endswith((".yaml", ".yml", ".zip")) or source.startswith((".", "/", "~"))
    if looks_local and "://" not in source and not Path(source).expanduser().exists():
        raise ModelError(f"config key model.source={source!r}: no such file (a local model package path)")
    try:
        return load_model_description(source)
    except Exception as exc:  # noqa: BLE001 - the spec library raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"config key model.source={source!r}: cannot load the model ({type(exc).__name__}: {first})") from exc


def model_digest(descr: Any, weight_format: str) -> str:
    """sha256 over the description's weight digests and tensors' ids: changes when the model changes."""
    weights = getattr(descr.weights, weight_format, None)
    if weights is None:
        available = [k for k, v in descr.weights.model_dump().items() if v]
        raise ModelError(f"config key model.weight_format={weight_format!r}: the model has {available}")
    parts = [str(descr.id or descr.name), weight_format, str(weights.sha256 or "")]
    if not weights.sha256:
        from bioimageio.spec._internal.io import get_reader  # type: ignore[attr-defined]

        parts.append(hashlib.sha256(get_reader(weights.source).read()).hexdigest())
    parts += [str(t.id) for t in descr.inputs] + [str(t.id) for t in descr.outputs]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def check_model(settings: ModelSettings, cache_dir: str | Path) -> dict[str, Any]:
    """Run bioimageio.core's ``test_model`` once per model digest and weight format (cached on disk)."""
    descr = load_description(settings.source)
    digest = model_digest(descr, settings.weight_format)
    cache = Path(cache_dir) / "model-tests" / f"{digest}.json"
    record = {
        "source": settings.source,
        "name": str(descr.name),
        "id": str(descr.id) if descr.id else None,
        "weight_format": settings.weight_format,
        "digest": digest,
        "weights_sha256": str(getattr(descr.weights, settings.weight_format).sha256 or "") or None,
        "bioimageio.core": importlib.metadata.version("bioimageio.core"),
        "bioimageio.spec": importlib.metadata.version("bioimageio.spec"),
        "inputs": [str(t.id) for t in descr.inputs],
        "outputs": [str(t.id) for t in descr.outputs],
    }
    if tile_request(settings.tile_px) != "model":
        record["tiling"] = checked_tiles(settings, descr, digest, cache_dir)
    elif engine_request(settings.engine) == "openvino":
        raise ModelError("config key model.engine=openvino: OpenVINO runs the tiles the model check validates, and "
                         "model.tile_px: model skips that check; set model.tile_px to auto or remove model.engine")
    if cache.is_file():
        cached = read_json(cache)
        return {**record, "test": cached, "test_cached": True}
    if not settings.run_test:
        return {**record, "test": {"status": "skipped", "reason": "model.run_test is false"}, "test_cached": False}
    from bioimageio.core import test_model

    started = time.time()
    summary = test_model(descr, weight_format=settings.weight_format)
    failed = [d.name for d in summary.details if d.status == "failed"]
    errors = [e.msg for d in summary.details for e in (d.errors or [])][:5]
    result = {"status": summary.status, "failed_checks": failed, "errors": errors, "seconds": round(time.time() - started, 2)}
    if summary.status == "passed":
        write_json(cache, result)
    return {**record, "test": result, "test_cached": False}


def checked_tiles(settings: ModelSettings, descr: Any, digest: str, cache_dir: str | Path) -> dict[str, Any]:
    """Tiles other than the model's own (``model.tile_px``: ``auto`` or an edge), validated against the model's own
    tiles on its test input (cached per digest and request). A tile edge the user set that the model cannot take
    stops the run naming the key; with ``auto`` the record says why the model's own tiles are kept."""
    from bioimageio.core.digest_spec import get_test_inputs

    from ..methods.tiling import DEFAULT_BYTES_PER_PIXEL, TILE_CHECK_VERSION, TileRule, auto_tile_px, validate_tiles

    request = tile_request(settings.tile_px)
    engine = engine_request(settings.engine)
    if engine == "openvino" and settings.weight_format != "onnx":
        raise ModelError(f"config key model.engine=openvino: OpenVINO runs ONNX weights, not {settings.weight_format}")
    engine = engine if settings.weight_format == "onnx" else "onnxruntime"  # the record names the weights' own runtime
    runtimes = f"openvino-{openvino_version()}" if engine != "onnxruntime" else "onnxruntime"  # a new OpenVINO is checked anew
    cache = Path(cache_dir) / "model-tests" / f"{digest}.tile-{request}.{engine}-{runtimes}.v{TILE_CHECK_VERSION}.json"
    if cache.is_file():
        return {**read_json(cache), "cached": True}
    if not (settings.weight_format == "torchscript" or settings.weight_format == "onnx" and settings.device == "cpu"):
        reason = (f"tiles other than the model's own are supported for ONNX weights on the CPU and TorchScript weights, "
                  f"not {settings.weight_format} on {settings.device}")
        if request == "auto" and engine != "openvino":
            return {"status": "not supported", "request": request, "reason": reason, "cached": False}
        raise ModelError(f"config key {'model.tile_px' if request != 'auto' else 'model.engine'}: {reason}")
    data = get_test_inputs(descr).members[descr.inputs[0].id].data
    test_input = np.asarray(data.transpose(*[d for d in ("batch", "channel", "y", "x") if d in data.dims]).values)[0]
    result = {"request": request, **validate_tiles(settings, test_input.astype(np.float32), Predictor,
                                                   request if isinstance(request, int) else None, engine)}
    if result["status"] != "passed" and engine == "openvino":
        raise ModelError(f"config key model.engine=openvino: {descr.name} does not give its own probabilities with tiles other "
                         "than its own, which OpenVINO would run (see model.tile_px); remove model.engine for this model")
    if result["status"] == "passed" and engine == "openvino" and result["engine"]["name"] != "openvino":
        raise ModelError(f"config key model.engine=openvino: {result['engine']['reason']}; remove model.engine for this model")
    if result["status"] != "passed":
        tried = "; ".join(f"step {t['step']}: " + (t["error"] if "error" in t else f"mean difference {t['mean_abs_difference']}, "
                                                    f"foreground agreement {t['foreground_agreement']}") for t in result["tried"])
        if request == "auto":
            return {**result, "reason": f"{descr.name} does not give the same probabilities with other tiles ({tried}): "
                                        "its own tiles are used", "cached": False}
        raise ModelError(f"config key model.tile_px={settings.tile_px}: {descr.name} does not give the same probabilities with "
                         f"tiles larger than its own on its test input ({tried}); remove model.tile_px for this model")
    measured = tile_memory_per_pixel(settings, result["rule"], test_input.shape[0], result["image_shape"],
                                     result["halo"], result["engine"])
    result["bytes_per_tile_pixel"] = measured or DEFAULT_BYTES_PER_PIXEL
    result["bytes_measured"] = measured is not None
    if request == "auto":
        rule = result["rule"]
        result["rule"] = TileRule(tile_px=auto_tile_px(result["bytes_per_tile_pixel"], rule["minimum"], rule["step"]),
                                  minimum=rule["minimum"], step=rule["step"]).as_record()
    write_json(cache, result)
    return {**result, "cached": False}


def tile_memory_per_pixel(settings: ModelSettings, rule: dict[str, int], channels: int, shape: list[int],
                          halo: int, engine: dict[str, Any] | None = None) -> int | None:
    """Bytes the runtime holds per tile pixel, measured on one tile of ``shape`` (plus halo) in a fresh process:
    memory this process freed earlier would be reused unseen. None when the measurement cannot be made."""
    import json
    import os
    import subprocess
    from dataclasses import asdict

    payload = json.dumps({"settings": asdict(settings), "rule": rule, "channels": channels, "shape": shape, "halo": halo,
                          "engine": engine or {}})
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from snakescope.stages.inference import probe_tile_memory; "
                               "probe_tile_memory(sys.stdin.read())"], input=payload, capture_output=True, text=True,
                              timeout=600, env=env)
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def probe_tile_memory(payload: str) -> None:
    """The fresh process of :func:`tile_memory_per_pixel`: prints the bytes per tile pixel, or nothing."""
    import json

    from ..methods.tiling import TileRule, peak_growth_bytes

    args = json.loads(payload)
    engine = args.get("engine") or {}
    predictor = Predictor(ModelSettings(**args["settings"]), tile_rule=TileRule(**args["rule"]),
                          engine=engine.get("name", "onnxruntime"), precision=engine.get("precision"))
    image = np.zeros((args["channels"], *args["shape"]), np.float32)
    # twice: onnxruntime plans the memory of a shape on its first run and holds about twice as much from the second
    _, grown = peak_growth_bytes(lambda: [predictor.predict(image, "memory") for _ in range(2)])
    if grown:
        print(round(grown / ((args["shape"][0] + 2 * args["halo"]) * (args["shape"][1] + 2 * args["halo"]))))


DEFAULT_BLOCK_N = 10  # bioimageio.core's create_prediction_pipeline(default_blocksize_parameter=10)


def axis_size_rule(axis: Any) -> tuple[int, int]:
    """(minimum, step) of a spatial input axis: a fixed size is (size, 0); ``min + n*step`` is (min, step)."""
    size = getattr(axis, "size", None)
    if isinstance(size, int):
        return size, 0
    if hasattr(size, "min") and hasattr(size, "step"):
        return int(size.min), int(size.step)
    return 1, 1  # a size that refers to another tensor or depends on data: any size


def padded_length(length: int, minimum: int, step: int) -> int:
    """The smallest length >= ``length`` that an axis of size rule (minimum, step) accepts.

    A fixed-size axis (step 0) accepts anything at least its size: bioimage.io blocking tiles the rest.
    """
    if length <= minimum:
        return minimum
    if step == 0:
        return length
    return minimum + -(-(length - minimum) // step) * step


@dataclass(frozen=True)
class Padding:
    """How a YX image is padded before prediction: (before, after) per axis; crop back with :meth:`crop`."""

    y: tuple[int, int]
    x: tuple[int, int]

    def crop(self, array: np.ndarray) -> np.ndarray:
        h, w = array.shape[-2:]
        return array[..., self.y[0]:h - self.y[1], self.x[0]:w - self.x[1]]


def plan_padding(shape: tuple[int, int], rules: dict[str, tuple[int, int]], halo: dict[str, int]) -> Padding:
    """Pad each side by the output halo (context at the borders), then up to what the axis accepts."""
    sides = {}
    for axis, length in zip("yx", shape):
        minimum, step = rules.get(axis, (1, 1))
        margin = halo.get(axis, 0)
        target = padded_length(length + 2 * margin, minimum, step)
        extra = target - length
        sides[axis] = (extra // 2, extra - extra // 2)
    return Padding(y=sides["y"], x=sides["x"])


def pad_image(image: np.ndarray, padding: Padding) -> np.ndarray:
    """Mirror-pad a CYX image (reflection keeps the intensity statistics the model normalises with).

    ``np.pad`` reflects repeatedly, so images far smaller than the model's tile work too; a 1-pixel
    axis (nothing to reflect) is repeated.
    """
    return np.pad(image, ((0, 0), padding.y, padding.x), mode=mirror_mode(image.shape))


def mirror_mode(shape: tuple[int, ...]) -> str:
    """:func:`pad_image`'s ``np.pad`` mode for an image of ``shape``."""
    return "reflect" if min(shape[-2:]) > 1 else "edge"


class Twins(NamedTuple):
    """A model's element-wise processing in numpy (see :meth:`Predictor._elementwise_twins`) and its input halo."""

    pre: Callable[..., np.ndarray]
    post: Callable[..., np.ndarray]
    halo: tuple[tuple[int, int], ...]  # per input dimension (batch, channel, y, x): widths before and after
    pad_mode: str


class Predictor:
    """A bioimage.io prediction pipeline created once and reused for every image of a batch.

    Images of any size are mirror-padded to what the model's input axes accept (fixed size, or
    ``min + n*step``) plus the output halo on every side, predicted block by block, and cropped back.
    With a validated ``tile_rule`` (``model.tile_px``, snakescope.methods.tiling) the blocks are as large as the
    rule allows, up to the whole padded field.
    """

    def __init__(self, settings: ModelSettings, dataset_pixels: np.ndarray | None = None, threads: int | None = None,
                 tile_rule: Any = None, numpy_processing: bool = True, engine: str = "onnxruntime",
                 precision: str | None = None, streams: int = 1) -> None:
        from bioimageio.core import create_prediction_pipeline

        from ..methods.engines import model_adapter

        self.settings = settings
        self.descr = load_description(settings.source)
        fixed = dataset_statistics(self.descr, dataset_pixels) if dataset_pixels is not None else {}
        self.fixed_stats = fixed  # also put into every sample: blocked prediction reads them from sample.stat
        self.adapter = model_adapter(self.descr, settings, threads, engine=engine, precision=precision, streams=streams,
                                     free_size=tile_rule is not None and settings.weight_format == "onnx")
        self.streams = streams if engine == "openvino" else 1  # images predict() may be given at once, from threads
        self.pipeline = create_prediction_pipeline(
            self.descr, weight_format=settings.weight_format, devices=[settings.device], fixed_dataset_statistics=fixed,
            model_adapter=self.adapter,
        )
        self.input_id = self.descr.inputs[0].id
        self.output_id = self.descr.outputs[0].id
        self.tile_rule = tile_rule
        self.size_rules = {str(a.id): axis_size_rule(a) for a in self.descr.inputs[0].axes if str(a.id) in ("y", "x")}
        # the block bioimageio.core's blocked prediction uses (min + n*step, n its default_blocksize_parameter); a field
        # padded to less than it is predicted in one block of its own padded size, which the axis accepts too
        self.default_block = {axis: minimum + DEFAULT_BLOCK_N * step for axis, (minimum, step) in self.size_rules.items()
                              if (minimum, step) != (1, 1)}  # an axis of any size: the whole field
        self.own_size_rules = dict(self.size_rules)
        if tile_rule is not None:
            self.size_rules = {axis: (tile_rule.minimum, tile_rule.step) for axis in self.size_rules}
        self.halo = {str(a.id): int(getattr(a, "halo", 0) or 0) for a in self.descr.outputs[0].axes if str(a.id) in ("y", "x")}
        self.image_measures = image_measures(self.descr)
        self.twins = self._elementwise_twins() if numpy_processing else None

    def _elementwise_twins(self) -> "Twins | None":
        """The model's pre- and post-processing in numpy (:mod:`..methods.elementwise`), when every operator has a
        twin there that gives bioimageio.core's result exactly on a probe field and its statistics; else None, and
        bioimageio.core applies them. With them, the one-tile path mirrors the input halo in numpy as well: its
        widths and mode are read here, once (an attribute bioimageio.core renamed falls back, not fails)."""
        from ..methods.elementwise import agrees, twin

        def sizes(axes: Any, edge: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
            dims = tuple(str(a.id) for a in axes)
            return dims, tuple(edge if d in ("y", "x") else len(getattr(a, "channel_names", ())) or 1
                               for d, a in zip(dims, axes))

        try:
            rng = np.random.default_rng(0)
            in_dims, in_shape = sizes(self.descr.inputs[0].axes, 48)
            if in_dims != ("batch", "channel", "y", "x"):  # what predict() builds its tensor with
                return None
            probe = (rng.random(in_shape) * 1000).astype(np.float32)
            stats = {**self.fixed_stats, **image_statistics(probe[0], self.image_measures or [])}
            mode = getattr(self.pipeline.pad_mode.get(self.input_id), "mode", None)
            if mode not in ("symmetric", "reflect", "edge"):
                return None  # padding with a constant before the preprocessing is not padding after it
            halo = self.pipeline._default_input_halo.get(self.input_id, {})
            widths = tuple((halo[a].left, halo[a].right) if a in halo else (0, 0) for a in in_dims)
            pipeline = self.with_statistics(stats).pipeline  # the operators predict() runs, measures given
            pre = [*pipeline._samplewise_preprocessing, *pipeline._blockwise_preprocessing]
            post = [*pipeline._blockwise_postprocessing, *pipeline._samplewise_postprocessing]
            before, after = twin(pre, member=str(self.input_id)), twin(post, member=str(self.output_id))
            if before is None or after is None:
                return None
            out_dims, out_shape = sizes(self.descr.outputs[0].axes, 48)
            logits = (rng.standard_normal(out_shape) * 8).astype(np.float32)
            if agrees(before, pre, member=str(self.input_id), probe=probe, dims=in_dims, stat=stats) and \
                    agrees(after, post, member=str(self.output_id), probe=logits, dims=out_dims, stat=stats):
                return Twins(before, after, widths, mode)
        except Exception:  # noqa: BLE001 - an operator this check cannot probe: bioimageio.core applies them
            return None
        return None

    def with_statistics(self, stats: dict[Any, Any]) -> "Predictor":
        """This predictor (the same loaded weights) normalising every image with ``stats`` instead of its own
        measures: the blocks of a large field with the field's (bioimageio.core takes sample measures that are
        given as fixed statistics instead of computing them); dataset statistics, if set, still win."""
        import copy

        from bioimageio.core import create_prediction_pipeline

        twin = copy.copy(self)
        twin.pipeline = create_prediction_pipeline(self.descr, weight_format=self.settings.weight_format,
                                                   devices=[self.settings.device], model_adapter=self.pipeline._adapter,
                                                   fixed_dataset_statistics={**stats, **self.fixed_stats})
        twin.fixed_stats = {**stats, **self.fixed_stats}
        return twin

    def predict(self, image: np.ndarray, sample_id: str = "image") -> np.ndarray:
        """Foreground probability (YX, float32, the image's own size) of a CYX image."""
        from bioimageio.core import Sample, Tensor

        if image.ndim != 3 or min(image.shape[-2:]) < 1:
            raise ValueError(f"expected a CYX image, got shape {image.shape}")
        # with larger tiles, bioimageio.core's own halo padding is the only border context (no second margin)
        padding = plan_padding(image.shape[-2:], self.size_rules, self.halo if self.tile_rule is None else {})
        image = image.astype(np.float32, copy=False)
        padded = pad_image(image, padding)
        dims = ("batch", "channel", "y", "x")
        pipeline, stats = self.pipeline, dict(self.fixed_stats)
        missing = [m for m in self.image_measures or () if m not in stats]
        if missing:  # the model's per-image measures in numpy, given to bioimageio.core as fixed (see image_measures),
            # over the image as the model's own tiles see it (mirrored out by the halo, up to the model's size), so
            # other tiles normalise a field exactly as the model's own do
            own = padding if self.tile_rule is None else plan_padding(image.shape[-2:], self.own_size_rules, self.halo)
            stats.update(image_statistics(image, missing, own))
            if self.twins is None:
                pipeline = self.with_statistics(stats).pipeline
        skip = {}
        if self.twins is not None:  # the element-wise processing in numpy: the pipeline only pads, runs and crops
            padded, skip = self.twins.pre(padded[None], dims, stats)[0], {"skip_preprocessing": True, "skip_postprocessing": True}
        tensor = Tensor(padded[None], dims=dims)
        sample = Sample(members={self.input_id: tensor}, stat=stats, id=sample_id)
        if self.tile_rule is None:  # bioimageio.core's default blocks, no larger than the padded image (a small field)
            block = {"batch": 1, "channel": padded.shape[0],
                     **{axis: min(padded.shape[i], self.default_block.get(axis, padded.shape[i])) for i, axis in ((1, "y"), (2, "x"))}}
            result = pipeline.predict_sample_with_fixed_blocking(sample, {self.input_id: block}, **skip)
        elif all(self.tile_rule.fits(padded.shape[i] + 2 * self.halo.get(axis, 0)) for i, axis in ((1, "y"), (2, "x"))):
            if self.twins is not None:  # the halo mirrored in numpy too (the pipeline's own mode: see _elementwise_twins)
                sample.members[self.input_id] = Tensor(np.pad(padded[None], self.twins.halo, mode=self.twins.pad_mode), dims=dims)
                skip["skip_input_padding"] = True
            result = pipeline.predict_sample_without_blocking(sample, **skip)  # the whole field (plus halo) in one tile
        else:  # tiles as large as the rule allows; bioimageio.core overlaps them by the halo
            block = {"batch": 1, "channel": padded.shape[0], "y": self.tile_rule.block(padded.shape[1], self.halo.get("y", 0)),
                     "x": self.tile_rule.block(padded.shape[2], self.halo.get("x", 0))}
            result = pipeline.predict_sample_with_fixed_blocking(sample, {self.input_id: block}, **skip)
        out = result.members[self.output_id].data
        if self.twins is not None:
            out = out.copy(data=self.twins.post(np.asarray(out.values), tuple(map(str, out.dims)), stats))
        out = out.transpose(*[d for d in ("batch", "channel", "z", "y", "x") if d in out.dims])
        values = np.asarray(out.values)
        values = values.reshape(-1, *values.shape[-2:]) if values.ndim > 3 else values[0]
        return padding.crop(values[self.settings.output_channel]).astype(np.float32)

    @property
    def engine(self) -> dict[str, Any]:
        """The runtime that ran the weights (:class:`..methods.engines.Engine`), as recorded in the manifests."""
        from ..methods.engines import Engine, onnxruntime_engine

        if self.adapter is not None:
            return self.adapter.engine.as_record()
        if self.settings.weight_format == "onnx":
            return onnxruntime_engine().as_record()
        return Engine(self.settings.weight_format).as_record()

    def close(self) -> None:
        self.pipeline.unload()


def image_measures(descr: Any) -> list[Any] | None:
    """The model's per-image normalisation measures when they are means, variances or SDs per channel over y and x
    (zero-mean-unit-variance, the common case): :func:`image_statistics` computes them in numpy for a fraction of
    the time bioimageio.core's xarray calculators take (a third of a 256² field's whole prediction). None otherwise:
    bioimageio.core computes them as usual."""
    from bioimageio.core.proc_setup import get_requried_measures
    from bioimageio.core.stat_measures import SampleMean, SampleStd, SampleVar

    measures = [m for m in get_requried_measures(descr).pre if getattr(m, "scope", "") == "sample"]
    if not measures or any(not isinstance(m, (SampleMean, SampleVar, SampleStd)) or set(map(str, m.axes or ())) != {"y", "x"}
                           for m in measures):
        return None
    return measures


def image_statistics(image: np.ndarray, measures: list[Any], padding: Padding | None = None) -> dict[Any, Any]:
    """:func:`image_measures`' values for one CYX image as :func:`pad_image` pads it with ``padding``, per channel, as
    bioimageio.core's tensors. The padded image is not made: mirroring repeats pixels, so each pixel is weighted by
    how often its row and its column occur in the padded one (the same sums; a fraction of the memory and time)."""
    h, w = image.shape[-2:]
    padding = padding or Padding(y=(0, 0), x=(0, 0))
    mode = mirror_mode(image.shape)
    rows = np.bincount(np.pad(np.arange(h), padding.y, mode=mode), minlength=h).astype(np.float64)
    cols = np.bincount(np.pad(np.arange(w), padding.x, mode=mode), minlength=w).astype(np.float64)
    count = rows.sum() * cols.sum()

    def weighted(values: np.ndarray) -> float:  # reductions, not matrix products: BLAS threads woken by those spin
        return float(((values * cols).sum(axis=1) * rows).sum())  # beside the model runtime's (bench/README)

    mean = np.array([weighted(c.astype(np.float64)) for c in image]) / count
    variance = np.array([weighted(np.square(c - np.float32(m), dtype=np.float64)) for c, m in zip(image, mean)]) / count
    return measure_tensors(measures, mean=mean, variance=variance)


def measure_tensors(measures: Iterable[Any], *, mean: np.ndarray, variance: np.ndarray,
                    quantile: Callable[[float], np.ndarray] | None = None) -> dict[Any, Any]:
    """Per-channel sample measures (mean, variance, SD, quantile at q) as the tensors bioimageio.core takes as fixed."""
    from bioimageio.core import Tensor
    from bioimageio.core.stat_measures import SampleMean, SampleStd, SampleVar

    def value(m: Any) -> np.ndarray:
        if isinstance(m, SampleMean):
            return mean
        if isinstance(m, SampleVar):
            return variance
        if isinstance(m, SampleStd):
            return np.sqrt(variance)
        if quantile is None:
            raise ValueError(f"no value for the measure {m!r}")
        return quantile(m.q)

    return {m: Tensor(np.asarray(value(m)).astype(np.float32)[None], dims=("batch", "channel")) for m in measures}


def pooled_pixels(import_manifests: list[str | Path], channels: tuple[str | int, ...], per_unit: int = 20_000,
                  seed: int = 0) -> np.ndarray:
    """A (C, N) sample of pixel values from every unit of a run: the basis of dataset-level normalisation."""
    from ..core.images import read_unit
    from ..core.blocks import PlaneReader, is_large

    rng = np.random.default_rng(seed)
    parts = []
    for manifest in import_manifests:
        for unit in read_json(manifest)["units"]:
            if is_large(unit.get("shape")):  # every n-th pixel of a large unit, read tile by tile, not the unit
                shape = unit["shape"][-2:]
                step = max(1, int(np.sqrt(shape[0] * shape[1] / (16 * per_unit))))
                with PlaneReader(unit["image_path"]) as reader:
                    image = np.stack([reader.read(c, (slice(0, None, step), slice(0, None, step))) for c in
                                      channel_indices(unit["channel_names"], channels, len(unit["channel_names"]))])
            else:
                image = model_channels(read_unit(unit["image_path"]), unit, channels)
            image = image.reshape(len(channels), -1)
            take = rng.choice(image.shape[1], size=min(per_unit, image.shape[1]), replace=False)
            parts.append(image[:, take].astype(np.float32))
    if not parts:
        raise ValueError("no imported units to compute dataset statistics from")
    return np.concatenate(parts, axis=1)


def dataset_statistics(descr: Any, pixels: np.ndarray) -> dict[Any, Any]:
    """The model's per-sample normalisation measures, computed once over a pooled sample of the run.

    Passed to bioimageio.core as fixed statistics, they replace the per-image ones: every image is then
    normalised alike, so a field's prediction no longer depends on how much background it holds.
    """
    from bioimageio.core import Sample, Tensor
    from bioimageio.core.proc_setup import get_requried_measures
    from bioimageio.core.stat_calculators import compute_measures

    measures = {m for m in get_requried_measures(descr).pre if getattr(m, "scope", "") == "sample"}
    if not measures:
        return {}
    tensor = Tensor(pixels[None, :, None, :], dims=("batch", "channel", "y", "x"))
    sample = Sample(members={descr.inputs[0].id: tensor}, stat={}, id="dataset")
    return compute_measures(measures, [sample])


def predict_one(predictor: Predictor, unit: dict[str, Any], out: Path, label: str,
                position: str = "") -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Predict one imported unit into ``out``: ({path, seconds}, None), or (None, failure record).
    ``label`` starts the progress and failure lines (``[inference b0000]``), ``position`` says where in the batch (``3/50``)."""
    from ..core.images import read_unit

    try:
        t0 = time.time()
        path = out / f"{unit['unit_id']}.probability.npy"
        if is_large(unit.get("shape")):
            predict_by_blocks(predictor, unit, path)
        else:
            full = read_unit(unit["image_path"])
            check_model_channels(full, unit["channel_names"], predictor.settings.channels)
            image = model_channels(full, unit, predictor.settings.channels)
            probability = predictor.predict(image, unit["unit_id"])
            np.save(path, probability.astype(np.float16))
        print(" ".join(filter(None, (label, position, unit["unit_id"]))), file=sys.stderr)
        return {"path": str(path), "seconds": round(time.time() - t0, 3)}, None
    except Exception as exc:  # noqa: BLE001
        failure = Failure.from_exception("inference", unit["source_path"], exc, unit_id=unit["unit_id"])
        print(f"{label} FAILED {unit['unit_id']}: {failure.reason}", file=sys.stderr)
        return None, failure.__dict__


# Large fields (blocks.is_large) are predicted a block at a time (memory follows the block): BLOCK_PX-square
# blocks with BLOCK_CONTEXT_PX of real neighbouring pixels around them, normalised with the whole field's
# statistics (what the model would compute on the field), their centres written into the probability file.
BLOCK_PX = 4096  # (4096 + 2 x 96)² holds about what a 4096² field predicted whole holds
BLOCK_CONTEXT_PX = 96


def predict_by_blocks(predictor: "Predictor", unit: dict[str, Any], path: Path) -> None:
    """The probability map of a large unit into ``path`` (``.npy``, float16), block by block."""
    from ..core.blocks import PlaneReader, layout, write_npy

    with PlaneReader(unit["image_path"]) as reader:
        channels = channel_indices(unit["channel_names"], predictor.settings.channels, len(unit["channel_names"]))
        context = max(BLOCK_CONTEXT_PX, 2 * max(predictor.halo.values(), default=0))
        blocks = layout(reader.shape, BLOCK_PX, context)
        field = predictor.with_statistics(field_statistics(predictor.descr, reader, channels, blocks))
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=reader.shape).flush()
        for block in blocks:
            image = np.stack([reader.read(c, block.outer) for c in channels]).astype(np.float32)
            probability = field.predict(image, unit["unit_id"])
            write_npy(path, block.core, probability[block.inner].astype(np.float16))


def field_statistics(descr: Any, reader: Any, channels: list[int], blocks: list[Any]) -> dict[Any, Any]:
    """The model's per-sample normalisation measures over a whole large field, from its blocks' own pixels: mean,
    variance and SD exactly (two passes), quantiles from per-channel histograms (exact for integer images).
    Measures over other axes than y and x are not pooled: they raise (the field cannot be predicted by blocks)."""
    from bioimageio.core.proc_setup import get_requried_measures
    from bioimageio.core.stat_measures import SampleMean, SampleQuantile, SampleStd, SampleVar

    from ..core.blocks import Histogram, value_range

    measures = {m for m in get_requried_measures(descr).pre if getattr(m, "scope", "") == "sample"}
    if not measures:
        return {}
    for m in measures:
        if not isinstance(m, (SampleMean, SampleVar, SampleStd, SampleQuantile)) or not set(map(str, m.axes or ())) <= {"y", "x"} \
                or not m.axes:
            raise ValueError(f"the model's normalisation needs {m!r}, which cannot be pooled over the blocks of a large field")
    n = reader.shape[0] * reader.shape[1]
    total = np.zeros(len(channels))
    for block in blocks:
        total += [float(reader.read(c, block.core).sum(dtype=np.float64)) for c in channels]
    mean = total / n
    squares = np.zeros(len(channels))
    for block in blocks:
        squares += [float(np.sum((reader.read(c, block.core).astype(np.float64) - mean[i]) ** 2)) for i, c in enumerate(channels)]
    variance = squares / n
    quantiles = {m for m in measures if isinstance(m, SampleQuantile)}
    histograms = []
    if quantiles:
        integer = np.issubdtype(reader.dtype, np.integer)
        histograms = [Histogram(*value_range(reader, c, blocks), integer) for c in channels]
        for block in blocks:
            for histogram, c in zip(histograms, channels):
                histogram.add(reader.read(c, block.core))

    return measure_tensors(measures, mean=mean, variance=variance,
                           quantile=lambda q: np.array([h.percentile(100 * q, np.float32) for h in histograms]))


def inference_manifest(batch: str, check: dict[str, Any], settings: ModelSettings, predictor: Predictor | None,
                       dataset_pixels: Any, load_seconds: float, predictions: dict[str, Any],
                       failures: list[dict[str, Any]]) -> dict[str, Any]:
    rule = predictor.tile_rule if predictor is not None else None
    return {
        "batch": batch,
        "model": {k: check[k] for k in ("source", "name", "digest", "weight_format")},
        "device": settings.device,
        "normalization": "dataset statistics" if dataset_pixels else "per image (the model's own)",
        "tiles": rule.as_record() if rule else "the model's own",
        "engine": predictor.engine if predictor is not None else None,  # the runtime, its version and precision
        "fields_side_by_side": predictor.streams if predictor is not None else None,
        # where the model's declared pre- and post-processing ran (the same result either way: see Predictor)
        "processing": "numpy (methods.elementwise, checked against bioimageio.core)" if predictor is not None and
                      predictor.twins is not None else "bioimageio.core",
        "model_load_seconds": round(load_seconds, 3),
        "predictions": predictions,
        "failures": failures,
    }


def batch_predictor(settings: ModelSettings, check: dict[str, Any], pooled: np.ndarray | None = None,
                    threads: int | None = None, streams: int = 1) -> Predictor:
    """The predictor a batch uses: the tiles and the engine validated in the model check (``model.tile_px``,
    ``model.engine``), else the model's own tiles with onnxruntime. ``streams``: fields predicted side by side
    (OpenVINO; :func:`..core.costs.inference_streams`)."""
    from ..methods.tiling import TileRule

    tiling = check.get("tiling") or {}
    rule = TileRule(**tiling["rule"]) if tile_request(settings.tile_px) != "model" and tiling.get("status") == "passed" else None
    engine = (tiling.get("engine") or {}) if rule is not None else {}
    return Predictor(settings, pooled, threads, tile_rule=rule, engine=engine.get("name", "onnxruntime"),
                     precision=engine.get("precision"), streams=streams)


def predict_batch(import_manifest: str | Path, settings: ModelSettings, model_check: str | Path, out_dir: str | Path,
                  dataset_pixels: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Predict every unit of an imported batch with one pipeline; per-unit errors are recorded."""
    check = read_json(model_check)
    doc = read_json(import_manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pooled = np.load(dataset_pixels) if dataset_pixels else None
    # fields side by side (OpenVINO), not when one is large: its blocks hold the memory the job asked for
    large = any(is_large(unit.get("shape")) for unit in doc["units"])
    streams = 1 if large else inference_streams((check.get("tiling") or {}).get("engine"), threads)
    predictor = batch_predictor(settings, check, pooled, threads, streams) if doc["units"] else None
    load_seconds = time.time() - started
    units = list(enumerate(doc["units"], start=1))

    def predict(numbered: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        i, unit = numbered
        return predict_one(predictor, unit, out, f"[inference {doc['batch']}]", f"{i}/{len(units)}")  # type: ignore[arg-type]

    if predictor is not None and predictor.streams > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(predictor.streams) as pool:  # results in the units' order
            results = list(pool.map(predict, units))
    else:
        results = [predict(numbered) for numbered in units]
    predictions, failures = by_unit(doc["units"], results)
    if predictor is not None:
        predictor.close()
    result = inference_manifest(doc["batch"], check, settings, predictor, dataset_pixels, load_seconds, predictions, failures)
    write_json(out / "manifest.json", result)
    return result


def run_check(*, settings: ModelSettings, model_check: str, cache_dir: str) -> None:
    """Rule ``check_model``: the model loaded and tested once (cached per digest) -> ``models/model_check.json``."""
    try:
        record = check_model(settings, cache_dir)
    except ModelError as exc:
        raise SystemExit(f"snakescope: {exc}") from None
    if record["test"]["status"] not in ("passed", "skipped"):
        reasons = "; ".join(record["test"].get("errors") or record["test"].get("failed_checks") or ["no detail"])
        raise SystemExit(f"snakescope: config key model.source={settings.source!r}: bioimageio test_model "
                         f"did not pass ({record['test']['status']}): {reasons}")
    write_json(model_check, record)
    cached = " (cached)" if record.get("test_cached") else ""
    print(f"model {record['name']} [{settings.weight_format}] test {record['test']['status']}{cached}", file=sys.stderr)


def run_dataset_pixels(*, imported: list[str], pixels: str, channels: tuple[str | int, ...]) -> None:
    """Rule ``dataset_pixels`` (``model.normalization: dataset``): a pooled pixel sample of the whole run."""
    from ..core.layout import manifest

    sample = pooled_pixels([manifest(folder) for folder in imported], channels)
    with open(pixels, "wb") as handle:
        np.save(handle, sample)
    print(f"dataset pixels: {sample.shape[1]} per channel from {len(imported)} batch(es)", file=sys.stderr)


def run_inference(*, imported: str, model_check: str, inference: str, settings: ModelSettings, threads: int,
                  pixels: str | None = None) -> None:
    """Rule ``infer``: the model loaded once for the batch, every unit predicted -> ``inference/<batch>/``."""
    from ..core.layout import manifest
    from ..core.progress import stage_progress

    try:
        doc = predict_batch(manifest(imported), settings, model_check, inference, pixels, threads=threads)
    except ModelError as exc:
        raise SystemExit(f"snakescope: {exc}") from None
    stage_progress("inference", doc, len(doc["predictions"]))
