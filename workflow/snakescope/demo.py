"""Built-in demo: deterministic synthetic nuclei images with known truth, and a small bioimage.io model.

Everything here is generated from fixed seeds, so the demo runs on a fresh machine with no network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .core.records import write_json

PIXEL_SIZE_UM = 0.65
SHAPE = (256, 256)
CAMERA_MAX = 4095  # a 12-bit camera in a 16-bit container
DIAMETER_UM = (9.0, 14.0)  # drawn uniformly; inside the HeLa range of config/knowledge_base.yaml


@dataclass(frozen=True)
class DemoField:
    """One synthetic field of view: its nuclei count, degradation and seed."""

    name: str
    n_nuclei: int
    degradation: str = "none"  # none | out_of_focus | saturated | empty_field | low_signal
    touching_pairs: int = 2
    seed: int = 0


def nuclei_scene(rng: np.random.Generator, n: int, touching_pairs: int, shape=SHAPE, pixel_um=PIXEL_SIZE_UM):
    """Ground-truth labels and a clean intensity image (float, background 0) of ``n`` elliptical nuclei."""
    labels = np.zeros(shape, np.int32)
    clean = np.zeros(shape, np.float64)
    yy, xx = np.indices(shape)
    placed: list[tuple[float, float, float]] = []
    attempts = 0
    while len(placed) < n and attempts < 20000:
        attempts += 1
        radius = rng.uniform(*DIAMETER_UM) / 2 / pixel_um
        partner = len(placed) % 2 == 1 and len(placed) < 2 * touching_pairs
        if partner:
            # place a partner touching the previous nucleus (slight overlap of the outlines)
            py, px, pr = placed[-1]
            angle = rng.uniform(0, 2 * np.pi)
            dist = (pr + radius) * rng.uniform(0.85, 0.95)
            cy, cx = py + dist * np.sin(angle), px + dist * np.cos(angle)
        else:
            cy, cx = rng.uniform(radius, shape[0] - radius), rng.uniform(radius, shape[1] - radius)
        if not (radius <= cy <= shape[0] - radius and radius <= cx <= shape[1] - radius):
            continue
        ok = all(np.hypot(cy - y, cx - x) >= (r + radius) * (0.84 if partner and i == len(placed) - 1 else 1.1) for i, (y, x, r) in enumerate(placed))
        if not ok:
            continue
        ratio, theta = rng.uniform(0.75, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / radius) ** 2 + (v / (radius * ratio)) ** 2 <= 1.0
        labels[inside & (labels == 0)] = len(placed) + 1
        brightness = rng.uniform(0.7, 1.0)
        clean[inside] = brightness * (1.0 + 0.15 * rng.standard_normal(inside.sum()))
        placed.append((cy, cx, radius))
    clean = ndi.gaussian_filter(clean, 1.0)
    return labels, clean


def render_field(field: DemoField) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 camera image and its truth labels for a demo field."""
    rng = np.random.default_rng(field.seed)
    n = 0 if field.degradation == "empty_field" else field.n_nuclei
    labels, clean = nuclei_scene(rng, n, field.touching_pairs)
    background, amplitude = 100.0, 1200.0
    if field.degradation == "out_of_focus":
        clean = ndi.gaussian_filter(clean, 6.0)
    if field.degradation == "saturated":
        amplitude *= 6.0
    if field.degradation == "low_signal":
        amplitude *= 0.03
    illumination = 1.0 - 0.1 * np.linspace(-1, 1, SHAPE[1])[None, :] ** 2
    expected = background + amplitude * clean * illumination
    photons = rng.poisson(np.maximum(expected, 0)).astype(np.float64)
    image = np.clip(photons + rng.normal(0, 4.0, SHAPE), 0, CAMERA_MAX)
    return image.astype(np.uint16), labels


DEMO_FIELDS = [
    *(DemoField(f"ctrl_{i:02d}", n, seed=100 + i) for i, n in enumerate([24, 30, 18, 36], start=1)),
    *(DemoField(f"treated_{i:02d}", n, seed=200 + i) for i, n in enumerate([12, 15, 10, 14], start=1)),
    DemoField("blurred_01", 26, "out_of_focus", seed=301),
    DemoField("saturated_01", 26, "saturated", seed=302),
    DemoField("empty_01", 0, "empty_field", seed=303),
    DemoField("dim_01", 26, "low_signal", seed=304),
]


