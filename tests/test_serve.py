"""`riad-edge serve`: records like `riad-edge infer`, micro-batching, overload, auth, metrics, reload, shutdown."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from PIL import Image
from test_edge import SIZE, _write_toy_unet

from edge.cli import main
from edge.records import check_record
from edge.runner import Runner
from edge.serve import ServeSettings, Service, _Request

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _write_toy_unet(tmp_path_factory.mktemp("serve"))


def _png(seed: int, size=(SIZE, SIZE)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class CountingRunner:
    """A `Runner` wrapper that counts model calls and their batch sizes, optionally slow."""

    def __init__(self, runner, delay_s: float = 0.0):
        self.runner, self.delay_s, self.calls = runner, delay_s, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, images):
        self.calls.append(len(images))
        time.sleep(self.delay_s)
        return self.runner(images)


def _run(coroutine):
    return asyncio.run(coroutine)


async def _client(service: Service) -> TestClient:
    client = TestClient(TestServer(service.app()))
    await client.start_server()
    return client


def test_records_equal_riad_edge_infer_and_concurrent_requests_share_a_call(model, tmp_path):
    images = [tmp_path / f"{i}.png" for i in range(6)]
    for i, path in enumerate(images):
        path.write_bytes(_png(i))
    infer = CliRunner().invoke(main, ["infer", str(model), *map(str, images)])
    expected = [json.loads(line) for line in infer.stdout.splitlines()]
    counting = CountingRunner(Runner.open(model), delay_s=0.2)

    async def scenario():
        client = await _client(Service(lambda: counting, ServeSettings(max_batch=8, max_wait_ms=50)))
        try:
            answers = await asyncio.gather(*[client.post(f"/predict?name={p}", data=p.read_bytes()) for p in images])
            return [(a.status, await a.json()) for a in answers]
        finally:
            await client.close()

    answers = _run(scenario())
    assert all(status == 200 for status, _ in answers)
    for (_, record), want in zip(answers, expected):
        assert record.pop("timing_ms") > 0
        check_record(record)  # docs/records.md
        assert record.keys() == want.keys() and record["anomalous"] == want["anomalous"]
        assert record["score"] == pytest.approx(want["score"], abs=1e-6)
    assert sum(counting.calls) == 6 and len(counting.calls) < 6  # micro-batched


def test_overload_answers_503_and_bad_images_400(model):
    slow = CountingRunner(Runner.open(model), delay_s=0.5)

    async def scenario():
        client = await _client(Service(lambda: slow, ServeSettings(max_batch=1, max_wait_ms=1, queue_size=1)))
        try:
            answers = await asyncio.gather(*[client.post("/predict", data=_png(i)) for i in range(5)])
            statuses = sorted(a.status for a in answers)
            bad = await client.post("/predict?name=broken.png", data=b"not an image")
            return statuses, bad.status, await bad.json()
        finally:
            await client.close()

    statuses, bad_status, bad = _run(scenario())
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    assert bad_status == 400 and bad["path"] == "broken.png" and "cannot read image" in bad["error"]


def test_token_health_ready_metrics_maps_and_reload(model):
    opened = []

    def open_runner():
        opened.append(Runner.open(model))
        return opened[-1]

    async def scenario():
        client = await _client(Service(open_runner, ServeSettings(token="s3cret")))
        auth = {"Authorization": "Bearer s3cret"}
        try:
            results = {
                "health": (await client.get("/health")).status,
                "ready": (await client.get("/ready")).status,
                "no_token": (await client.post("/predict", data=_png(0))).status,
                "metrics_no_token": (await client.get("/metrics")).status,
            }
            with_map = await client.post("/predict?map=png", data=_png(0), headers=auth)
            results["map"] = await with_map.json()
            values = await client.post("/predict?map=array", data=_png(0), headers=auth)
            results["values"] = await values.json()
            results["reload"] = (await client.post("/reload", headers=auth)).status
            results["after_reload"] = (await client.post("/predict", data=_png(0), headers=auth)).status
            results["metrics"] = await (await client.get("/metrics", headers=auth)).text()
            return results
        finally:
            await client.close()

    results = _run(scenario())
    assert (results["health"], results["ready"], results["no_token"], results["metrics_no_token"]) == (
        200,
        200,
        401,
        401,
    )
    png = Image.open(io.BytesIO(base64.b64decode(results["map"]["map_png"])))
    assert png.size == (SIZE, SIZE) and png.mode == "L"
    assert np.asarray(results["values"]["map_values"]).shape == (SIZE, SIZE)
    assert results["reload"] == 200 and results["after_reload"] == 200 and len(opened) == 2
    metrics = results["metrics"]
    assert 'riad_requests_total{status="200"} 3.0' in metrics and 'riad_requests_total{status="401"} 2.0' in metrics
    assert (
        "riad_request_seconds_bucket" in metrics and "riad_queue_depth" in metrics and "riad_verdicts_total" in metrics
    )


def test_the_command_binds_loopback_and_finishes_in_flight_requests_on_sigterm(model):
    env = dict(os.environ, RIAD_SERVE_TOKEN="")
    command = [sys.executable, "-m", "edge.cli", "serve", str(model), "--port", "0"]
    server = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 60
        while "http://" not in line and time.time() < deadline:
            line = server.stderr.readline()
        assert "http://127.0.0.1:" in line, line  # loopback unless --host says otherwise
        url = line[line.index("http://") :].split()[0].rstrip("/")
        answers = []
        requests = [threading.Thread(target=lambda: answers.append(_post(url, _png(1)))) for _ in range(3)]
        for thread in requests:
            thread.start()
        time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        for thread in requests:
            thread.join(timeout=30)
        assert server.wait(timeout=30) == 0
        assert [status for status, _ in answers] == [200, 200, 200]
    finally:
        server.kill()


def _post(url: str, body: bytes):
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


def test_a_missing_execution_provider_is_named(model, tmp_path):
    import onnxruntime as ort

    image = tmp_path / "x.png"
    image.write_bytes(_png(3))
    on_cpu = CliRunner().invoke(main, ["infer", str(model), str(image), "--provider", "cpu"])
    assert on_cpu.exit_code == 0 and json.loads(on_cpu.stdout)["score"] >= 0
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA; the refusal cannot be shown here")
    missing = CliRunner().invoke(main, ["infer", str(model), str(image), "--provider", "cuda"])
    assert (
        missing.exit_code == 6
        and "CPUExecutionProvider" in missing.output
        and "CUDAExecutionProvider" in missing.output
    )


def test_bursts_past_the_queue_get_503_and_leave_memory_flat(model):
    import aiohttp

    slow = CountingRunner(Runner.open(model), delay_s=0.02)
    body = _png(7)

    async def burst(session, url: str, count: int) -> list[int]:
        answers = await asyncio.gather(*[session.post(url, data=body) for _ in range(count)])
        for answer in answers:
            await answer.read()
        return [answer.status for answer in answers]

    async def scenario():
        server = TestServer(Service(lambda: slow, ServeSettings(max_batch=2, max_wait_ms=1, queue_size=4)).app())
        await server.start_server()
        url = str(server.make_url("/predict"))
        try:
            async with aiohttp.ClientSession() as session:  # TestClient would keep every response
                await burst(session, url, 60)  # warm: the first burst allocates what every later one reuses
                gc.collect()
                tracemalloc.start()
                statuses, traced, alive = [], [], []
                for _ in range(5):
                    statuses += await burst(session, url, 60)
                    gc.collect()
                    traced.append(tracemalloc.get_traced_memory()[0])
                    alive.append(sum(isinstance(o, _Request) for o in gc.get_objects()))
                tracemalloc.stop()
                return statuses, traced[1:], alive
        finally:
            await server.close()

    statuses, traced, alive = _run(scenario())
    assert set(statuses) == {200, 503} and statuses.count(503) > statuses.count(200)  # the queue held 4
    assert alive == [0] * 5  # no request outlives its answer
    # Keep-alive connections hold their last request; beyond that, 240 more requests (750 kB of
    # images) leave the traced memory where it was.
    assert max(traced) - min(traced) < 128 * 1024, traced
