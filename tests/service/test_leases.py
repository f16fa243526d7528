"""Job leases: a job waiting for a trainer slot is ``queued`` (dispatched) and held by its consumer's renewals, a
running one by its trainer's heartbeats; a lease that runs out is requeued by the next sweep, in seconds.

Times are a fake clock (seconds); the stores run on SQLite and PostgreSQL (the ``database`` fixture)."""

import pytest
from support import Clock, wait_until

from lift3d.io.storage import LocalStore
from lift3d.params import GenerationParams
from lift3d.service.config import ServiceConfig
from lift3d.service.worker.consumer import AttemptResult, RetryJob, consume_job, sweep_stale_jobs
from lift3d.service.jobs.store import InvalidTransition, JobOutcome, JobRecord, JobStore, StaleAttempt
from lift3d.service.worker.runner import JobRunner

LEASE_S = 30.0


@pytest.fixture
def jobs(database, tmp_path):
    return JobStore(database, LocalStore(tmp_path), clock=Clock(1000.0), lease_s=LEASE_S)


def new_job(jobs: JobStore, max_attempts: int = 3) -> JobRecord:
    return jobs.create(JobRecord.new("image-to-3d", GenerationParams(), max_attempts=max_attempts, now=jobs.clock()))


OUTCOME = JobOutcome(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb"])


def test_a_dispatched_job_is_queued_and_held_until_the_trainer_starts_it(jobs):
    record = new_job(jobs)
    dispatched = jobs.dispatch(record.id, "consumer-a/1")
    assert (dispatched.status, dispatched.stage, dispatched.attempts) == ("queued", "waiting_for_worker", 1)
    assert dispatched.worker == "consumer-a/1" and dispatched.lease_expires_at == 1000.0 + LEASE_S
    assert dispatched.started_at is None  # waiting is not running
    with pytest.raises(InvalidTransition):
        jobs.dispatch(record.id, "consumer-b/1")  # a second delivery cannot take it too
    jobs.clock.now += 10
    started = jobs.start_attempt(record.id, 1, "trainer-1")
    assert (started.status, started.stage, started.worker) == ("running", "starting", "trainer-1")
    assert started.started_at == 1010.0 and started.lease_expires_at == 1010.0 + LEASE_S
    jobs.clock.now += 20
    assert jobs.heartbeat(record.id, attempt=1).lease_expires_at == 1030.0 + LEASE_S  # heartbeats renew it


def test_the_consumer_renews_the_lease_while_the_job_waits_for_a_trainer_slot(jobs):
    record = new_job(jobs)
    seen = []

    def attempt(job_id):  # waits 100 fake seconds for a slot, more than three leases; sweeps run meanwhile
        for _ in range(5):
            jobs.clock.now += 20
            wait_until(lambda: jobs.get(job_id).lease_expires_at == jobs.clock.now + LEASE_S, 10, "the lease renewed",
                       interval_s=0.01)
            assert sweep_stale_jobs(jobs, seen.append) == {}
        waiting = jobs.get(job_id)
        assert (waiting.status, waiting.stage, waiting.started_at) == ("queued", "waiting_for_worker", None)
        jobs.start_attempt(job_id, 1, "trainer-1")
        jobs.succeed(job_id, OUTCOME, attempt=1)
        return AttemptResult("succeeded")

    assert consume_job(record.id, jobs, attempt, "consumer-a/1", renew_every_s=0.005) == "succeeded"
    assert seen == [] and jobs.get(record.id).attempts == 1 and jobs.get(record.id).lease_expires_at is None


def test_a_lost_holder_is_requeued_by_the_first_sweep_after_its_lease_runs_out(jobs):
    waiting, running, untouched = new_job(jobs), new_job(jobs), new_job(jobs)
    jobs.dispatch(waiting.id, "consumer-a/1")      # its consumer dies while it waits
    jobs.dispatch(running.id, "consumer-a/2")
    jobs.start_attempt(running.id, 1, "trainer-1")  # its trainer dies mid-job
    enqueued: list[str] = []
    jobs.clock.now += LEASE_S  # not yet: the lease runs out strictly after lease_s
    assert sweep_stale_jobs(jobs, enqueued.append) == {}
    jobs.clock.now += 0.5
    assert sweep_stale_jobs(jobs, enqueued.append) == {waiting.id: "requeued", running.id: "requeued"}
    assert sorted(enqueued) == sorted([waiting.id, running.id])
    for job_id in (waiting.id, running.id):
        record = jobs.get(job_id)
        assert (record.status, record.stage, record.worker, record.lease_expires_at) == ("queued", "requeued",
                                                                                          None, None)
    assert jobs.get(untouched.id).stage == "queued"  # never dispatched: still waits in the broker
    assert sweep_stale_jobs(jobs, enqueued.append) == {}  # a second sweep finds nothing to do
    with pytest.raises(StaleAttempt):
        jobs.start_attempt(waiting.id, 1, "trainer-late")  # the dead consumer's attempt can no longer start
    assert jobs.dispatch(running.id, "consumer-b/1").attempts == 2


def test_a_renewal_that_beats_the_sweep_keeps_the_job(jobs):
    record = jobs.dispatch(new_job(jobs).id, "consumer-a/1")
    jobs.clock.now += LEASE_S + 1
    stale_view = jobs.get(record.id)
    jobs.renew_lease(record.id, 1)  # the consumer was only slow
    assert not jobs.lease_expired(jobs.get(record.id))
    with pytest.raises(StaleAttempt):
        jobs.requeue(record.id, attempt=stale_view.attempts, only_if_lease_expired=True)
    assert jobs.get(record.id).worker == "consumer-a/1"


def test_the_last_attempt_lost_fails_the_job_with_the_reason(jobs):
    record = new_job(jobs, max_attempts=1)
    jobs.dispatch(record.id, "consumer-a/1")
    jobs.clock.now += LEASE_S + 1
    assert sweep_stale_jobs(jobs, lambda job_id: pytest.fail("enqueued")) == {record.id: "failed"}
    failed = jobs.get(record.id)
    assert failed.status == "failed" and failed.error.message == "worker lost (after 1 attempts)"


def test_a_retryable_failure_puts_the_job_back_to_queued(jobs):
    record = new_job(jobs)

    def attempt(job_id):
        jobs.start_attempt(job_id, 1, "trainer-1")
        return AttemptResult("retry", "internal_error", "CUDA error: out of memory")

    with pytest.raises(RetryJob):
        consume_job(record.id, jobs, attempt, "consumer-a/1")
    retrying = jobs.get(record.id)
    assert (retrying.status, retrying.stage, retrying.worker, retrying.attempts) == ("queued", "retrying", None, 1)
    assert retrying.error.message == "CUDA error: out of memory"


def test_a_job_canceled_while_waiting_never_runs_on_the_trainer(jobs):
    record = new_job(jobs)
    jobs.dispatch(record.id, "consumer-a/1")
    canceled = jobs.request_cancel(record.id)
    assert canceled.status == "canceled"  # not started: canceled at once (and refunded)
    runner = JobRunner(jobs, stages=None, preset=None, cost_model=None, worker="trainer-1")  # stages never used
    result = runner.attempt(record.id)
    assert result.status == "canceled" and jobs.get(record.id).started_at is None


def test_the_trainer_starts_a_dispatched_attempt_only_while_it_is_current(jobs):
    record = new_job(jobs)
    jobs.dispatch(record.id, "consumer-a/1")
    jobs.clock.now += LEASE_S + 1
    sweep_stale_jobs(jobs, lambda job_id: None)  # requeued: attempt 1 is stale
    runner = JobRunner(jobs, stages=None, preset=None, cost_model=None, worker="trainer-1")
    assert runner.attempt(record.id).status == "retry"
    assert jobs.get(record.id).status == "queued" and jobs.get(record.id).worker is None


def test_a_lease_shorter_than_three_heartbeats_is_refused():
    with pytest.raises(ValueError, match="at least 3 × heartbeat_s"):
        ServiceConfig(heartbeat_s=5, lease_s=12)
    assert ServiceConfig(heartbeat_s=5, lease_s=15).lease_s == 15


def test_every_log_line_of_a_delivery_names_the_job_and_attempt(jobs):
    import logging

    from lift3d.logs import JOB_ID_FIELD, JobContextFilter

    record = new_job(jobs)
    seen = []

    class Collect(logging.Handler):
        def emit(self, entry):
            seen.append((entry.getMessage(), getattr(entry, JOB_ID_FIELD, None), getattr(entry, "lift3d_attempt", None)))

    handler = Collect()
    handler.addFilter(JobContextFilter())
    logger = logging.getLogger("lift3d")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        def attempt(job_id):
            logging.getLogger("lift3d.test").info("inside the attempt")
            raise ConnectionError("trainer replica died")  # delivery.py logs it from the same context

        with pytest.raises(RetryJob):
            consume_job(record.id, jobs, attempt, "consumer-a/1")
        logging.getLogger("lift3d.test").info("after the delivery")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)  # other tests' output depends on the project logger's level
    inside = [entry for entry in seen if entry[0] != "after the delivery"]
    assert ("inside the attempt", record.id, 1) in inside
    assert any("attempt raised" in message for message, _, _ in inside)
    assert all(job == record.id and number == 1 for _, job, number in inside)
    assert ("after the delivery", None, None) in seen