def clustered_fields(n: int, nuclei: int = 30, seed: int = 600) -> list[DemoField]:
    """Fields where most nuclei touch a neighbour: the hard case for splitting (refinement benchmark)."""
    return [DemoField(f"clustered_{i:02d}", nuclei, touching_pairs=nuclei * 2 // 5, seed=seed + i) for i in range(n)]


def write_fields(fields: list[DemoField], out_dir: str | Path, condition: str = "DMSO") -> Path:
    """Write fields as OME-TIFFs with truth labels and a sample sheet; returns the sheet's path."""
    import tifffile

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rows = ["sample_id\tpath\ttreatment\tstain\tcell_line"]
    for field in fields:
        image, labels = render_field(field)
        _write_ome(out / "images" / f"{field.name}.ome.tif", [image[None]], "CYX")
        tifffile.imwrite(out / "truth" / f"{field.name}.tif", labels.astype(np.uint16), compression="zlib")
        rows.append(f"{field.name}\timages/{field.name}.ome.tif\t{condition}\tDAPI\tHeLa")
    (out / "samples.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out / "samples.tsv"


def _write_ome(path: Path, arrays: list[np.ndarray], axes: str, channel: str = "DAPI") -> None:
    import tifffile

    meta = {"axes": axes, "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeY": PIXEL_SIZE_UM,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "Channel": {"Name": [channel]}}
    if "Z" in axes:
        meta.update(PhysicalSizeZ=1.0, PhysicalSizeZUnit="µm")
    with tifffile.TiffWriter(path, ome=True) as tif:
        for array in arrays:
            tif.write(array, metadata=meta)


def write_demo_data(out_dir: str | Path) -> dict[str, Any]:
    """Write the demo images (OME-TIFF), a sample sheet and the truth (counts and label images)."""
    import tifffile

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    truth: dict[str, Any] = {}
    rows = ["sample_id\tpath\ttreatment\tstain\tcell_line\twell\tnotes"]
    wells = iter(f"{r}{c:02d}" for r in "ABCD" for c in range(1, 13))

    def record(unit_id: str, field: DemoField, labels: np.ndarray, condition: str) -> None:
        tifffile.imwrite(out / "truth" / f"{unit_id}.tif", labels.astype(np.uint16), compression="zlib")
        truth[unit_id] = {"count": int(labels.max()), "degradation": field.degradation, "condition": condition}

    for field in DEMO_FIELDS:
        image, labels = render_field(field)
        condition = "compound_X" if field.name.startswith("treated") else "DMSO"
        _write_ome(out / "images" / f"{field.name}.ome.tif", [image[None]], "CYX")
        record(field.name, field, labels, condition)
        note = "" if field.degradation == "none" else f"demo degradation: {field.degradation}"
        rows.append(f"{field.name}\timages/{field.name}.ome.tif\t{condition}\tDAPI\tHeLa\t{next(wells)}\t{note}")

    # a Z-stack: the in-focus plane in the middle, defocused planes around it (max projection recovers it)
    field = DemoField("zstack_01", 20, seed=401)
    image, labels = render_field(field)
    stack = np.stack([ndi.gaussian_filter(image.astype(float), s).astype(np.uint16) for s in (4, 2, 0, 2, 4)])
    _write_ome(out / "images" / "zstack_01.ome.tif", [stack[None]], "CZYX")
    record("zstack_01", field, labels, "DMSO")
    rows.append(f"zstack_01\timages/zstack_01.ome.tif\tDMSO\tDAPI\tHeLa\t{next(wells)}\t5-plane Z stack")

    # a two-scene file (two fields of one well)
    scenes = []
    for s, n in enumerate([22, 28]):
        field = DemoField(f"multiscene_01_s{s}", n, seed=500 + s)
        image, labels = render_field(field)
        scenes.append(image[None])
        record(field.name, field, labels, "DMSO")
    _write_ome(out / "images" / "multiscene_01.ome.tif", scenes, "CYX")
    rows.append(f"multiscene_01\timages/multiscene_01.ome.tif\tDMSO\tDAPI\tHeLa\t{next(wells)}\ttwo scenes")

    (out / "samples.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_json(out / "truth.json", truth)
    return truth


# --- demo bioimage.io model --------------------------------------------------------------------

KERNEL_SIGMA_PX = 1.5
THRESHOLD, GAIN = 0.5, 4.0
HALO = 8


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    ax = np.arange(-radius, radius + 1)
    k = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def demo_onnx_bytes() -> bytes:
    """A tiny ONNX network: Gaussian smoothing, then a logistic foreground probability."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    radius = 4
    kernel = _gaussian_kernel(KERNEL_SIGMA_PX, radius)[None, None]
    nodes = [
        helper.make_node("Conv", ["raw", "kernel"], ["smooth"], pads=[radius] * 4),
        helper.make_node("Sub", ["smooth", "threshold"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "snakescope_demo_nuclei",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 1, "y", "x"])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1, "y", "x"])],
        initializer=[
            numpy_helper.from_array(kernel, "kernel"),
            numpy_helper.from_array(np.array(THRESHOLD, np.float32), "threshold"),
            numpy_helper.from_array(np.array(GAIN, np.float32), "gain"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="snakescope")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_demo_model(out_dir: str | Path) -> Path:
    """Write the demo model as a bioimage.io package (bioimageio.yaml, ONNX weights, test tensors)."""
    import onnxruntime
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = demo_onnx_bytes()
    (out / "weights.onnx").write_bytes(weights)
    image, _ = render_field(DemoField("model_test", 20, seed=7))
    test_input = image.astype(np.float32)[None, None]
    normalised = (test_input - test_input.mean()) / (test_input.std() + 1e-6)
    session = onnxruntime.InferenceSession(weights, providers=["CPUExecutionProvider"])
    test_output = session.run(None, {"raw": normalised.astype(np.float32)})[0]
    np.save(out / "test_input.npy", test_input)
    np.save(out / "test_output.npy", test_output.astype(np.float32))
    (out / "README.md").write_text(
        "# snakescope demo nuclei model\n\nA small fixed-weight network (Gaussian smoothing of the\n"
        "zero-mean unit-variance input, then a logistic foreground probability) built by\n"
        "`snakescope.demo.write_demo_model`. It is no substitute for a trained model: it exists so\n"
        "the demo runs offline. Use a bioimage.io model-zoo model for real data.\n",
        encoding="utf-8",
    )

    def sha(name: str) -> str:
        return hashlib.sha256((out / name).read_bytes()).hexdigest()

    space = {"min": 64, "step": 16}
    rdf = {
        "format_version": "0.5.4",
        "type": "model",
        "name": "snakescope demo nuclei",
        "description": "Foreground probability of fluorescent nuclei for the snakescope demo (fixed weights).",
        "authors": [{"name": "snakescope developers"}],
        "cite": [{"text": "snakescope demo model", "url": "https://bioimage.io"}],
        "license": "MIT",
        "documentation": "README.md",
        "tags": ["nucleus", "segmentation", "demo", "onnx"],
        "inputs": [{
            "id": "raw",
            "description": "fluorescence intensity",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": ["raw_intensity"]},
                {"type": "space", "id": "y", "size": space},
                {"type": "space", "id": "x", "size": space},
            ],
            "test_tensor": {"source": "test_input.npy", "sha256": sha("test_input.npy")},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["x", "y"]}},
            ],
        }],
        "outputs": [{
            "id": "probability",
            "description": "foreground probability in [0, 1]",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": ["probability"]},
                {"type": "space", "id": "y", "halo": HALO, "size": {"tensor_id": "raw", "axis_id": "y"}},
                {"type": "space", "id": "x", "halo": HALO, "size": {"tensor_id": "raw", "axis_id": "x"}},
            ],
            "test_tensor": {"source": "test_output.npy", "sha256": sha("test_output.npy")},
            "data": {"range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": sha("weights.onnx"), "opset_version": 17}},
    }
    (out / "bioimageio.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")
    return out / "bioimageio.yaml"
