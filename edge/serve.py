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
                      verdicts, batch sizes, and the model in force (`riad_model_info`)
    POST /reload      re-reads the model file (also on SIGHUP) and swaps it in without dropping
                      requests: those in flight finish on the model they started with
    GET  /openapi.json  the API as OpenAPI 3 (`edge.serve_api`)

Every JSON answer given while a model is loaded names it in `"model"` (file, sha256, threshold
source, image threshold: `edge.serve_trace.ModelIdentity`); an answer to /predict names the
model that scored the image. With `access_log`, one JSON line per request goes to that file
(`edge.serve_trace.access_entry`). The API in full: docs/serve.md.

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
import datetime
import io
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from edge.errors import RiadError, one_line
from edge.images import load_image, map_to_grey, map_white
from edge.inspection import inspect
from edge.predictions import error_record, warn_if_uncalibrated, with_overrides
from edge.serve_api import OPENAPI
from edge.serve_trace import AccessLog, ModelIdentity, access_entry, model_identity

log = logging.getLogger(__name__)
_BATCHER = web.AppKey("batcher", asyncio.Task)
_RECORD = web.ResponseKey("record", dict)  # the JSON an answer carries, for the access log
SHUTDOWN_TIMEOUT_S = 30.0


class ReloadFailed(RiadError):
    """The new model could not be opened; the previous one keeps serving."""


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the service batches, queues and guards its requests.

    `queue_size` bounds the requests held at once (from reading the body to
    the answer) and `max_held_mb` the bytes of their bodies (as each request
    declares them in Content-Length; one request is always let in): beyond
    either, 503 before the body is read, so memory stays bounded. A body over
    `max_body_mb` gets 413; so does an image larger than `max_pixels` (read
    from its header, before decoding) or needing more than `max_tiles` tiles.
    `access_log`: a file for one JSON line per request ("-": stdout), or None.
    """

    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64
    token: str | None = None
    mode: str = "strict"
    image_threshold: float | None = None
    max_body_mb: int = 64
    max_pixels: int = 40_000_000
    max_tiles: int = 4096
    max_held_mb: int = 128
    access_log: str | None = None


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
        model_path: the model file `open_runner` opens, when known: the answers name it,
            and its sha256 is computed when its metadata has none (`model_identity`).

    Raises:
        OutputError: the access log cannot be opened, naming it.
    """

    def __init__(
        self,
        open_runner: Callable[[], object],
        settings: ServeSettings = ServeSettings(),
        model_path: str | os.PathLike | None = None,
    ):
        self.open_runner, self.settings, self.model_path = open_runner, settings, model_path
        self.access_log = AccessLog(settings.access_log) if settings.access_log else None
        self.runner = None
        self.identity: ModelIdentity | None = None  # of `runner`, computed when it was loaded
        self.accepting = False
        self.held = 0  # requests admitted and not answered yet
        self.held_bytes = 0  # the bodies they declared
        self.scoring = False  # a model call is running on the model thread
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
        self.model_info = Info(
            "riad_model", "The model in force: file, sha256, threshold source, image threshold", registry=self.registry
        )

    # ------------------------------------------------------------------
    # Lifecycle

    def app(self) -> web.Application:
        middlewares = [self._access, self._errors, self._auth]
        app = web.Application(client_max_size=self.settings.max_body_mb * 2**20, middlewares=middlewares)
        app.add_routes(
            [
                web.post("/predict", self.predict),
                web.get("/health", self.health),
                web.get("/ready", self.ready),
                web.get("/metrics", self.metrics),
                web.post("/reload", self.reload),
                web.get("/openapi.json", self.openapi),
            ]
        )
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        loop = asyncio.get_running_loop()
        self._swap_in(*await loop.run_in_executor(self._reloads, self._load))
        self.queue = asyncio.Queue(maxsize=self.settings.queue_size)
        app[_BATCHER] = asyncio.create_task(self._batch_forever())
        self.accepting = True
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_on_signal()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            pass

    async def _drain(self, app) -> None:
        """Shutdown: take no new requests, let the queued ones finish."""
        self.accepting = False
        while self.queue is not None and not self.queue.empty():
            await asyncio.sleep(0.01)

    async def _stop(self, app) -> None:
        app[_BATCHER].cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)  # `serve` bounds the wait for a running call
        self._reloads.shutdown(wait=False, cancel_futures=True)
        if self.access_log is not None:
            self.access_log.close()

    def _load(self) -> tuple[object, ModelIdentity]:
        """Opens the model (on the reload thread: hashing a large file must not stall requests).

        Returns:
            The runner and its `ModelIdentity`.
        """
        runner = self.open_runner()
        return runner, model_identity(runner.metadata, self._thresholds(runner), self.model_path)

    def _swap_in(self, runner, identity: ModelIdentity) -> None:
        """Makes `runner` the model in force; batches already started keep the runner they took."""
        self.runner, self.identity = runner, identity
        self.model_info.info(identity.labels())
        self._warn_if_uncalibrated(runner)

    async def _reload(self) -> str:
        """Swaps in a freshly opened model; a model that cannot be opened leaves the old one serving.

        Raises:
            ReloadFailed: one line saying why (the old model keeps serving).
        """
        loop = asyncio.get_running_loop()
        try:
            fresh = await loop.run_in_executor(self._reloads, self._load)
        except Exception as err:  # any reason the new file cannot be opened: the service keeps the old model
            log.error(f"serve: reload failed, the previous model keeps serving: {one_line(err)}")
            raise ReloadFailed(one_line(err)) from None
        self._swap_in(*fresh)
        log.info(f"serve: model reloaded: {fresh[1].file}, sha256 {fresh[1].sha256}")
        return "reloaded"

    async def _reload_on_signal(self) -> None:
        try:
            await self._reload()
        except ReloadFailed:
            pass  # logged

    def _thresholds(self, runner) -> dict | None:
        """The thresholds in force for `runner`: its calibrated ones, or the `image_threshold` setting."""
        return with_overrides(getattr(runner, "thresholds", None), self.settings.image_threshold)

    def _warn_if_uncalibrated(self, runner) -> None:
        warn_if_uncalibrated(
            self._thresholds(runner), getattr(getattr(runner, "metadata", None), "model_file", "the model")
        )

    # ------------------------------------------------------------------
    # Endpoints

    @web.middleware
    async def _access(self, request, handler):
        """Writes the request's line to the access log (when there is one) once its answer is ready."""
        if self.access_log is None:
            return await handler(request)
        arrived, started = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
        response = await handler(request)
        in_force = self.identity.sha256 if self.identity is not None else None
        seconds = time.perf_counter() - started
        self.access_log.write(access_entry(request, response.status, response.get(_RECORD), in_force, arrived, seconds))
        return response

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

    async def openapi(self, request):
        return web.json_response(OPENAPI)

    async def reload(self, request):
        started = time.perf_counter()
        try:
            return self._answer({"status": await self._reload()}, 200, started)
        except ReloadFailed as err:
            return self._answer({"error": f"reload failed, the previous model keeps serving: {err}"}, 500, started)

    async def predict(self, request):
        started = time.perf_counter()
        if not self.accepting:
            return self._answer({"error": "the service is shutting down"}, 503, started)
        declared = request.content_length or 0
        if declared > self.settings.max_body_mb * 2**20:
            return self._answer({"error": f"the body is larger than {self.settings.max_body_mb} MB"}, 413, started)
        budget = self.settings.max_held_mb * 2**20
        if self.held >= self.settings.queue_size or (self.held and self.held_bytes + declared > budget):
            # refused before the body is read: memory stays bounded however many clients send at once
            return self._answer({"error": f"overloaded: {self.held} requests already held"}, 503, started)
        self.held, self.held_bytes = self.held + 1, self.held_bytes + declared
        try:
            return await self._predict(request, started)
        finally:
            self.held, self.held_bytes = self.held - 1, self.held_bytes - declared

    async def _predict(self, request, started: float) -> web.Response:
        body, name = await _image_body(request)
        if not body:
            return self._answer(
                {"error": "no image in the request (raw body or multipart field 'image')"}, 400, started
            )
        too_large = self._too_large(body, name)
        if too_large:
            return self._answer(error_record(name, too_large), 413, started)
        item = _Request(name, body, request.query.get("map"), asyncio.get_running_loop().create_future(), started)
        self.queue.put_nowait(item)  # room is certain: every queued request is held
        record = await item.done
        return self._answer(record, 400 if "error" in record else 200, started)

    def _too_large(self, body: bytes, name: str) -> str | None:
        """Why an image is too large to score here, read from its header without decoding it; None when it is not."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(body)) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            return f"{name}: the image is too large to decode safely"
        except (UnidentifiedImageError, OSError, ValueError):
            return None  # not an image: the scoring path answers with its own error record
        if width * height > self.settings.max_pixels:
            return f"{name}: the image is {height} x {width} px (H x W), more than the {self.settings.max_pixels} pixels this service takes"
        tiles = self._tiles((height, width))
        if tiles > self.settings.max_tiles:
            return f"{name}: the image needs {tiles} tiles, more than the {self.settings.max_tiles} this service scores per request"
        return None

    def _tiles(self, shape: tuple[int, int]) -> int:
        """How many model calls' worth of tiles an image of `shape` takes (1 when it is not tiled)."""
        from edge.inspection import tiling_of, trained_at_scale
        from edge.tiling import scaled_size, tile_starts

        runner = self.runner
        preprocessing = getattr(getattr(runner, "metadata", None), "preprocessing", None)
        if (
            runner is None
            or not preprocessing
            or (self.settings.mode != "tile" and not trained_at_scale(preprocessing))
        ):
            return 1
        size = runner.image_size
        scale, stride = tiling_of(preprocessing, size)
        height, width = scaled_size(shape, scale)
        rows, cols = (len(tile_starts(max(n, t), t, s)) for n, t, s in zip((height, width), size, stride))
        return rows * cols

    @web.middleware
    async def _errors(self, request, handler):
        """Any failure of a handler is one log line, a JSON answer and a count in /metrics, never a traceback page."""
        started = time.perf_counter()
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return self._answer({"error": err.reason}, err.status, started)
        except (ValueError, EOFError) as err:  # a malformed body (multipart without boundary, a broken part)
            log.warning(f"serve: {request.method} {request.path}: bad request: {one_line(err)}")
            return self._answer({"error": f"bad request: {one_line(err)}"}, 400, started)
        except Exception as err:  # a bug: the client gets 500, the operator one line
            log.error(f"serve: {request.method} {request.path}: internal error: {type(err).__name__}: {one_line(err)}")
            return self._answer({"error": "internal error"}, 500, started)

    def _answer(self, record: dict, status: int, started: float) -> web.Response:
        """The JSON answer, counted in /metrics; it names the model in force unless it names the one that scored."""
        seconds = time.perf_counter() - started
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)
        if self.identity is not None and "model" not in record:
            record = {**record, "model": self.identity.as_dict()}
        if status == 200 and "path" in record:
            self.verdicts.labels(str(record.get("anomalous"))).inc()
            record = {**record, "timing_ms": round(seconds * 1e3, 3)}
        response = web.json_response(record, status=status, dumps=_strict_json)
        response[_RECORD] = record
        return response

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
            runner, identity = self.runner, self.identity
            try:
                records = await loop.run_in_executor(self._executor, self._score_flagged, runner, batch)
            except Exception as err:  # the model failed: every request of the batch learns it, the service lives on
                log.exception("serve: scoring failed")
                records = [error_record(item.name, f"scoring failed: {err}") for item in batch]
            for item, record in zip(batch, records):
                record["model"] = identity.as_dict()  # the model that scored it, whatever was reloaded since
                if not item.done.done():
                    item.done.set_result(record)
            batch = records = item = None  # an idle service holds no image of the last batch

    def _score_flagged(self, runner, batch: list[_Request]) -> list[dict]:
        self.scoring = True
        try:
            return self._score(runner, batch)
        finally:
            self.scoring = False

    def _score(self, runner, batch: list[_Request]) -> list[dict]:
        thresholds = self._thresholds(runner)
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


def serve(
    open_runner,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
    model_path: str | os.PathLike | None = None,
) -> None:
    """Runs the service until SIGTERM or Ctrl-C: in-flight requests get `shutdown_timeout` seconds to finish.

    Args:
        open_runner, settings, model_path: see `Service`.
        host, port: where to listen.
        shutdown_timeout: seconds in-flight requests get after SIGTERM.

    Raises:
        OutputError: the access log cannot be opened (before listening).
    """
    service = Service(open_runner, settings, model_path)
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
        shutdown_timeout=shutdown_timeout,
        handle_signals=True,
    )
    if service.scoring:
        # A model call outlived the shutdown timeout; waiting for it would make shutdown unbounded.
        log.warning(f"serve: a model call was still running {shutdown_timeout:g} s after SIGTERM; exiting without it")
        logging.shutdown()
        os._exit(0)
