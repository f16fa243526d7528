"""The whole service in one process, without Ray: the HTTP API and playground (uvicorn) and a worker thread that
runs queued jobs on models loaded here. For a laptop (``lift3d playground``) and for the browser tests; the Serve
graph (``graph.py``) is the way to run it for more than one user.

Examples:
    >>> with LocalServer(ServiceConfig(preset="tiny", auth=False, store_url="/tmp/lift3d-store")) as server:
    ...     httpx.get(server.url + "/healthz").json()
    {'status': 'ok'}
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any

import uvicorn

from lift3d.pipeline.image_generation import ImageModels
from lift3d.pipeline.providers import InProcessStages
from lift3d.presets import ModelPreset, get_preset
from lift3d.service.config import ServiceConfig
from lift3d.service.http_limits import HttpLimits, uvicorn_config
from lift3d.service.worker.consumer import consume_job
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.housekeeping import Housekeeper
from lift3d.service.server import build_api, build_fast_assets, build_images, build_service, local_cost_model
from lift3d.service.state import open_state
from lift3d.service.worker.runner import JobRunner

__all__ = ["LocalServer"]

logger = logging.getLogger(__name__)


class LocalServer:
    """API + playground + one worker thread, in this process (a context manager).

    Args:
        config: the service configuration (preset, store, database, auth, limits).
        host: interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one (see :attr:`url`).
        preset: the models (default: ``config.preset``).
        http_limits: read deadlines and the connection cap of the HTTP server
            (:class:`~lift3d.service.http_limits.HttpLimits`: slow headers and slow bodies are cut).
    """

    def __init__(self, config: ServiceConfig, host: str = "127.0.0.1", port: int = 0,
                 preset: ModelPreset | None = None, http_limits: HttpLimits = HttpLimits()) -> None:
        self.config, self.host = config, host
        self.port = port or _free_port(host)
        self.preset = preset or get_preset(config.preset)
        self.state = open_state(config)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.stages = InProcessStages(self.preset)
        # priced, expired and webhooks sent like the graph (issue 23): jobs settle at their measured cost
        self.runner = JobRunner(self.state.jobs, self.stages, self.preset, local_cost_model(config),
                                heartbeat_s=config.heartbeat_s, worker="local")
        self.housekeeper = Housekeeper(self.state, config, sweep_interval_s=config.sweep_interval_s)
        service = build_service(config, self.state, self.queue.put)
        images = build_images(config, self.state, lambda call: self._images()(call))
        self._fast: Any = None  # InProcessFastAssets, made on the first fast 3D request (it loads the model)
        self._fast_lock = threading.Lock()
        self.fast_assets = build_fast_assets(config, self.state,
                                             lambda image, params: self._fast_assets()(image, params))
        self.app = build_api(config, self.state, service, ServiceMetrics(), images=images,
                             fast_assets=self.fast_assets)
        self._server = uvicorn.Server(uvicorn_config(self.app, host, self.port, http_limits, log_level="warning"))
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _images(self) -> ImageModels:
        return self.stages.models.images()

    def _fast_assets(self) -> Any:
        """The in-process fast 3D path (:class:`lift3d.pipeline.fast.InProcessFastAssets`) on this server's models,
        made once, on first use."""
        with self._fast_lock:
            if self._fast is None:
                from lift3d.pipeline.fast import InProcessFastAssets  # noqa: PLC0415 - loads the model stack

                self._fast = InProcessFastAssets(self.preset, models=self.stages.models)  # the jobs' models
            return self._fast

    def _work(self) -> None:
        while (job_id := self.queue.get()) is not None:
            try:
                consume_job(job_id, self.state.jobs, self.runner.attempt, "local")
            except Exception:  # noqa: BLE001 - one job's failure must not stop the worker
                logger.exception("job %s: the local worker failed", job_id)

    def __enter__(self) -> LocalServer:
        self._threads = [threading.Thread(target=self._server.run, name="lift3d-http", daemon=True),
                         threading.Thread(target=self._work, name="lift3d-worker", daemon=True)]
        for thread in self._threads:
            thread.start()
        self.housekeeper.start()  # expiry and webhooks, as a consumer replica does them
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._threads[0].is_alive():
                raise RuntimeError(f"the local server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self.queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self.housekeeper.stop()
        self.fast_assets.close()
        self.state.close()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
