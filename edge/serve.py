"""`riad-edge serve`: a resident inference service that keeps the model warm (aiohttp, no TensorFlow).

Endpoints:

    POST /predict     an image as the raw body or a multipart field `image`; answers the
                      record `riad-edge infer` prints for it (`edge.inspection`, docs/records.md)
                      plus `timing_ms`; `?map=png` adds the map as base64 PNG (`map_png`),
                      `?map=array` as nested lists (`map_values`). 400 for an image that
                      cannot be scored (its error record), 503 when the queue is full.
    GET  /health      200 while the process runs
    GET  /ready       200 when a model is loaded and requests are taken, else 503
    GET  /metrics     Prometheus text: requests by status, latency histogram, queue depth,
                      verdicts, batch sizes
    POST /reload      re-reads the model file (also on SIGHUP) and swaps it in without dropping
                      requests: those in flight finish on the model they started with

Concurrent requests are scored together: the batcher takes what is queued, up to `max_batch`
images, waiting at most `max_wait_ms` after the first. The queue is bounded (`queue_size`);
beyond it a request gets 503 instead of memory growing. The service binds to 127.0.0.1
unless told otherwise, and with a token every request but /health and /ready needs
`Authorization: Bearer TOKEN`. SIGTERM or Ctrl-C stops taking requests (/ready says 503),
finishes those in flight, then exits.

Example:

    riad-edge serve export/riad.onnx --port 8080
    curl --data-binary @part.png http://127.0.0.1:8080/predict
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge.images import load_image, map_to_grey, map_white
from edge.inspection import inspect
from edge.predictions import error_record, warn_if_uncalibrated, with_overrides

log = logging.getLogger(__name__)
_BATCHER = web.AppKey("batcher", asyncio.Task)


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the service batches, queues and guards its requests."""

    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64
    token: str | None = None
    mode: str = "strict"
    image_threshold: float | None = None
    max_body_mb: int = 64


@dataclasses.dataclass
class _Request:
    name: str
    body: bytes
    want_map: str | None
    done: asyncio.Future
    started: float


