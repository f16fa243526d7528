"""The job queue on a REAL Redis server (Debian's redis-server, started here; missing binary → fail, never skip).

Producer: :class:`deployments.queue.JobQueue`. Consumers: separate processes (so that SIGKILL is real) running Ray
Serve's own consumer code outside a cluster — the ``@task_consumer`` wrapper's ``initialize_callable``, which
builds the ``CeleryTaskProcessorAdapter`` from :func:`deployments.queue.task_processor_config`, registers the
``@task_handler`` and starts the Celery worker thread exactly as a ``JobConsumer`` replica does; only the replica
context (the worker's host name) is stubbed. The handler records each delivery in an events file and, like
``consume_job``, drops it while another delivery holds the job's lease, else holds the lease and sleeps.

Checked: submit → consume with the adapter's settings in effect; late acknowledgement (the message sits in Kombu's
``unacked`` hash while the task runs, gone after success); redelivery to another consumer after the one running
the job is SIGKILLed, within the visibility timeout plus one restore interval; a job outliving the visibility
timeout delivered once more and that copy dropped; a queued message surviving a Redis crash (appendonly),
producer and consumer reconnecting by themselves.

Run alone: ``python -m pytest -q tests/test_redis_broker.py -s`` prints the measured times.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from support import wait_until
from support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "lift3d-generations"  # QueueConfig's default queue_name: the Redis list the jobs wait in
CONCURRENCY = 8  # JobConsumer's max_ongoing_requests, which Serve passes to the adapter as worker_concurrency
LEASE_S = 1.0  # the handler's stand-in for the job record's lease (renewed every third of it while it runs)


# ------------------------------------------------------------------------------------------- consumer process
def run_consumer(broker_url: str, visibility_timeout_s: int, task_s: float, events: str) -> None:
    """A ``JobConsumer`` stand-in: Serve's task-consumer wrapper and Celery adapter; a handler that, like
    ``consume_job``, drops a delivery while another holds the job's live lease (a Redis key with a TTL here),
    else holds the lease and sleeps ``task_s``."""
    from types import SimpleNamespace

    import ray.serve.task_processor as task_processor
    import redis
    from celery import current_task
    from celery.signals import worker_ready
    from ray.serve.task_consumer import task_consumer, task_handler

    from deployments.queue import TASK_NAME, task_processor_config
    from lift3d.service.config import QueueConfig

    lock = threading.Lock()

    def record(event: str, **fields) -> None:
        with lock, open(events, "a") as out:
            out.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields}) + "\n")

    # Outside a replica there is no replica context; the adapter only names its Celery worker after the tag.
    task_processor.get_replica_context = lambda: SimpleNamespace(replica_tag=f"test-{os.getpid()}")
    config = task_processor_config(QueueConfig(broker_url=broker_url, visibility_timeout_s=visibility_timeout_s))

    leases = redis.Redis.from_url(broker_url)

    @task_consumer(task_processor_config=config)
    class Consumer:
        @task_handler(name=TASK_NAME)
        def generate(self, job_id: str) -> str:
            request, key = current_task.request, f"test-lease:{job_id}"
            held = bool(leases.set(key, request.id, nx=True, px=int(LEASE_S * 1000)))
            record("start", job_id=job_id, task_id=request.id, duplicate=not held,
                   redelivered=bool(request.delivery_info.get("redelivered")))
            if not held:
                record("done", job_id=job_id, result="duplicate")
                return "duplicate"
            stop = threading.Event()

            def renew() -> None:
                while not stop.wait(LEASE_S / 3):
                    leases.pexpire(key, int(LEASE_S * 1000))

            renewal = threading.Thread(target=renew, daemon=True)
            renewal.start()
            time.sleep(task_s)
            stop.set()
            renewal.join()
            record("done", job_id=job_id, result="done")
            return f"done {job_id}"

    worker_ready.connect(lambda **_: record("ready"), weak=False)
    consumer = Consumer()
    consumer.initialize_callable(CONCURRENCY)  # what the Serve replica calls after __init__
    conf = consumer._adapter._app.conf
    record("config", **{key: conf[key] for key in (
        "task_acks_late", "task_reject_on_worker_lost", "worker_pool", "worker_concurrency",
        "worker_prefetch_multiplier", "broker_transport_options", "broker_connection_max_retries")})
    consumer._adapter._worker_thread.join()


if __name__ == "__main__":
    run_consumer(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    sys.exit(0)


# ------------------------------------------------------------------------------------------------ test side
class ConsumerProcess:
    """One consumer process; its events are read back from a JSON-lines file."""

    def __init__(self, folder: Path, broker_url: str, *, visibility_timeout_s: int, task_s: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.events_path = folder / "events.jsonl"
        self.log_path = folder / "consumer.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, broker_url, str(visibility_timeout_s), str(task_s), str(self.events_path)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, event: str | None = None) -> list[dict]:
        if not self.events_path.exists():
            return []
        rows = [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]
        return [row for row in rows if event is None or row["event"] == event]

    def wait_for(self, event: str, timeout_s: float, job_id: str | None = None) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = [row for row in self.events(event) if job_id is None or row.get("job_id") == job_id]
            if rows:
                return rows[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"consumer {self.pid}: no {event!r} event for {job_id} within {timeout_s} s (exit code "
                    f"{self.process.poll()}); log:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def redis_broker(tmp_path):
    """A fresh redis-server with ``appendonly yes`` (a broker's setting) in ``tmp_path/redis``."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.close()


@pytest.fixture
def consumers(tmp_path):
    """``start(broker_url, visibility_timeout_s=..., task_s=...)`` → :class:`ConsumerProcess`; all killed after."""
    started: list[ConsumerProcess] = []

    def start(broker_url: str, *, visibility_timeout_s: int, task_s: float) -> ConsumerProcess:
        process = ConsumerProcess(tmp_path / f"consumer{len(started)}", broker_url,
                                  visibility_timeout_s=visibility_timeout_s, task_s=task_s)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def job_queue(server: RedisServer, visibility_timeout_s: int):
    from deployments.queue import JobQueue
    from lift3d.service.config import QueueConfig

    return JobQueue(QueueConfig(broker_url=server.url, visibility_timeout_s=visibility_timeout_s))


def unacked(server: RedisServer) -> dict[str, tuple[str, list]]:
    """Kombu's ``unacked`` hash: delivery tag → (Celery task id, task args = [job id]) of that message."""
    entries = {}
    for tag, value in server.client.hgetall("unacked").items():
        message, _exchange, _routing_key = json.loads(value)
        assert message["properties"]["body_encoding"] == "base64"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        entries[tag.decode()] = (message["headers"]["id"], args)
    return entries


# ------------------------------------------------------------------------------------------------- tests
def test_submit_consume_and_acknowledge_late(redis_broker, consumers):
    from deployments.queue import redis_transport_options

    consumer = consumers(redis_broker.url, visibility_timeout_s=60, task_s=1.5)
    consumer.wait_for("ready", timeout_s=30)
    queue = job_queue(redis_broker, visibility_timeout_s=60)
    job_id = uuid.uuid4().hex
    submitted = time.time()
    queue.enqueue(job_id)
    start = consumer.wait_for("start", timeout_s=10, job_id=job_id)
    assert (start["redelivered"], start["duplicate"]) == (False, False)

    # Running: off the queue, but in the unacked hash (by its delivery tag) with its delivery time in the index.
    assert redis_broker.client.llen(QUEUE) == 0
    [(tag, entry)] = unacked(redis_broker).items()
    assert entry == (start["task_id"], [job_id])
    delivered_at = redis_broker.client.zscore("unacked_index", tag)
    assert delivered_at is not None and 0 <= start["t"] - delivered_at < 1.0
    assert not consumer.events("done")  # still running while we looked

    # Returned: acknowledged (gone from both keys); no Celery result stored (sent with ignore_result).
    done = consumer.wait_for("done", timeout_s=10, job_id=job_id)
    assert done["result"] == "done" and done["t"] - start["t"] >= 1.5
    wait_until(lambda: not redis_broker.client.exists("unacked", "unacked_index"), 5, "the message is acknowledged")
    assert redis_broker.client.llen(QUEUE) == 0
    assert [row["job_id"] for row in consumer.events("start")] == [job_id]
    assert redis_broker.client.keys("celery-task-meta-*") == []
    print(f"\nRedis: enqueue → handler start {start['t'] - submitted:.3f} s")

    # The settings the running Celery worker has: Ray's adapter sets the first four itself, ours the rest.
    config = consumer.events("config")[0]
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_pool"] == "threads"
    assert config["worker_concurrency"] == CONCURRENCY
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_connection_max_retries"] is None
    assert config["broker_transport_options"] == redis_transport_options(60) == {
        "visibility_timeout": 60, "unacked_restore_interval": 6, "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5, "socket_timeout": 10}
    # The producer's Celery app (the same adapter class) has the same transport options.
    assert queue._adapter._app.conf.broker_transport_options == config["broker_transport_options"]


def test_a_killed_consumers_job_is_redelivered_to_another(redis_broker, consumers):
    visibility_s, restore_every_s = 3, 1  # redis_transport_options(3): restore scans every 1 s
    pair = [consumers(redis_broker.url, visibility_timeout_s=visibility_s, task_s=2.0) for _ in range(2)]
    for consumer in pair:
        consumer.wait_for("ready", timeout_s=30)
    job_id = uuid.uuid4().hex
    job_queue(redis_broker, visibility_timeout_s=visibility_s).enqueue(job_id)

    wait_until(lambda: any(consumer.events("start") for consumer in pair), 10, "a consumer received the job",
               interval_s=0.02)
    victim, survivor = pair if pair[0].events("start") else pair[::-1]
    first = victim.events("start")[0]
    assert first["job_id"] == job_id and first["redelivered"] is False
    victim.kill()  # SIGKILL mid-task (it started; Kombu wrote "unacked" on delivery): no ack, no reject, no hook
    killed_at = time.time()
    [(tag, entry)] = unacked(redis_broker).items()  # still owed to someone
    assert entry == (first["task_id"], [job_id])

    second = survivor.wait_for("start", timeout_s=visibility_s + 10, job_id=job_id)
    redelivered_entries = unacked(redis_broker)  # while the survivor runs it (2 s)
    survivor.wait_for("done", timeout_s=10, job_id=job_id)
    redelivery_s = second["t"] - first["t"]
    print(f"\nRedis redelivery: {redelivery_s:.2f} s after the first delivery, {second['t'] - killed_at:.2f} s after "
          f"SIGKILL (visibility_timeout {visibility_s} s, restore scan every {restore_every_s} s)")
    # The same message (same task id and delivery tag), flagged as redelivered, not before the visibility timeout
    # and at most one restore interval (plus scheduling slack on a busy machine) after it.
    assert second["task_id"] == first["task_id"] and second["redelivered"] is True
    assert second["duplicate"] is False  # the victim's lease ran out (LEASE_S) long before
    assert redelivered_entries == {tag: (first["task_id"], [job_id])}
    assert visibility_s - 0.1 <= redelivery_s <= visibility_s + restore_every_s + 1.5
    assert [(row["job_id"], row["result"]) for row in survivor.events("done")] == [(job_id, "done")]
    wait_until(lambda: not unacked(redis_broker), 5, "the redelivered message is acknowledged")
    assert redis_broker.client.llen(QUEUE) == 0


def test_a_job_outliving_the_visibility_timeout_is_delivered_once_more(redis_broker, consumers):
    """Not a time limit: a live consumer's job is put back on the queue too once it runs longer than the visibility
    timeout (here delivered to the same consumer). The lease makes that delivery a quick no-op; its ack clears the
    message's only entry (one delivery tag): Redis would not deliver it again even if the first consumer died."""
    visibility_s = 2
    consumer = consumers(redis_broker.url, visibility_timeout_s=visibility_s, task_s=6.0)
    consumer.wait_for("ready", timeout_s=30)
    job_id = uuid.uuid4().hex
    job_queue(redis_broker, visibility_timeout_s=visibility_s).enqueue(job_id)
    first = consumer.wait_for("start", timeout_s=10, job_id=job_id)
    wait_until(lambda: len(consumer.events("start")) == 2, visibility_s + 3, "the second delivery")
    second = consumer.events("start")[1]
    assert (second["task_id"], second["redelivered"], second["duplicate"]) == (first["task_id"], True, True)
    assert visibility_s - 0.1 <= second["t"] - first["t"] <= visibility_s + 2.5

    wait_until(lambda: not redis_broker.client.exists("unacked", "unacked_index"), 2, "the duplicate's ack")
    assert [row["result"] for row in consumer.events("done")] == ["duplicate"]  # the first still runs, unlisted
    wait_until(lambda: len(consumer.events("done")) == 2, 10, "the first delivery returns")
    assert [row["result"] for row in consumer.events("done")] == ["duplicate", "done"]
    assert len(consumer.events("start")) == 2
    assert redis_broker.client.llen(QUEUE) == 0 and not redis_broker.client.exists("unacked")
    print(f"\nRedis: a 6 s job under a {visibility_s} s visibility timeout was delivered again after "
          f"{second['t'] - first['t']:.2f} s (dropped: lease held)")


def test_queued_message_survives_a_redis_crash_and_clients_reconnect(redis_broker, consumers):
    queue = job_queue(redis_broker, visibility_timeout_s=60)
    queued = uuid.uuid4().hex
    queue.enqueue(queued)  # no consumer yet: it waits in the list
    assert redis_broker.client.llen(QUEUE) == 1

    redis_broker.kill()  # SIGKILL: only what the AOF already holds survives
    redis_broker.start()
    assert redis_broker.client.llen(QUEUE) == 1
    consumer = consumers(redis_broker.url, visibility_timeout_s=60, task_s=0.0)
    consumer.wait_for("done", timeout_s=30, job_id=queued)
    # Acknowledged before the next crash: an ack lost with Redis leaves the message to be delivered again (at least
    # once; lift3d drops the copy of a finished job), which is not what this test is about.
    wait_until(lambda: not redis_broker.client.exists("unacked"), 5, "the first job's ack")

    # Redis goes away under a connected producer and an idle consumer, and comes back on the same port.
    redis_broker.kill()
    refused_s = []
    for producer in (queue, job_queue(redis_broker, visibility_timeout_s=60)):  # connected before, and new
        began = time.monotonic()
        with pytest.raises(OperationalError, match="Connection refused"):
            producer.enqueue(uuid.uuid4().hex)
        refused_s.append(time.monotonic() - began)
    assert max(refused_s) < 3.0  # the ingress can answer 503 at once
    redis_broker.start()
    restarted = time.time()
    later = uuid.uuid4().hex
    queue.enqueue(later)  # the producer's pooled connection is dead: Celery's publish retry reconnects
    enqueued_s = time.time() - restarted
    start = consumer.wait_for("start", timeout_s=20, job_id=later)
    consumer.wait_for("done", timeout_s=10, job_id=later)
    print(f"\nRedis down: enqueue failed after {max(refused_s):.2f} s; restarted: enqueue took {enqueued_s:.2f} s, "
          f"the consumer took the job {start['t'] - restarted:.2f} s after the restart")
    assert [row["job_id"] for row in consumer.events("done")] == [queued, later]
    assert [row["redelivered"] for row in consumer.events("start")] == [False, False]
    assert consumer.process.poll() is None  # the consumer reconnected instead of exiting
