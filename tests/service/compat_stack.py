"""A real HTTPS server around the service app for the compatible clients' tests (the unmodified ``replicate``
client needs a URL it can reach, and turns only ``https:`` outputs into ``FileOutput``), with the worker played by
hand: a thread that runs queued jobs by writing a small GLB (or PNG views) and finishing them, or leaves them
queued while ``hold`` is set. No Ray, no models: each test takes seconds."""

from __future__ import annotations

import datetime
import io
import ipaddress
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.store import JobOutcome
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.schemas import Progress
from lift3d.service.server import build_api, build_images, build_service
from lift3d.service.state import open_state


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA, one day) and its key, as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lift3d test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def png(size: int = 32, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def glb() -> bytes:
    return trimesh.creation.box(extents=(1.0, 0.5, 0.25)).export(file_type="glb")


@dataclass
class PlayedStack:
    """The app over SQLite and a local store, served over HTTPS, with a played worker."""

    tmp: Path
    config: ServiceConfig = None  # type: ignore[assignment]
    hold: threading.Event = field(default_factory=threading.Event)
    ran: list[str] = field(default_factory=list)
    queued: "queue.Queue[str]" = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.config = self.config or ServiceConfig(
            preset="tiny", store_url=str(self.tmp / "store"), database_url=f"sqlite:///{self.tmp / 'db'}",
            default_rate_limit_per_min=10_000, default_max_concurrent_jobs=0, max_queue_depth=0,
            allow_private_webhooks=True, events_poll_interval_s=0.05, result_ttl_s=3600)
        self.state = open_state(self.config)
        self.service = build_service(self.config, self.state, self.queued.put)
        images = build_images(self.config, self.state, _fake_images)
        self.app = build_api(self.config, self.state, self.service, ServiceMetrics(), images=images)
        self.cert, self.key_file = self_signed(self.tmp)
        self.ssl_context = ssl.create_default_context(cafile=str(self.cert))

    # ------------------------------------------------------------------------------------------- the worker
    def run_job(self, job_id: str) -> None:
        """What the trainer does: start, report progress, write the artifacts, succeed."""
        record = self.state.jobs.get(job_id)
        if record.status != "queued":
            return
        attempt = self.state.jobs.begin_attempt(job_id, "played").attempts
        self.state.jobs.heartbeat(job_id, attempt, stage="sds_training", progress=Progress(step=3, total=4))
        time.sleep(0.05)  # a measurable predict_time
        views = [f"views/{i:03d}_az{i * 90:03d}_el0.png" for i in range(record.params.num_views)]
        for i, name in enumerate(views):
            self.state.store.put(record.prefix + name, png(16, (40 * i, 80, 120)), "image/png")
        if record.params.return_3d and record.kind != "multiview":
            self.state.store.put(record.prefix + "model.glb", glb(), "model/gltf-binary")
            outcome = JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                 artifacts=[*views, "model.glb"], timings_s={"sds_training": 0.05},
                                 cost_usd=0.05)
        else:
            self.state.store.put(record.prefix + "views.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")
            outcome = JobOutcome(main_key="views.zip", content_type="application/zip",
                                 artifacts=[*views, "views.zip"])
        self.state.jobs.succeed(job_id, outcome, attempt=attempt)
        self.ran.append(job_id)

    def _work(self) -> None:
        waiting: list[str] = []
        while not self._stop.is_set():
            try:
                waiting.append(self.queued.get(timeout=0.02))
            except queue.Empty:
                pass
            if not self.hold.is_set():
                while waiting:
                    self.run_job(waiting.pop(0))

    # ------------------------------------------------------------------------------------------- the server
    def __enter__(self) -> "PlayedStack":
        import uvicorn

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
            ssl_certfile=str(self.cert), ssl_keyfile=str(self.key_file)))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._stop.set()
        self._thread.join(10)
        self._worker.join(10)
        self._sock.close()
        self.state.close()


def _fake_images(call) -> list:
    """The SDXL stage played: one flat PNG per sample, at the requested size, seeds counting up."""
    from lift3d.io.encoded import EncodedImage
    from lift3d.io.image_calls import EncodedSample

    params = call.params
    side = params.width or 64
    samples = []
    for i in range(params.samples):
        pixels = np.full((params.height or side, side, 3), 30 * i, dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        samples.append(EncodedSample(image=EncodedImage(out.getvalue()), seed=call.seed + i))
    return samples