class Service:
    """The model, its queue and batcher, and the metrics; `app()` is the aiohttp application.

    Args:
        open_runner: returns a fresh `edge.runner.Runner` (called at start and on reload).
        settings: `ServeSettings`.
    """

    def __init__(self, open_runner: Callable[[], object], settings: ServeSettings = ServeSettings()):
        self.open_runner, self.settings = open_runner, settings
        self.runner = None
        self.accepting = False
        self.queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riad-model")  # one model call at a time
        self._reloads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riad-reload")
        self.registry = CollectorRegistry()
        self.requests = Counter("riad_requests_total", "Requests by status", ["status"], registry=self.registry)
        self.latency = Histogram("riad_request_seconds", "Request latency", registry=self.registry)
        self.depth = Gauge("riad_queue_depth", "Images waiting", registry=self.registry)
        self.verdicts = Counter("riad_verdicts_total", "Verdicts", ["anomalous"], registry=self.registry)
        self.batches = Histogram(
            "riad_batch_images", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )

    # ------------------------------------------------------------------
    # Lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_mb * 2**20, middlewares=[self._auth])
        app.add_routes(
            [
                web.post("/predict", self.predict),
                web.get("/health", self.health),
                web.get("/ready", self.ready),
                web.get("/metrics", self.metrics),
                web.post("/reload", self.reload),
            ]
        )
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        loop = asyncio.get_running_loop()
        self.runner = await loop.run_in_executor(self._reloads, self.open_runner)
        self._warn_if_uncalibrated(self.runner)
        self.queue = asyncio.Queue(maxsize=self.settings.queue_size)
        app[_BATCHER] = asyncio.create_task(self._batch_forever())
        self.accepting = True
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            pass

    async def _drain(self, app) -> None:
        """Shutdown: take no new requests, let the queued ones finish."""
        self.accepting = False
        while self.queue is not None and not self.queue.empty():
            await asyncio.sleep(0.01)

    async def _stop(self, app) -> None:
        app[_BATCHER].cancel()
        self._executor.shutdown(wait=True)
        self._reloads.shutdown(wait=False)

    async def _reload(self) -> str:
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(self._reloads, self.open_runner)
        self.runner = fresh  # batches already started keep the runner they took
        log.info("serve: model reloaded")
        self._warn_if_uncalibrated(fresh)
        return "reloaded"

    def _warn_if_uncalibrated(self, runner) -> None:
        thresholds = with_overrides(getattr(runner, "thresholds", None), self.settings.image_threshold)
        warn_if_uncalibrated(thresholds, getattr(getattr(runner, "metadata", None), "model_file", "the model"))

    # ------------------------------------------------------------------
    # Endpoints

    @web.middleware
    async def _auth(self, request, handler):
        if self.settings.token and request.path not in ("/health", "/ready"):
            if request.headers.get("Authorization") != f"Bearer {self.settings.token}":
                self.requests.labels("401").inc()
                return web.json_response({"error": "a valid bearer token is needed"}, status=401)
        return await handler(request)

    async def health(self, request):
        return web.json_response({"status": "alive"})

    async def ready(self, request):
        ok = self.accepting and self.runner is not None
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics(self, request):
        self.depth.set(self.queue.qsize() if self.queue else 0)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def reload(self, request):
        return web.json_response({"status": await self._reload()})

    async def predict(self, request):
        started = time.perf_counter()
        if not self.accepting:
            return self._answer({"error": "the service is shutting down"}, 503, started)
        body, name = await _image_body(request)
        if not body:
            return self._answer(
                {"error": "no image in the request (raw body or multipart field 'image')"}, 400, started
            )
        item = _Request(name, body, request.query.get("map"), asyncio.get_running_loop().create_future(), started)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return self._answer(
                {"error": f"overloaded: {self.settings.queue_size} images already queued"}, 503, started
            )
        record = await item.done
        return self._answer(record, 400 if "error" in record else 200, started)

    def _answer(self, record: dict, status: int, started: float) -> web.Response:
        seconds = time.perf_counter() - started
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)
        if status == 200:
            self.verdicts.labels(str(record.get("anomalous"))).inc()
            record = {**record, "timing_ms": round(seconds * 1e3, 3)}
        return web.json_response(record, status=status, dumps=_strict_json)

    # ------------------------------------------------------------------
    # Batching

    async def _batch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1e3
            while len(batch) < self.settings.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            self.batches.observe(len(batch))
            runner = self.runner
            try:
                records = await loop.run_in_executor(self._executor, self._score, runner, batch)
            except Exception as err:  # the model failed: every request of the batch learns it, the service lives on
                log.exception("serve: scoring failed")
                records = [error_record(item.name, f"scoring failed: {err}") for item in batch]
            for item, record in zip(batch, records):
                if not item.done.done():
                    item.done.set_result(record)
            batch = records = item = None  # an idle service holds no image of the last batch

    def _score(self, runner, batch: list[_Request]) -> list[dict]:
        thresholds = with_overrides(runner.thresholds, self.settings.image_threshold)
        preprocessing = getattr(runner.metadata, "preprocessing", None)
        wanted = {id(item): item.want_map for item in batch}
        maps: list[tuple[dict, np.ndarray]] = []
        items = [(item.name, lambda item=item: load_image(io.BytesIO(item.body), item.name)) for item in batch]
        records = list(
            inspect(
                items,
                runner,
                runner.image_size,
                runner.channels,
                thresholds,
                preprocessing=preprocessing,
                mode=self.settings.mode,
                batch_size=len(batch),
                on_map=lambda record, anomaly_map: maps.append((record, anomaly_map)),
            )
        )
        by_record = {id(record): anomaly_map for record, anomaly_map in maps}
        for item, record in zip(batch, records):
            if wanted[id(item)] and id(record) in by_record:
                _attach_map(record, by_record[id(record)], wanted[id(item)], thresholds)
        return records


def _attach_map(record: dict, anomaly_map: np.ndarray, kind: str, thresholds: dict | None) -> None:
    """Adds the map to a record: `map_values` (nested lists) or `map_png` (base64, scaled as `--maps-dir` PNGs)."""
    if kind == "array":
        record["map_values"] = np.round(np.asarray(anomaly_map, np.float64), 6).tolist()
    elif kind == "png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(map_to_grey(anomaly_map, map_white(thresholds))).save(buffer, "PNG")
        record["map_png"] = base64.b64encode(buffer.getvalue()).decode()


async def _image_body(request) -> tuple[bytes, str]:
    """The image bytes of a raw or multipart request, and a name for its record."""
    name = request.query.get("name", "request")
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if part.name == "image":
                return await part.read(), part.filename or name
        return b"", name
    return await request.read(), name


def _strict_json(value) -> str:
    return json.dumps(value, allow_nan=False)


def serve(open_runner, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Runs the service until SIGTERM or Ctrl-C (aiohttp's graceful shutdown: in-flight requests finish)."""
    service = Service(open_runner, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            f"serve: listening on {host}, reachable from other machines"
            + ("" if settings.token else " without a token (--token)")
        )
    web.run_app(
        service.app(),
        host=host,
        port=port,
        print=lambda message: log.info(f"serve: {message}"),
        shutdown_timeout=30.0,
        handle_signals=True,
    )
