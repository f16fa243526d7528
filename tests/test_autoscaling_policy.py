"""deployments/autoscaling.py: replicas from ongoing requests plus the job queue, and its use in serve_config.yaml.

The arithmetic is checked against hand-computed replica counts with the queue length injected (no Redis); the
Redis probe against a real redis-server fed by the service's own producer (``JobQueue``); the cluster config with
Ray's own schema and policy loader.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import yaml
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from ray.serve.schema import ServeDeploySchema
from support import Clock, free_port

from deployments.autoscaling import (
    DEFAULT_QUEUE_NAME,
    JobQueueAutoscalingPolicy,
    QueueLengthPoller,
    RedisQueueLength,
    desired_replicas,
)
from deployments.queue import JobQueue
from lift3d.service.config import QueueConfig

ROOT = Path(__file__).resolve().parents[1]
POLICY_PATH = "deployments.autoscaling:JobQueueAutoscalingPolicy"
QUEUE_SCALED = ("JobConsumer", "MultiView", "NerfTrainer")


def context(*, current: int, ongoing: float, min_replicas: int = 1, max_replicas: int = 8, target: int | None = None,
            policy_state: dict | None = None, **config) -> AutoscalingContext:
    """What the Serve controller hands a policy on one tick (``target``: its current target, default ``current``)."""
    autoscaling = AutoscalingConfig(min_replicas=min_replicas, max_replicas=max_replicas, **config)
    return AutoscalingContext(
        deployment_id=DeploymentID(name="NerfTrainer", app_name="lift3d"), deployment_name="NerfTrainer",
        app_name="lift3d", current_num_replicas=current,
        target_num_replicas=current if target is None else target, running_replicas=[],
        total_num_requests=ongoing, total_queued_requests=0.0, aggregated_metrics={}, raw_metrics={},
        capacity_adjusted_min_replicas=min_replicas, capacity_adjusted_max_replicas=max_replicas,
        policy_state=dict(policy_state or {}), last_scale_up_time=None, last_scale_down_time=None,
        current_time=time.time(), config=autoscaling)


# ------------------------------------------------------------------------------------------- the arithmetic
@pytest.mark.parametrize("ongoing, queued, per_replica, low, high, expected", [
    # NerfTrainer: 2 jobs per replica, 1..8
    (0, 0, 2, 1, 8, 1),      # idle: the floor
    (3.0, 0, 2, 1, 8, 2),    # 3 running / 2 = 1.5 → 2 (Serve's own policy would say the same)
    (2, 5, 2, 1, 8, 4),      # 2 running + 5 waiting = 7 jobs / 2 = 3.5 → 4: the queue adds 3 replicas
    (4, 40, 2, 1, 8, 8),     # 44 / 2 = 22 → clamped to 8
    (0.4, 0, 2, 1, 8, 1),    # a look-back average below one request
    # MultiView: 8 trainer jobs per replica (one SDS batch), 1..4
    (6, 3, 8, 1, 4, 2),      # 9 / 8 = 1.125 → 2
    (16, 20, 8, 1, 4, 4),    # 36 / 8 = 4.5 → 5 → clamped to 4
    # JobConsumer: 8 Celery threads per replica, 2..4; its Celery tasks are not Serve requests (ongoing 0)
    (0, 17, 8, 2, 4, 3),     # 17 / 8 = 2.125 → 3
    (0, 0, 8, 2, 4, 2),
    # scale from zero (min 0)
    (0, 0, 2, 0, 4, 0),      # nothing to do: stay at zero
    (0, 1, 2, 0, 4, 1),      # one queued job brings one replica
    (0, 5, 2, 0, 4, 3),      # 5 / 2 = 2.5 → 3
])
def test_desired_replicas(ongoing, queued, per_replica, low, high, expected):
    assert desired_replicas(ongoing, queued, per_replica, low, high) == expected


def test_desired_replicas_rejects_a_non_positive_target():
    with pytest.raises(ValueError, match="jobs_per_replica"):
        desired_replicas(1, 1, 0, 1, 8)
    with pytest.raises(ValueError, match="jobs_per_replica"):
        JobQueueAutoscalingPolicy(jobs_per_replica=-1, queue_length=lambda: 0)
    with pytest.raises(ValueError, match="broker_url"):
        JobQueueAutoscalingPolicy(jobs_per_replica=2)


@pytest.mark.parametrize("current, ongoing, queued, low, high, expected", [
    (1, 0.0, 0, 1, 8, 1),
    (1, 2.0, 6, 1, 8, 4),    # (2 + 6) / 2
    (3, 6.0, 1, 1, 8, 4),    # (6 + 1) / 2 = 3.5 → 4
    (8, 16.0, 30, 1, 8, 8),  # clamp at max
    (0, 0.0, 3, 0, 8, 2),    # from zero: 3 / 2 → 2
    (5, 1.0, 0, 2, 8, 2),    # clamp at min
])
def test_policy_uses_the_contexts_requests_and_the_queue(current, ongoing, queued, low, high, expected):
    policy = JobQueueAutoscalingPolicy(jobs_per_replica=2, queue_length=lambda: queued)
    replicas, state = policy(context(current=current, ongoing=ongoing, min_replicas=low, max_replicas=high))
    assert (replicas, state) == (expected, {"queued_jobs": queued})


# --------------------------------------------------------------------- inside Serve's wrapper (delays, zero)
def test_serve_scales_up_from_zero_at_once_on_queued_jobs_alone():
    """No replica and no request (nothing Serve's default policy would react to), three jobs queued."""
    wrapped = _apply_autoscaling_config(JobQueueAutoscalingPolicy(jobs_per_replica=2, queue_length=lambda: 3))
    replicas, _ = wrapped(context(current=0, ongoing=0.0, min_replicas=0, upscale_delay_s=10))
    assert replicas == 2


def test_serve_holds_an_upscale_for_upscale_delay_s():
    wrapped = _apply_autoscaling_config(JobQueueAutoscalingPolicy(jobs_per_replica=2, queue_length=lambda: 10))
    replicas, state = wrapped(context(current=1, ongoing=2.0, upscale_delay_s=10))
    assert replicas == 1 and state["queued_jobs"] == 10  # wants (2 + 10) / 2 = 6, waits
    state[SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY] -= 11  # the same wish, 11 s later
    replicas, _ = wrapped(context(current=1, ongoing=2.0, upscale_delay_s=10, policy_state=state))
    assert replicas == 6


# ------------------------------------------------------------------------------------------------ polling
def _settle(poller: QueueLengthPoller) -> None:
    if poller._thread is not None:
        poller._thread.join(timeout=5)


def test_poller_refreshes_in_the_background_every_interval_and_keeps_the_last_value_on_errors():
    clock, answers = Clock(100.0), iter([4, 7, RuntimeError("redis down")])

    def probe() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller = QueueLengthPoller(probe, interval_s=10, clock=clock)
    poller()  # starts a probe (test_poller_never_blocks_on_a_slow_probe: without waiting for it)
    _settle(poller)
    assert poller() == 4 and poller.polled_at == 100.0
    clock.now = 105.0
    assert poller() == 4 and poller._started_at == 100.0  # within the interval: no new probe
    clock.now = 110.0
    poller()
    _settle(poller)
    assert poller() == 7
    clock.now = 120.0
    poller()
    _settle(poller)
    assert poller() == 7 and poller.polled_at == 110.0  # the failed probe kept the last value


def test_poller_never_blocks_on_a_slow_probe():
    poller = QueueLengthPoller(lambda: time.sleep(1.0) or 3, interval_s=0.01)
    started = time.monotonic()
    assert [poller() for _ in range(50)] == [0] * 50  # one probe in flight at a time, none waited for
    assert time.monotonic() - started < 0.5
    _settle(poller)
    assert poller() == 3


# ------------------------------------------------------------------------------- against a real Redis broker
@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's redis-server (``tests/conftest.py``), flushed: no jobs queued."""
    redis_server.client.flushall()
    return redis_server.url


def test_probe_counts_the_jobs_the_service_enqueued(redis_url):
    """Celery's producer (through Ray's adapter, as the ingress does) writes the list the probe reads."""
    queue = JobQueue(QueueConfig(broker_url=redis_url))
    probe = RedisQueueLength(redis_url)
    assert probe() == 0
    for job in range(3):
        queue.enqueue(f"{job:032x}")
    assert probe() == 3
    assert RedisQueueLength(redis_url, queue_name="another-queue")() == 0
    policy = JobQueueAutoscalingPolicy(jobs_per_replica=2, queue_length=probe)
    assert policy(context(current=1, ongoing=2.0))[0] == 3  # (2 + 3) / 2 = 2.5 → 3


def test_probe_reports_an_unreachable_broker_as_an_error():
    with pytest.raises(redis.ConnectionError):
        RedisQueueLength(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)()
    with pytest.raises(ValueError, match="Redis brokers only"):
        RedisQueueLength("amqp://guest@rabbit//")


# ------------------------------------------------------------------------------------- serve_config.yaml
def _cluster_app() -> dict:
    (app,) = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    return app


def test_serve_config_parses_and_every_policy_resolves_as_serve_resolves_it():
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    (app,) = schema.applications
    policies = {}
    for deployment in app.deployments:
        config = AutoscalingConfig(**deployment.autoscaling_config)  # imports the policy_function path
        if not config.policy.is_default_policy_function():
            policies[deployment.name] = (config.policy.policy_function, _resolve_policy_callable(config.policy))
    assert sorted(policies) == sorted(QUEUE_SCALED)
    for name, (path, policy) in policies.items():
        assert path == POLICY_PATH and type(policy).__name__ == "JobQueueAutoscalingPolicy", name
        assert isinstance(policy.queue_length, QueueLengthPoller), name
        assert policy.queue_length.probe.keys[0] == DEFAULT_QUEUE_NAME, name


def test_policy_kwargs_agree_with_the_args_and_the_deployments():
    app = _cluster_app()
    deployments = {d["name"]: d for d in app["deployments"]}
    queue = QueueConfig(**app["args"]["queue"])
    kwargs = {name: deployments[name]["autoscaling_config"]["policy"]["policy_kwargs"] for name in QUEUE_SCALED}
    for name, given in kwargs.items():
        assert given["broker_url"] == queue.broker_url, name
        assert given.get("queue_name", DEFAULT_QUEUE_NAME) == queue.queue_name, name
        assert given["jobs_per_replica"] == deployments[name]["autoscaling_config"]["target_ongoing_requests"], name
    assert kwargs["NerfTrainer"]["jobs_per_replica"] == deployments["NerfTrainer"]["max_ongoing_requests"]
    assert kwargs["MultiView"]["jobs_per_replica"] == app["args"]["sds_max_batch_size"]
    assert kwargs["JobConsumer"]["jobs_per_replica"] == deployments["JobConsumer"]["max_ongoing_requests"]
    # at its floor, JobConsumer already holds as many jobs as every NerfTrainer replica can run
    trainer = deployments["NerfTrainer"]
    consumer = deployments["JobConsumer"]
    trainer_slots = trainer["autoscaling_config"]["max_replicas"] * trainer["max_ongoing_requests"]
    assert consumer["autoscaling_config"]["min_replicas"] * consumer["max_ongoing_requests"] >= trainer_slots
    assert consumer["autoscaling_config"]["min_replicas"] >= 1  # it also runs the stale-job sweep and webhooks
