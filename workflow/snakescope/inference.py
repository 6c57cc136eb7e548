"""Stage 3, bioimage.io inference: check a model once, load it once per batch, predict tiled."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .records import Failure, read_json, write_json


class ModelError(RuntimeError):
    """The configured model cannot be used; the message names the config key and the reason."""


@dataclass(frozen=True)
class ModelSettings:
    """Config section ``model``."""

    source: str
    weight_format: str = "onnx"
    device: str = "cpu"
    channels: tuple[str | int, ...] = (0,)
    output_channel: int = 0
    run_test: bool = True

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "ModelSettings":
        values = dict(section)
        values["channels"] = tuple(values.get("channels", (0,)))
        return cls(**values)


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
        "bioimageio.core": importlib.metadata.version("bioimageio.core"),
        "bioimageio.spec": importlib.metadata.version("bioimageio.spec"),
        "inputs": [str(t.id) for t in descr.inputs],
        "outputs": [str(t.id) for t in descr.outputs],
    }
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


def select_channels(array: np.ndarray, names: list[str], wanted: tuple[str | int, ...]) -> np.ndarray:
    index = []
    for w in wanted:
        if isinstance(w, int):
            if not 0 <= w < array.shape[0]:
                raise IndexError(f"config key model.channels: channel index {w} but the unit has {array.shape[0]} channel(s)")
            index.append(w)
        elif w in names:
            index.append(names.index(w))
        else:
            raise KeyError(f"config key model.channels: channel {w!r} not among {names}")
    return array[index]


class Predictor:
    """A bioimage.io prediction pipeline created once and reused for every image of a batch."""

    def __init__(self, settings: ModelSettings) -> None:
        from bioimageio.core import create_prediction_pipeline

        self.settings = settings
        self.descr = load_description(settings.source)
        self.pipeline = create_prediction_pipeline(
            self.descr, weight_format=settings.weight_format, devices=[settings.device]
        )
        self.input_id = self.descr.inputs[0].id
        self.output_id = self.descr.outputs[0].id

    def predict(self, image: np.ndarray, sample_id: str = "image") -> np.ndarray:
        """Foreground probability (YX, float32) of a CYX image, predicted block by block."""
        from bioimageio.core import Sample, Tensor

        tensor = Tensor(image[None].astype(np.float32), dims=("batch", "channel", "y", "x"))
        sample = Sample(members={self.input_id: tensor}, stat={}, id=sample_id)
        result = self.pipeline.predict_sample_with_blocking(sample)
        out = result.members[self.output_id].data
        out = out.transpose(*[d for d in ("batch", "channel", "z", "y", "x") if d in out.dims])
        values = np.asarray(out.values)
        values = values.reshape(-1, *values.shape[-2:]) if values.ndim > 3 else values[0]
        return values[self.settings.output_channel].astype(np.float32)

    def close(self) -> None:
        self.pipeline.unload()


def predict_batch(import_manifest: str | Path, settings: ModelSettings, model_check: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Predict every unit of an imported batch with one pipeline; per-unit errors are recorded."""
    from .acquisition import read_unit

    check = read_json(model_check)
    doc = read_json(import_manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    started = time.time()
    predictor = Predictor(settings) if doc["units"] else None
    load_seconds = time.time() - started
    for i, unit in enumerate(doc["units"], start=1):
        try:
            image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], settings.channels)
            t0 = time.time()
            probability = predictor.predict(image, unit["unit_id"])  # type: ignore[union-attr]
            path = out / f"{unit['unit_id']}.probability.npy"
            np.save(path, probability.astype(np.float16))
            predictions[unit["unit_id"]] = {"path": str(path), "seconds": round(time.time() - t0, 3)}
            print(f"[inference {doc['batch']}] {i}/{len(doc['units'])} {unit['unit_id']}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001
            failure = Failure.from_exception("inference", unit["source_path"], exc, unit_id=unit["unit_id"])
            failures.append(failure.__dict__)
            print(f"[inference {doc['batch']}] FAILED {unit['unit_id']}: {failure.reason}", file=sys.stderr)
    if predictor is not None:
        predictor.close()
    result = {
        "batch": doc["batch"],
        "model": {k: check[k] for k in ("source", "name", "digest", "weight_format")},
        "device": settings.device,
        "model_load_seconds": round(load_seconds, 3),
        "predictions": predictions,
        "failures": failures,
    }
    write_json(out / "manifest.json", result)
    return result
