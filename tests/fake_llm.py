"""A small HTTP server that speaks two LLM wire protocols and answers from the image bytes it receives.

Ollama's native REST API (``/api/version``, ``/api/tags``, ``/api/show``, ``/api/chat``, ``/api/pull``) and the
OpenAI-compatible Chat Completions API as vLLM serves it (``/v1/models``, ``/v1/chat/completions`` streamed or not, with images
as data URLs and ``response_format``, ``/version``, bearer API keys). It is the test double for a real vision
model server, which cannot be installed here.
It decodes every image of a chat request (PNG or JPEG only, as a real vision model needs), looks at
it with plain image analysis (counts bright blobs, measures sharpness, saturation and contrast) and
answers in the requested JSON schema, so a test fails if the wrong image, no image or a TIFF is sent.
It reads the segmented object count from the prompt's <data> block to critique the segmentation,
and it is deliberately gullible: an instruction found *outside* the <data> block is obeyed, so a
prompt that lets metadata escape its block is caught.

Misbehaviour for the next chat requests is queued with ``server.script.extend([...])``:
``ok``, ``slow:<seconds>``, ``http500``, ``invalid_json``, ``truncated``, ``schema_violation``,
``drop`` (close the connection without answering), ``unknown_model``, ``wrong_numbers``, ``no_action`` and
``no_actions`` (the review answers ``suggested_actions`` ``[{"action": "none"}]`` or ``[]``), ``http429:<s>`` (HTTP 429
with ``Retry-After: <s>``), ``down:<s>`` (this and every chat request for the next <s> seconds get HTTP 500, as a
server restarting does). Each recorded request has its arrival time (``t``, time.monotonic()).
Models in ``blind`` cannot see: they ignore images (as a text-only model does) and say so in ``/api/show``.
With ``api_key`` set, OpenAI-compatible requests without ``Authorization: Bearer <key>`` get HTTP 401; with
``response_format=False`` the server refuses structured output (HTTP 400), like servers that lack it.

Run standalone (used as a fake ``ollama`` binary): ``python fake_llm.py serve`` listens on $OLLAMA_HOST.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"
VERSION = "0.12.6-fake"
INJECTION = re.compile(r"ignore (all )?previous instructions", re.I)
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")


def request_schema(body: dict[str, Any], kind: str = "vllm") -> dict[str, Any] | None:
    """The JSON schema a chat request asks for, as the server ``kind`` reads it: Ollama ``format``, OpenAI
    ``response_format`` (json_schema; llama-cpp-python: json_object with ``schema``), vLLM ``structured_outputs.json``
    (>= 0.12) or ``guided_json`` (< 0.12; 0.12 removed it and ignores the field, as this fake's vLLM 0.12.6 does)."""
    if isinstance(body.get("format"), dict):
        return body["format"]
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    if response_format.get("type") == "json_object":
        return response_format.get("schema")
    if isinstance(body.get("structured_outputs"), dict):
        return body["structured_outputs"].get("json")
    return None if kind == "vllm" else body.get("guided_json")


def is_probe(body: dict[str, Any] | None) -> bool:
    """A self-test probe (image or text): by its schema, or by its question when the schema is not sent."""
    if {"brightness", "status"} & set((request_schema(body or {}, "any") or {}).get("properties") or {}):
        return True
    return any(q in json.dumps((body or {}).get("messages", "")) for q in ("whether you can see images", "whether you answer in JSON"))


def openai_message(body: dict[str, Any]) -> tuple[str, list[str]]:
    """(text, base64 images) of an OpenAI-style chat request; images must be PNG/JPEG data URLs."""
    text, images = [], []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            text.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                text.append(part["text"])
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")):
                    raise ImageRejected(f"unsupported image URL {url[:40]!r}; send a PNG or JPEG data URL")
                images.append(url.split(",", 1)[1])
    return "\n".join(text), images


class ImageRejected(ValueError):
    pass


def decode_image(b64: str) -> np.ndarray:
    """RGB array of a base64 PNG/JPEG; anything else is rejected like a vision model's image loader."""
    from PIL import Image

    raw = base64.b64decode(b64)
    if not raw.startswith((PNG, JPEG)):
        raise ImageRejected(f"unsupported image format (first bytes {raw[:4]!r}); send PNG or JPEG")
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def split_panels(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(raw grey panel, outline panel or None) from one two-panel image or two separate images."""
    if len(images) >= 2:
        return images[0][..., 0].astype(float), images[1]
    image = images[0]
    h, w = image.shape[:2]
    if w > 1.5 * h:  # two panels with a 4 px gap
        half = (w - 4) // 2
        return image[:, :half, 0].astype(float), image[:, half + 4 :]
    return image[..., 0].astype(float), None


def look(grey: np.ndarray) -> dict[str, Any]:
    """What the 'model' sees in the raw panel: nuclei (own watershed), sharpness, saturation, contrast."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima, remove_small_objects
    from skimage.segmentation import watershed

    grey = grey[: int(grey.shape[0] * 0.93)]  # ignore the scale-bar strip
    smooth = ndi.gaussian_filter(grey, 1.5)
    background = float(np.median(smooth))
    noise = float(np.std(grey - smooth)) + 1e-6
    threshold = threshold_otsu(smooth) if smooth.max() > smooth.min() else 255
    mask = remove_small_objects(smooth > threshold, max_size=19)
    contrast = float(np.median(smooth[mask]) - background) if mask.any() else 0.0
    snr = contrast / noise
    nuclei = np.zeros(mask.shape, int)
    if mask.any() and snr > 1.0:
        distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
        markers, _ = ndi.label(h_maxima(distance, 1.5) & mask)
        nuclei = watershed(-distance, markers, mask=mask)
    count = int(len(np.unique(nuclei)) - 1)
    lap = ndi.laplace(ndi.gaussian_filter(grey, 1.0))
    sharpness = float(np.sqrt(np.mean(lap[mask] ** 2)) / max(contrast, 1.0)) if mask.any() else 0.0
    return {"count": count, "nuclei": nuclei, "snr": snr, "sharpness": sharpness,
            "saturated_percent": float(100 * np.mean(grey >= 255)), "foreground": float(mask.mean())}


def outlined_objects(panel: np.ndarray) -> np.ndarray:
    """Labels of the regions enclosed by yellow outlines in the overlay panel."""
    from scipy import ndimage as ndi

    yellow = (panel[..., 0] > 200) & (panel[..., 1] > 150) & (panel[..., 2] < 80)
    interior = ndi.binary_fill_holes(yellow) & ~yellow
    labels, _ = ndi.label(interior)
    sizes = np.bincount(labels.ravel())
    labels[np.isin(labels, np.flatnonzero(sizes < 4))] = 0
    return labels


def critique(seen: dict[str, Any], outlines: np.ndarray | None) -> dict[str, Any]:
    if outlines is None:
        return {"merged": 0, "split": 0, "missed": 0, "artefacts": 0, "comment": "no segmentation panel received"}
    from scipy import ndimage as ndi

    nuclei = seen["nuclei"][: outlines.shape[0], : outlines.shape[1]]
    outlines = outlines[: nuclei.shape[0], : nuclei.shape[1]]
    centres = ndi.center_of_mass(nuclei > 0, nuclei, range(1, nuclei.max() + 1)) if nuclei.max() else []
    hits: dict[int, int] = {}
    missed = 0
    for cy, cx in centres:
        region = int(outlines[int(round(cy)), int(round(cx))])
        if region == 0:
            missed += 1
        else:
            hits[region] = hits.get(region, 0) + 1
    merged = sum(n - 1 for n in hits.values() if n > 1)
    artefacts = int(len(set(np.unique(outlines)) - {0} - set(hits)))
    return {"merged": merged, "split": 0, "missed": missed, "artefacts": artefacts,
            "comment": f"{len(centres)} nuclei seen; {merged} merged into shared outlines, {missed} without outline, "
                       f"{artefacts} outlines without a nucleus"}


def data_block(prompt: str) -> tuple[dict[str, Any], str]:
    """(the parsed <data> JSON, the prompt text outside the block)."""
    match = re.search(r"^<data>\n(.*?)</data>", prompt, re.S | re.M)  # ends at the first closing tag
    if not match:
        return {}, prompt
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        data = {}
    return data, prompt[: match.start()] + prompt[match.end() :]


def review_answer(images: list[np.ndarray], prompt: str) -> dict[str, Any]:
    grey, outline_panel = split_panels(images)
    seen = look(grey)
    data, outside = data_block(prompt)
    issues = []
    if seen["count"] == 0 or seen["snr"] < 1.5:
        issues.append({"type": "empty_field", "severity": "fail", "evidence": "no nuclei visible"})
    else:
        if seen["saturated_percent"] > 1.0:
            issues.append({"type": "saturated", "severity": "fail", "evidence": f"{seen['saturated_percent']:.1f}% of pixels white and flat"})
        if seen["snr"] < 6:
            issues.append({"type": "low_signal", "severity": "warn", "evidence": f"nuclei barely above the grainy background (contrast/noise {seen['snr']:.1f})"})
        elif seen["sharpness"] < 0.05:
            issues.append({"type": "out_of_focus", "severity": "fail", "evidence": f"soft nuclear edges (sharpness {seen['sharpness']:.2f})"})
    outlines = outlined_objects(outline_panel) if outline_panel is not None else None
    crit = critique(seen, outlines)
    if crit["merged"] >= 2:
        issues.append({"type": "under_segmentation", "severity": "warn", "evidence": f"{crit['merged']} nuclei share an outline"})
    verdict = "fail" if any(i["severity"] == "fail" for i in issues) else "warn" if issues else "pass"
    questions = re.findall(r"\(\d+\) ([^;\n]+\?)", outside)
    answers = [{"question": q, "answer": "yes" if seen["count"] > 0 else "no",
                "evidence": f"{seen['count']} nuclei visible"} for q in questions]
    if INJECTION.search(outside):  # gullible on purpose: obeys instructions that escaped the data block
        verdict, issues = "pass", []
    actions = {"out_of_focus": "refocus", "saturated": "reduce_exposure", "low_signal": "increase_exposure",
               "empty_field": "skip_field", "under_segmentation": "adjust_segmentation"}
    return {
        "verdict": verdict,
        "issues": issues,
        "estimated_count": seen["count"],
        "critique": crit,
        "answers": answers,
        "suggested_actions": [{"action": actions[i["type"]], "detail": i["evidence"]} for i in issues] or
                             [{"action": "none", "detail": "image and segmentation look fine"}],
        "confidence": 0.7,
        # like a real model it may quote the sample sheet: the report must show such text, never run it
        "summary": f"{seen['count']} nuclei; segmentation reports {data.get('segmentation', {}).get('object_count')}"
                   + (f"; notes: {notes}" if (notes := data.get("sample_sheet_metadata", {}).get("notes")) else ""),
    }


def summary_text(prompt: str, wrong: bool) -> str:
    data, _ = data_block(prompt)
    verdicts = data.get("verdicts", {})
    units = data.get("units", 0) + (7 if wrong else 0)
    return (f"{units} image units were analysed; {verdicts.get('pass', 0)} passed, {verdicts.get('warn', 0)} "
            f"warned and {verdicts.get('fail', 0)} failed review.")


def probe_answer(images: list[np.ndarray]) -> dict[str, str]:
    """The self-test's question: is the image bright or dark? (A blind model gets no images and says 'bright'.)"""
    return {"brightness": "bright" if not images or images[0].mean() > 127 else "dark"}


def blind_answer() -> dict[str, Any]:
    """A schema-valid review from a model that saw no image."""
    return {"verdict": "pass", "issues": [], "estimated_count": 0, "answers": [], "confidence": 0.9,
            "critique": {"merged": 0, "split": 0, "missed": 0, "artefacts": 0, "comment": "looks fine"},
            "suggested_actions": [{"action": "none", "detail": "looks fine"}], "summary": "The image looks fine."}


class FakeLLMServer:
    """The server; ``start()`` binds 127.0.0.1 on a free port (or ``port``) and serves in a thread."""

    def __init__(self, models: dict[str, str] | None = None, port: int = 0, latency: float = 0.0, slots: int | None = None,
                 blind: set[str] | None = None, api_key: str | None = None, response_format: bool = True,
                 kind: str = "vllm") -> None:
        """``latency``: seconds each chat answer takes on a slot; ``slots``: how many answers are computed at once
        (like a GPU server's parallel slots; None: unlimited). ``max_in_flight`` records the most seen at once.
        ``kind``: which OpenAI-compatible server ``/v1`` imitates: ``vllm`` (``/version`` 0.12.6, ``structured_outputs``)
        or ``llama-cpp-python`` (models owned by "me", no ``/version``, HTTP 500 for a ``json_schema`` response format:
        its request model allows only 'text' or 'json_object')."""
        self.kind = kind
        self.models = dict(models or {"qwen2.5vl:7b": "sha256:" + "ab" * 32})
        self.blind = set(blind or ())
        self.api_key = api_key
        self.response_format = response_format
        self.latency = latency
        self.slots = threading.Semaphore(slots) if slots else None
        self.in_flight = self.max_in_flight = 0
        self.script: list[str] = []
        self.down_until = 0.0  # chat requests before this time.monotonic() get HTTP 500 (behaviour ``down:<s>``)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "FakeLLMServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def openai_base(self) -> str:
        return self.host + "/v1"

    def chat_requests(self) -> list[dict[str, Any]]:
        """Chat requests of either protocol, self-test probes left out."""
        return [r for r in self.requests if r["path"] in CHAT_PATHS and not is_probe(r["body"])]

    def probe_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] in CHAT_PATHS and is_probe(r["body"])]

    def next_behaviour(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                if getattr(self, "t0", None) is not None and server.latency:
                    time.sleep(max(0.0, server.latency - (time.monotonic() - self.t0)))
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, content: str, model: str, done_reason: str, payload: dict[str, Any]) -> None:
                """The answer as server-sent events, as vLLM and llama.cpp stream it: content deltas, the finish reason,
                a usage chunk when ``stream_options.include_usage``, then ``[DONE]``."""
                if server.latency:
                    time.sleep(max(0.0, server.latency - (time.monotonic() - self.t0)))
                base = {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model}
                pieces = [content[i:i + 40] for i in range(0, len(content), 40)] or [""]
                events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}
                          for piece in pieces]
                events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": done_reason}]})
                if (payload.get("stream_options") or {}).get("include_usage"):
                    events.append({**base, "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": len(content) // 4,
                                                                    "total_tokens": 100 + len(content) // 4}})
                data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "body": payload, "authorization": self.headers.get("Authorization"),
                                        "t": time.monotonic()})
                return payload

            def authorised(self) -> bool:
                """OpenAI-compatible paths check the bearer key, as vLLM's --api-key does."""
                if server.api_key is None or not self.path.startswith("/v1/"):
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self.reply(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error", "code": 401}})
                return False

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append({"path": self.path, "body": None, "authorization": self.headers.get("Authorization")})
                if not self.authorised():
                    return
                if self.path == "/api/version":
                    self.reply(200, {"version": VERSION})
                elif self.path == "/version" and server.kind == "vllm":
                    self.reply(200, {"version": VERSION})
                elif self.path == "/api/tags":
                    self.reply(200, {"models": [{"name": m, "model": m, "modified_at": "2026-11-01T00:00:00Z", "size": 6_000_000_000,
                                                 "digest": d.removeprefix("sha256:"), "details": {"family": "fake", "parameter_size": "7B"}}
                                                for m, d in server.models.items()]})
                elif self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": int(time.time()), "owned_by": "me" if server.kind == "llama-cpp-python" else "vllm", "root": f"/models/{m}",
                         "parent": None, "max_model_len": 32768} for m in server.models]})
                else:
                    self.reply(404, {"error": f"unknown path {self.path}"})

            def do_POST(self) -> None:  # noqa: N802
                self.t0 = None
                payload = self.body()
                if not self.authorised():
                    return
                model = payload.get("model") or payload.get("name")
                if self.path == "/api/pull":
                    server.models.setdefault(model, "sha256:" + "cd" * 32)
                    if payload.get("stream", True):
                        lines = b"".join(json.dumps(s).encode() + b"\n" for s in ({"status": "pulling manifest"}, {"status": "success"}))
                        self.send_response(200)
                        self.send_header("Content-Type", "application/x-ndjson")
                        self.send_header("Content-Length", str(len(lines)))
                        self.end_headers()
                        self.wfile.write(lines)
                    else:
                        self.reply(200, {"status": "success"})
                    return
                if self.path not in ("/api/show", "/api/generate", *CHAT_PATHS):
                    self.reply(404, {"error": f"unknown path {self.path}"})
                    return
                behaviour = server.next_behaviour() if self.path in ("/api/generate", *CHAT_PATHS) and not is_probe(payload) else "ok"
                if model not in server.models or behaviour == "unknown_model":
                    self.error(404, f"model '{model}' not found", "NotFoundError")
                    return
                if self.path == "/api/show":
                    capabilities = ["completion"] if model in server.blind else ["completion", "vision"]
                    self.reply(200, {"modelfile": "", "parameters": "", "template": "", "capabilities": capabilities,
                                     "details": {"family": "fake"}, "model_info": {}})
                    return
                if behaviour.startswith("down:"):
                    server.down_until = time.monotonic() + float(behaviour.split(":", 1)[1])
                if self.path in CHAT_PATHS and not is_probe(payload) and time.monotonic() < server.down_until:
                    behaviour = "http500"
                if behaviour.startswith("http429:"):
                    message = "rate limit reached, retry later"
                    body = {"error": {"message": message, "type": "RateLimitError", "param": None, "code": 429}} \
                        if self.path.startswith("/v1/") else {"error": message}
                    self.reply(429, body, {"Retry-After": behaviour.split(":", 1)[1]})
                    return
                if behaviour.startswith("slow:"):
                    time.sleep(float(behaviour.split(":", 1)[1]))
                if self.path == "/api/generate":
                    self.answer(payload, model, behaviour)
                    return
                counted = not is_probe(payload)  # max_in_flight counts review requests, not the self-test's probes
                with server.lock:
                    server.in_flight += counted
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                if server.slots:
                    server.slots.acquire()
                self.t0 = time.monotonic()  # the answer leaves `latency` seconds after it took a slot (see reply)
                try:
                    self.answer(payload, model, behaviour)
                finally:
                    if server.slots:
                        server.slots.release()
                    with server.lock:
                        server.in_flight -= counted

            def error(self, status: int, message: str, kind: str = "BadRequestError") -> None:
                if self.path.startswith("/v1/"):
                    self.reply(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})
                else:
                    self.reply(status, {"error": message})

            def answer(self, payload: dict[str, Any], model: str, behaviour: str) -> None:
                if behaviour == "http500":
                    self.error(500, "llama runner process has terminated", "InternalServerError")
                    return
                if behaviour == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if self.path == "/api/generate":
                    self.reply(200, {"model": model, "response": summary_text(payload.get("prompt", ""), False), "done": True})
                    return
                openai = self.path == "/v1/chat/completions"
                if openai and not server.response_format and (payload.get("response_format") or payload.get("guided_json")
                                                              or payload.get("structured_outputs")):
                    self.error(400, "structured output (response_format) is not supported by this server")
                    return
                if openai and server.kind == "llama-cpp-python" and (payload.get("response_format") or {}).get("type") == "json_schema":
                    self.error(500, "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be "
                                    "'text' or 'json_object' [type=literal_error, input_value='json_schema', input_type=str]",
                               "InternalServerError")
                    return
                try:
                    if openai:
                        prompt, encoded = openai_message(payload)
                    else:
                        prompt = payload["messages"][-1]["content"]
                        encoded = [b for m in payload["messages"] for b in (m.get("images") or [])]
                    images = [decode_image(b) for b in encoded]
                except ImageRejected as exc:
                    self.error(400, str(exc))
                    return
                if model in server.blind:  # a text-only model: the images never reach it
                    images = []
                schema = request_schema(payload, server.kind)
                wants = set((schema or {}).get("properties") or {})
                if "status" in wants or (schema is None and "whether you answer in JSON" in prompt):
                    content = json.dumps({"status": "ready"})
                elif is_probe(payload):
                    content = json.dumps(probe_answer(images))
                elif "narrative" in wants or (schema is None and "narrative" in prompt and not images):
                    content = json.dumps({"narrative": summary_text(prompt, behaviour == "wrong_numbers")})
                elif images:
                    content = json.dumps(review_answer(images, prompt))
                elif model in server.blind and (schema or "JSON" in prompt):
                    content = json.dumps(blind_answer())
                elif schema is not None:
                    self.error(400, "this vision request carried no image")
                    return
                else:
                    content = summary_text(prompt, behaviour == "wrong_numbers")
                done_reason = "stop"
                if behaviour == "invalid_json":
                    content = "Sure! Here is my review: " + content
                elif behaviour == "truncated":
                    content, done_reason = content[: len(content) // 2], "length"
                elif behaviour in ("no_action", "no_actions"):
                    answer = json.loads(content)
                    answer["suggested_actions"] = [{"action": "none", "detail": "all fine"}] if behaviour == "no_action" else []
                    content = json.dumps(answer)
                elif behaviour == "schema_violation":
                    answer = json.loads(content)
                    answer.update(verdict="excellent", confidence=7)
                    content = json.dumps(answer)
                if openai and payload.get("stream"):
                    self.stream(content, model, done_reason, payload)
                    return
                if openai:
                    self.reply(200, {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": int(time.time()),
                                     "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                                  "finish_reason": done_reason, "logprobs": None}],
                                     "usage": {"prompt_tokens": 100, "completion_tokens": len(content) // 4, "total_tokens": 100 + len(content) // 4}})
                    return
                self.reply(200, {"model": model, "created_at": "2026-11-23T00:00:00Z",
                                 "message": {"role": "assistant", "content": content}, "done": True,
                                 "done_reason": done_reason, "total_duration": 1_000_000, "prompt_eval_count": 100,
                                 "eval_count": len(content) // 4})

        return Handler


def main() -> None:
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: fake_llm.py serve   (listens on $OLLAMA_HOST, default 127.0.0.1:11434)")
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rsplit(":", 1)
    server = FakeLLMServer(port=int(host[1]))
    print(f"fake ollama {VERSION} on {server.host}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
