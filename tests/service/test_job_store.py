"""The SQL job store: guarded transitions, attempt fencing, owner scoping and expiry, on SQLite and PostgreSQL."""

import threading

import pytest
from support import Clock

from lift3d.io.storage import LocalStore
from lift3d.params import GenerationParams
from lift3d.service.jobs.store import (
    ANY_OWNER,
    InvalidTransition,
    JobNotFound,
    JobOutcome,
    JobRecord,
    JobStore,
    StaleAttempt,
)


@pytest.fixture
def jobs(database, tmp_path):
    return JobStore(database, LocalStore(tmp_path), clock=Clock(1000.0), result_ttl_s=3600)


def new_job(jobs, owner_id=None):
    return jobs.create(JobRecord.new("image-to-3d", GenerationParams(), now=jobs.clock(), owner_id=owner_id))


OUTCOME = JobOutcome(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb"])


def test_racing_workers_advance_a_job_once_and_lose_no_field(jobs):
    record = new_job(jobs)
    jobs.begin_attempt(record.id, "w1")
    barrier = threading.Barrier(8)
    results: list[str] = []

    def finish(i: int) -> None:
        barrier.wait()
        try:
            if i % 2:
                jobs.succeed(record.id, OUTCOME)
                results.append("succeeded")
            else:
                jobs.fail(record.id, "internal_error", f"worker {i}")
                results.append("failed")
        except InvalidTransition:
            results.append("refused")

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("refused") == 7  # exactly one writer finished the job
    final = jobs.get(record.id)
    assert final.status in ("succeeded", "failed") and [r for r in results if r != "refused"] == [final.status]


def test_concurrent_progress_writes_keep_every_field(jobs):
    record = new_job(jobs)
    jobs.begin_attempt(record.id, "w1")
    barrier = threading.Barrier(2)

    def write(**changes):
        barrier.wait()
        for _ in range(20):
            jobs.heartbeat(record.id, **changes)

    a = threading.Thread(target=write, kwargs={"stage": "sds_training"})
    b = threading.Thread(target=write, kwargs={"eta_s": 12.5})
    a.start(), b.start(), a.join(), b.join()
    final = jobs.get(record.id)
    assert final.stage == "sds_training" and final.eta_s == 12.5  # neither write erased the other's field


def test_a_stale_attempt_cannot_write_after_the_job_was_requeued(jobs):
    record = new_job(jobs)
    first = jobs.begin_attempt(record.id, "w1").attempts
    second = jobs.begin_attempt(record.id, "w2").attempts  # the sweep requeued it; another worker took it
    assert (first, second) == (1, 2)
    with pytest.raises(StaleAttempt):
        jobs.heartbeat(record.id, attempt=first, stage="late")
    with pytest.raises(StaleAttempt):
        jobs.succeed(record.id, OUTCOME, attempt=first)
    assert jobs.succeed(record.id, OUTCOME, attempt=second).status == "succeeded"


def test_another_keys_job_is_not_found(jobs, database):
    from lift3d.service.accounts.keys import ApiKeyStore

    keys = ApiKeyStore(database)
    alice, bob = keys.create(name="alice").id, keys.create(name="bob").id
    record = new_job(jobs, owner_id=alice)
    assert jobs.get(record.id, alice).id == record.id
    assert jobs.get(record.id, ANY_OWNER).owner_id == alice
    with pytest.raises(JobNotFound):
        jobs.get(record.id, bob)
    with pytest.raises(JobNotFound):
        jobs.request_cancel(record.id, bob)
    with pytest.raises(JobNotFound):
        jobs.get(record.id, None)  # an unauthenticated (auth-off) caller sees only ownerless jobs
    assert jobs.count_active(alice) == 1 and jobs.count_active(bob) == 0 and jobs.count_active() == 1


def test_results_expire_after_the_ttl(jobs):
    done, running = new_job(jobs), new_job(jobs)
    for name in ("model.glb", "upload.png"):
        jobs.store.put(f"generations/{done.id}/{name}", b"x")
    jobs.begin_attempt(done.id, "w")
    finished = jobs.succeed(done.id, OUTCOME)
    assert finished.expires_at == 1000.0 + 3600
    jobs.begin_attempt(running.id, "w")
    jobs.clock.now += 3599
    assert jobs.expire_due() == []
    jobs.clock.now += 2
    assert jobs.expire_due() == [done.id]
    assert jobs.get(done.id).status == "expired" and jobs.store.list(f"generations/{done.id}/") == []
    assert jobs.get(running.id).status == "running"
    with pytest.raises(InvalidTransition):
        jobs.update(done.id, status="expired")
    assert jobs.expire_due() == []


def test_queue_depth_counts_only_queued_jobs(jobs):
    a, b, c = new_job(jobs), new_job(jobs), new_job(jobs)
    jobs.begin_attempt(a.id, "w")
    jobs.request_cancel(b.id)
    assert jobs.count_queued() == 1 and jobs.count_active() == 2 and set(jobs.active_ids()) == {a.id, c.id}


def test_get_data_nowait_reads_a_sqlite_job_and_defers_postgresql(jobs, database):
    """The status poll's event-loop read (issue 23): the same record and owner scoping as the threaded read on
    SQLite; PostgreSQL answers ReadWouldWait (the poll then takes the worker thread)."""
    from lift3d.service.accounts.keys import ApiKeyStore
    from lift3d.service.db import ReadWouldWait

    alice, bob = (ApiKeyStore(database).create(name=n).id for n in ("alice", "bob"))
    record = new_job(jobs, owner_id=alice)
    if not database.is_sqlite:
        with pytest.raises(ReadWouldWait):
            jobs.get_data(record.id, alice, nowait=True)
        return
    assert jobs.get_data(record.id, alice, nowait=True) == jobs.get_data(record.id, alice)
    assert jobs.get_data(record.id, alice, nowait=True)["status"] == "queued"
    with pytest.raises(JobNotFound):
        jobs.get_data(record.id, bob, nowait=True)
