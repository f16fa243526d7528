"""Settings of the Serve application and its replicas: typed, validated, with a description per field (they are
``args`` in ``serve_config.yaml``). Ray-free: ``graph.py`` and ``deployments/`` turn them into deployments."""

from __future__ import annotations

import os
from typing import Annotated, Any, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator, model_validator

__all__ = ["REDIS_PASSWORD_ENV", "ConsumerSettings", "QueueConfig", "ServiceConfig", "StateSettings",
           "TrainerSettings", "redis_url_with_password"]

REDIS_PASSWORD_ENV = "LIFT3D_REDIS_PASSWORD"
Port = Annotated[int, Field(ge=1, le=65535)]


def redis_url_with_password(url: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``url`` with the password of ``LIFT3D_REDIS_PASSWORD`` (the k8s Secret lift3d-redis) when it is a
    ``redis://``/``rediss://`` URL without one; any other URL, or no such variable, unchanged. So the config files
    (serve_config.yaml, rayservice.yaml) name the host and never the password.

    Examples:
        >>> redis_url_with_password("redis://lift3d-redis:6379/0", {"LIFT3D_REDIS_PASSWORD": "s3cr/t"})
        'redis://:s3cr%2Ft@lift3d-redis:6379/0'
    """
    env = os.environ if environ is None else environ
    password = env.get(REDIS_PASSWORD_ENV)
    if not url or not password:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.password is not None or "@" in parts.netloc:
        return url
    netloc = f":{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


class QueueConfig(BaseModel):
    """Where jobs are queued and how they are retried."""

    broker_url: str | None = Field(None, description="Celery broker, e.g. redis://redis:6379/0; None: the "
                                   "embedded filesystem broker in queue_dir. A redis URL without a password gets "
                                   "LIFT3D_REDIS_PASSWORD's, when set (redis_url_with_password).")
    backend_url: str | None = Field(None, description="Celery result backend; default: broker_url for Redis, "
                                    "file://{queue_dir}/results for the embedded broker.")
    queue_dir: str = Field("/tmp/lift3d/queue", description="Embedded broker's folder (one machine only).")
    queue_name: str = Field("lift3d-generations", description="Queue (and Celery app) name.")
    polling_interval_s: float = Field(0.25, description="Embedded broker: seconds between folder polls.")
    visibility_timeout_s: int = Field(120, description="Redis: seconds after its delivery before an unacknowledged "
                                      "job is delivered again; keep it > 60 s (the adapter's retry backoff cap). "
                                      "Duplicates are dropped by the job's lease (deployments/queue.py).")
    max_attempts: int = Field(3, ge=1, description="Attempts per job, retries included.")

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @field_validator("broker_url", "backend_url")
    @classmethod
    def _redis_password(cls, url: str | None) -> str | None:
        return redis_url_with_password(url)


class StateSettings(BaseModel):
    """Where a replica finds the shared state and how it treats jobs (see :func:`lift3d.service.state.open_state`);
    every replica that reads or writes jobs gets the same values."""

    store_url: str = Field("file:///tmp/lift3d/store", description="Artifact store: a directory, file:///dir, or "
                           "s3://bucket/prefix?endpoint_url=... (credentials from boto3's standard chain).")
    database_url: str | None = Field(None, description="Service database (jobs, API keys, credits), e.g. "
                                     "postgresql+psycopg://user:pass@host/lift3d; None: database_url_from_env() "
                                     "(LIFT3D_DATABASE_URL, else sqlite:////tmp/lift3d/lift3d.db).")
    auth: bool = Field(True, description="Require an API key on /v1/ routes. False only for an explicitly local "
                       "setup (one trusted user on localhost): every caller then owns every job and nothing is "
                       "charged.")
    usd_per_credit: float = Field(0.01, gt=0, description="US dollars of estimated GPU cost per credit.")
    allow_private_webhooks: bool = Field(False, description="Accept webhook URLs on loopback, private and link-local "
                                         "addresses (SSRF guard off): only for a local setup whose receiver runs "
                                         "on this machine or its network.")
    webhook_progress_interval_s: float = Field(5.0, ge=0, description="Least seconds between two "
                                               "generation.progress webhooks of one job.")
    webhook_max_attempts: int = Field(8, ge=1, description="Delivery attempts per webhook message (retries with "
                                      "exponential backoff from 5 s, doubling, at most 1 h apart), then failed.")
    webhook_timeout_s: float = Field(10.0, gt=0, lt=120, description="Overall deadline of one webhook delivery "
                                     "attempt, seconds: connecting, sending and the receiver's status line and "
                                     "headers together (not per read), so a receiver that drips its answer is cut "
                                     "off; the attempt is then retried with backoff.")
    webhook_concurrency: int = Field(16, ge=1, description="Webhook attempts in flight at once per consumer replica, "
                                     "all API keys together.")
    webhook_per_owner_concurrency: int = Field(2, ge=1, description="Webhook attempts in flight at once for one API "
                                               "key: a slow receiver holds at most this many of the "
                                               "webhook_concurrency slots, so it cannot delay other keys' webhooks.")
    webhook_allowed_ports: list[Port] = Field([80, 443], min_length=1, description="Ports a webhook URL may name "
                                              "(explicitly or by its scheme); others are refused at submit (422 "
                                              "invalid_parameters) and at delivery. Not applied when "
                                              "allow_private_webhooks is on (a local setup).")
    webhook_secret: str | None = Field(None, description="Standard Webhooks secret (whsec_<base64>) that signs the "
                                       "webhooks of jobs without an API key (auth: false); API keys carry their own. "
                                       "None: such jobs cannot ask for webhooks.")
    result_ttl_s: float = Field(24 * 3600.0, gt=0, description="Seconds results and uploads are kept after a job "
                                "ends (Stability keeps 24 h); then deleted, and the job answers 410 generation_expired.")
    lease_s: float = Field(30.0, gt=0, description="Seconds an attempt's lease lasts after each renewal. Holders "
                           "(the consumer waiting for a trainer slot, then the trainer's heartbeats every heartbeat_s) "
                           "renew it; a job whose lease ran out is requeued by the next sweep, so a dead replica's "
                           "job starts again within lease_s + sweep_interval_s. Keep it ≥ 3 × heartbeat_s.")
    url_expires_s: int = Field(3600, gt=0, description="Lifetime of presigned artifact URLs (an S3 store's), in the "
                               "status result, the artifact listing and the generation.completed webhook.")

    def state_settings(self) -> "StateSettings":
        """Just these fields (what :func:`lift3d.service.state.open_state` needs)."""
        return StateSettings(**self.model_dump(include=set(StateSettings.model_fields)))


class ConsumerSettings(StateSettings):
    """What a consumer replica needs besides the trainer handle."""

    queue: QueueConfig
    stale_after_s: float = Field(300.0, description="Records from before leases (no lease_expires_at): a running job "
                                 "without heartbeat for this long is requeued.")
    queued_timeout_s: float = Field(24 * 3600.0, description="A job queued this long without starting fails.")
    sweep_interval_s: float = Field(5.0, description="Seconds between sweeps for jobs whose lease ran out.")
    store_retry_s: float = Field(120.0, ge=0, description="Seconds a store call waits for an unreachable artifact "
                                 "store to come back (0: fail at once).")


class TrainerSettings(StateSettings):
    """What a ``NerfTrainer`` replica needs besides the handles."""

    preset: str = Field("default", description="Model preset (NeRF size, input size).")
    device: str = Field("auto", description="Torch device of the NeRF: auto, cpu or cuda.")
    gpu_type: str = Field("A10G", description="GPU type of the pool (default price per GPU-hour).")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour; None: gpu_type's price.")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between job-record writes while a job runs.")
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads; None: as Ray sets them.")
    store_retry_s: float = Field(120.0, ge=0, description="Seconds a job's store call waits for an unreachable "
                                 "artifact store to come back (the job pauses, its lease renewed); 0: fail at once "
                                 "(the attempt is retried).")


class ServiceConfig(StateSettings):
    """Arguments of :func:`build_app` (``args`` in ``serve_config.yaml``)."""

    preset: str = Field("default", description="Model preset: `default` (real weights) or `tiny` (random, CPU).")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Job queue (broker, retries).")
    device: str = Field("auto", description="Torch device of the model replicas: auto, cpu or cuda.")
    gpu_type: str = Field("A10G", description="GPU type of the pool; sets the default price per GPU-hour.")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour; default: the AWS "
                                             "on-demand price of gpu_type (lift3d.costs).")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between job-record writes while a job runs.")
    stale_after_s: float = Field(300.0, gt=0, description="Records from before leases: requeue running jobs "
                                 "without heartbeat this long.")
    sweep_interval_s: float = Field(5.0, gt=0, description="Seconds between sweeps for jobs whose lease ran out.")
    store_retry_s: float = Field(120.0, ge=0, description="Workers (trainer, consumer): seconds a store call waits "
                                 "for an unreachable artifact store to come back; the ingress never waits (503).")
    sds_max_batch_size: int = Field(8, ge=1, description="Most SDS requests gathered into one Zero123 SDS batch.")
    sds_max_batch_views: int = Field(32, ge=1, description="Most views (renders) per Zero123 UNet forward: a "
                                     "gathered SDS batch is split into forwards of at most this many views, so the "
                                     "MultiView replica's memory is bounded by views, not requests "
                                     "(benchmarks/memory_model.py).")
    sds_batch_wait_timeout_s: float = Field(0.01, ge=0, description="Wait for more SDS requests per batch.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted image upload.")
    default_rate_limit_per_min: int = Field(60, ge=1, description="Requests per minute of a key without its own "
                                            "rate limit.")
    rate_limit_storage_url: str = Field("memory://", description="Where rate-limit counts live (the `limits` "
                                        "library): redis://host:6379/0 shares them between ingress replicas; "
                                        "memory:// counts per process (one ingress only: N replicas admit N times "
                                        "the limit).")
    default_max_concurrent_jobs: int = Field(4, ge=0, description="Queued + running jobs of a key without its own "
                                             "limit; more → 429 rate_limited. 0: no limit.")
    max_queue_depth: int = Field(100, ge=0, description="Queued jobs of all keys; a new job beyond → 503 "
                                 "overloaded. 0: no limit.")
    # the HTTP doors (issue 23, helper B): lift3d.service.api.guards
    forwarded_hops: int = Field(0, ge=0, description="Reverse proxies in front of the API that each append the "
                                "client's address to X-Forwarded-For (1 behind the nginx Ingress); 0: the TCP peer is "
                                "the client. Only the addresses these proxies added are trusted.")
    unauthenticated_failures_per_min: int = Field(20, ge=1, description="Failed authentications (missing or bad "
                                                  "key) per client address per minute; past them 429 before any "
                                                  "key lookup.")
    max_uploads_per_key: int = Field(2, ge=1, description="views-to-3d uploads of one key in flight; more → 429.")
    max_uploads: int = Field(8, ge=1, description="views-to-3d uploads of the process in flight; more → 503.")
    idempotency_ttl_s: int = Field(86400, gt=0, description="Seconds an Idempotency-Key replays its first "
                                   "response (IETF httpapi-idempotency-key draft).")
    events_poll_interval_s: float = Field(0.5, gt=0, description="Seconds between job-record reads of each open "
                                          "event stream (GET /v1/generation/{id}/events) and of Prefer: wait.")
    events_keepalive_s: float = Field(15.0, gt=0, description="Seconds between keep-alive comments on an idle event "
                                      "stream (so proxies keep it open); clients ignore them (SSE comment lines).")
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads of the TextToImage, MultiView and NerfTrainer replicas; "
                                      "None: as Ray sets it (the replica's num_cpus). CPU results depend on it: run "
                                      "`lift3d generate --threads N` with the same N to reproduce a job bit for bit.")
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per deployment name, `.options()` overrides (tests; for `serve "
        "deploy` prefer the config file's `deployments:` section).")

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _redis_password(cls, url: str) -> str:
        return redis_url_with_password(url)

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "ServiceConfig":
        if self.lease_s < 3 * self.heartbeat_s:
            raise ValueError(f"lease_s ({self.lease_s}) must be at least 3 × heartbeat_s ({self.heartbeat_s}): a job "
                             "whose trainer misses one heartbeat would be requeued while it runs")
        return self

    def trainer_settings(self) -> TrainerSettings:
        """What every ``NerfTrainer`` replica needs besides its handles."""
        return TrainerSettings(**self.state_settings().model_dump(), preset=self.preset, device=self.device,
                               gpu_type=self.gpu_type, price_per_gpu_hour=self.price_per_gpu_hour,
                               heartbeat_s=self.heartbeat_s, torch_threads=self.torch_threads,
                               store_retry_s=self.store_retry_s)

    def consumer_settings(self) -> ConsumerSettings:
        """What every ``JobConsumer`` replica needs besides the trainer handle."""
        return ConsumerSettings(**self.state_settings().model_dump(), queue=self.queue,
                                stale_after_s=self.stale_after_s, sweep_interval_s=self.sweep_interval_s,
                                store_retry_s=self.store_retry_s)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServiceConfig":
        """From ``LIFT3D_PRESET``, ``LIFT3D_STORE_URL``, ``LIFT3D_BROKER_URL``, ``LIFT3D_QUEUE_DIR``,
        ``LIFT3D_GPU_TYPE``, ``LIFT3D_PRICE_PER_GPU_HOUR`` and ``LIFT3D_DEVICE`` (unset: the defaults)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, var in (("preset", "LIFT3D_PRESET"), ("store_url", "LIFT3D_STORE_URL"),
                           ("gpu_type", "LIFT3D_GPU_TYPE"), ("device", "LIFT3D_DEVICE"),
                           ("price_per_gpu_hour", "LIFT3D_PRICE_PER_GPU_HOUR")):
            if env.get(var):
                values[field] = env[var]
        queue = {k: env[v] for k, v in (("broker_url", "LIFT3D_BROKER_URL"), ("queue_dir", "LIFT3D_QUEUE_DIR"))
                 if env.get(v)}
        return cls(**values, queue=QueueConfig(**queue))
