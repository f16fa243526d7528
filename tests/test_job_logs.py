"""Structured job logs (lift3d/logs.py): the job id on every line of a job, in our JSON lines and in Ray
Serve's JSON replica logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest

from lift3d.logs import (
    APP_LOGGERS,
    SERVE_LOGGER,
    JobContextFilter,
    configure_json_logging,
    current_job,
    in_current_context,
    install_job_log_filter,
    job_log_context,
    set_job_attempt,
)


@pytest.fixture
def json_lines():
    """A logger writing JSON lines to a buffer; yields (logger, read) where read() parses the lines so far."""
    logger = logging.getLogger("lift3d.test_job_logs")
    stream = io.StringIO()
    handler = configure_json_logging(stream, level=logging.DEBUG, logger=logger)
    propagate, logger.propagate = logger.propagate, False

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield logger, read
    logger.removeHandler(handler)
    logger.propagate = propagate
    logger.setLevel(logging.NOTSET)


def by_message(lines: list[dict]) -> dict[str, dict]:
    return {line["message"]: line for line in lines}


def test_lines_inside_a_job_carry_it_and_lines_outside_do_not(json_lines):
    logger, read = json_lines
    logger.info("before")
    with job_log_context("job-7", attempt=2) as context:
        assert current_job() == context
        logger.info("step %d of %d", 3, 10)
        with job_log_context("job-7", attempt=3):  # a nested context overrides until it ends
            logger.info("retried")
        logger.warning("back")
        helper = threading.Thread(target=in_current_context(lambda: logger.info("from helper thread")))
        plain = threading.Thread(target=lambda: logger.info("from plain thread"))
        helper.start(), plain.start()
        helper.join(), plain.join()
    logger.info("after")
    assert current_job() is None

    lines = by_message(read())
    job = {name: (line.get("lift3d_job_id"), line.get("lift3d_attempt")) for name, line in lines.items()}
    assert job == {
        "before": (None, None),
        "step 3 of 10": ("job-7", 2),
        "retried": ("job-7", 3),
        "back": ("job-7", 2),
        "from helper thread": ("job-7", 2),
        "from plain thread": (None, None),  # threads do not inherit context variables: hence in_current_context
        "after": (None, None),
    }
    assert "lift3d_job_id" not in lines["before"] and "lift3d_attempt" not in lines["after"]


def test_the_attempt_set_inside_a_job_lasts_until_the_job_context_ends(json_lines):
    logger, read = json_lines
    with pytest.raises(RuntimeError):
        set_job_attempt(1)
    with job_log_context("job-2"):
        logger.info("read the record")
        set_job_attempt(5)
        logger.info("attempt known")
        beat = threading.Thread(target=in_current_context(lambda: logger.info("heartbeat")))
        beat.start()
        beat.join()
    logger.info("done")
    job = {line["message"]: (line.get("lift3d_job_id"), line.get("lift3d_attempt")) for line in read()}
    assert job == {"read the record": ("job-2", None), "attempt known": ("job-2", 5), "heartbeat": ("job-2", 5),
                   "done": (None, None)}
    assert current_job() is None


def test_json_lines_have_the_fields(json_lines):
    logger, read = json_lines
    started = datetime.now(timezone.utc)
    with job_log_context("job-1"):
        logger.debug("no attempt yet")
        try:
            1 / 0
        except ZeroDivisionError:
            logger.exception("stage %s failed", "sds_training")
    plain, failed = read()
    assert set(plain) == {"ts", "level", "logger", "message", "lift3d_job_id"}  # no attempt: no key
    assert (plain["level"], plain["logger"], plain["message"]) == ("DEBUG", "lift3d.test_job_logs", "no attempt yet")
    assert plain["ts"].endswith("Z") and len(plain["ts"]) == len("2025-01-01T12:00:00.000Z")
    ts = datetime.fromisoformat(plain["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo == timezone.utc and timedelta(seconds=-1) < ts - started < timedelta(seconds=30)
    assert failed["level"] == "ERROR" and failed["message"] == "stage sds_training failed"
    assert failed["exc_info"].startswith("Traceback") and "ZeroDivisionError: division by zero" in failed["exc_info"]
    assert failed["lift3d_job_id"] == "job-1"


def test_concurrent_jobs_in_threads_and_tasks_keep_their_own_ids(json_lines):
    logger, read = json_lines
    barrier = threading.Barrier(2)

    def job(job_id: str) -> None:
        with job_log_context(job_id, attempt=1):
            for step in range(3):
                barrier.wait(timeout=10)  # interleave the two jobs' lines
                logger.info("%s step %d", job_id, step)

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def task(job_id: str) -> None:
        with job_log_context(job_id):
            await asyncio.sleep(0)
            logger.info("%s on the loop", job_id)
            await asyncio.to_thread(logger.info, "%s in to_thread", job_id)  # to_thread copies the context

    async def both() -> None:
        await asyncio.gather(task("c"), task("d"))

    asyncio.run(both())
    lines = read()
    assert len(lines) == 10
    for line in lines:
        assert line["lift3d_job_id"] == line["message"].split()[0], line


def test_one_wrapped_target_can_run_in_several_threads_at_once(json_lines):
    logger, read = json_lines
    barrier = threading.Barrier(3)

    def work(n: int) -> None:
        barrier.wait(timeout=10)  # all three inside the wrapped call together
        logger.info("worker %d", n)

    with job_log_context("job-9", attempt=1):
        target = in_current_context(work)
    threads = [threading.Thread(target=target, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((line["message"], line["lift3d_job_id"]) for line in read()) == [
        ("worker 0", "job-9"), ("worker 1", "job-9"), ("worker 2", "job-9")]


def test_an_explicit_value_on_the_record_is_kept():
    record = logging.LogRecord("lift3d.x", logging.INFO, __file__, 1, "m", None, None)
    record.lift3d_job_id = "given"
    with job_log_context("ctx", attempt=4):
        assert JobContextFilter().filter(record) is True
    assert (record.lift3d_job_id, record.lift3d_attempt) == ("given", 4)


# ------------------------------------------------------------------------------------------------ Ray Serve
@pytest.fixture
def serve_logger_state():
    """Restore the loggers that Serve's configuration and install_job_log_filter change."""
    names = (SERVE_LOGGER,) + APP_LOGGERS
    saved = {name: (list(logging.getLogger(name).handlers), list(logging.getLogger(name).filters),
                    logging.getLogger(name).level, logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, filters, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def configure_serve_json_logs(logs_dir) -> None:
    """What a Serve replica does at start with ``logging_config: {encoding: JSON}`` (Ray 2.60's
    ``configure_component_logger``; the component type is left out so that stdout is not redirected here)."""
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    configure_component_logger(component_name="NerfTrainer", component_id="replica-1", max_bytes=10**6,
                               backup_count=1, logging_config=LoggingConfig(
                                   encoding="JSON", logs_dir=str(logs_dir),
                                   additional_log_standard_attrs=["name"]))


def test_serve_json_replica_logs_carry_the_job(tmp_path, serve_logger_state):
    configure_serve_json_logs(tmp_path)
    install_job_log_filter()
    install_job_log_filter()  # idempotent: no second copy of each line
    worker = logging.getLogger("lift3d.service.worker.runner")
    worker.info("outside a job")
    with job_log_context("job-3", attempt=1):
        worker.info("inside a job")
        logging.getLogger(SERVE_LOGGER).info("on the serve logger", extra={"job_id": "lost"})
        thread = threading.Thread(target=in_current_context(lambda: logging.getLogger("nerf.x").warning("thread")))
        thread.start()
        thread.join()
    configure_serve_json_logs(tmp_path)  # Serve replaces its handlers when logging_config changes
    with job_log_context("job-4"):
        logging.getLogger("deployments.consumer").info("after reconfiguration")

    (log_file,) = tmp_path.glob("*.log")
    lines = by_message([json.loads(line) for line in log_file.read_text().splitlines()])
    assert sorted(lines) == sorted(["outside a job", "inside a job", "on the serve logger", "thread",
                                    "after reconfiguration"])
    assert "lift3d_job_id" not in lines["outside a job"]
    assert (lines["inside a job"]["lift3d_job_id"], lines["inside a job"]["lift3d_attempt"]) == ("job-3", 1)
    assert lines["inside a job"]["name"] == "lift3d.service.worker.runner"
    assert lines["inside a job"]["component_name"] == "NerfTrainer"  # Serve's own fields are there too
    assert lines["on the serve logger"]["lift3d_job_id"] == "job-3"
    assert "job_id" not in lines["on the serve logger"]  # Serve deletes a record's job_id: hence lift3d_job_id
    assert (lines["thread"]["lift3d_job_id"], lines["thread"]["levelname"]) == ("job-3", "WARNING")
    assert lines["after reconfiguration"]["lift3d_job_id"] == "job-4"
    assert "lift3d_attempt" not in lines["after reconfiguration"]


def test_serve_log_level_still_applies(tmp_path, serve_logger_state):
    configure_serve_json_logs(tmp_path)
    logging.getLogger(SERVE_LOGGER).setLevel(logging.WARNING)  # logging_config: {log_level: WARNING}
    install_job_log_filter()
    with job_log_context("job-5"):
        logging.getLogger("lift3d.service.worker.consumer").info("dropped")
        logging.getLogger("lift3d.service.worker.consumer").warning("kept")
    (log_file,) = tmp_path.glob("*.log")
    assert [json.loads(line)["message"] for line in log_file.read_text().splitlines()] == ["kept"]
