"""Typed errors and the one envelope: each error class states the status its name has in the envelope's table, the
one conversion (:func:`lift3d.service.api.errors.error_response`) sets the headers that follow from the error, and the
Serve ingress's handle methods return the envelope the service's exceptions stand for."""

from __future__ import annotations

import asyncio
import json
import pickle
from functools import partial
from types import SimpleNamespace

import pytest

import lift3d.cli.remote  # noqa: F401 - its errors are Lift3DError subclasses too
import lift3d.service.api.app  # noqa: F401 - imports every error class of the service
import lift3d.service.worker.runner  # noqa: F401
from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.service.accounts.keys import Unauthorized
from lift3d.service.api.admission import OverloadedError, RateLimitedError
from lift3d.service.api.errors import AUTH_CHALLENGE, error_response, unexpected_error_response
from lift3d.service.jobs.generation import QueueUnavailable
from lift3d.service.schemas import (ERROR_STATUS, UNAVAILABLE_RETRY_AFTER_S, ErrorBody, GenerationCanceled,
                                    GenerationFailed, GenerationNotFound)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_error_class_has_the_status_of_its_name():
    classes = [Lift3DError, *_subclasses(Lift3DError)]
    assert len(classes) > 20  # the service's classes were imported
    wrong = {cls.__qualname__: (cls.name, cls.status_code) for cls in classes
             if cls.name in ERROR_STATUS and cls.status_code != ERROR_STATUS[cls.name]}
    assert wrong == {}
    unknown = {cls.__qualname__: (cls.name, cls.status_code) for cls in classes
               if cls.name not in ERROR_STATUS and cls.status_code != 500}
    assert unknown == {}  # a name the envelope does not document answers 500, as ErrorBody.http_status says


def test_error_response_is_the_envelope_with_the_errors_status_and_headers():
    response = error_response(RateLimitedError("slow down", retry_after_s=7))
    body = json.loads(response.body)
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert body["name"] == "rate_limited" and body["errors"] == ["slow down"] and len(body["id"]) == 32
    assert "WWW-Authenticate" not in response.headers

    response = error_response(Unauthorized("missing or invalid API key"))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == AUTH_CHALLENGE["WWW-Authenticate"]

    response = error_response(QueueUnavailable("broker down"))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)
    assert error_response(OverloadedError("full", 10)).headers["Retry-After"] == "10"


def test_a_failed_job_answers_with_its_stored_error_and_no_retry_after():
    response = error_response(GenerationFailed("a" * 32, "service_unavailable", "the job queue was unavailable"))
    assert response.status_code == 503 and "Retry-After" not in response.headers
    assert json.loads(response.body) == {"id": "a" * 32, "name": "service_unavailable",
                                         "errors": ["the job queue was unavailable"]}
    assert GenerationFailed("b", "no_such_name").status_code == 500


def test_envelope_ids_and_messages():
    assert ErrorBody.of(GenerationNotFound("abc")) == ErrorBody(id="abc", name="generation_not_found",
                                                                errors=["no generation with id 'abc'"])
    assert ErrorBody.of(GenerationNotFound("abc"), id="req").id == "req"
    error = InvalidInputError("steps: too big; seed: negative")
    error.errors = ["steps: too big", "seed: negative"]
    assert ErrorBody.of(error).errors == ["steps: too big", "seed: negative"]
    # a DELETE that cancels a queued job: the envelope, answered 200
    response = error_response(GenerationCanceled("abc"), status_code=200)
    assert response.status_code == 200 and json.loads(response.body)["name"] == "generation_canceled"


@pytest.mark.parametrize("error", [GenerationNotFound("abc"), GenerationCanceled("abc", "gone"),
                                   GenerationFailed("abc", "invalid_parameters", "prompt: empty")])
def test_generation_errors_survive_pickling(error):
    """They may cross a Ray handle (as a cause of the caller's error)."""
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.job_id, copy.name, copy.status_code, str(copy)) == (
        type(error), error.job_id, error.name, error.status_code, str(error))


def test_unexpected_errors_are_500_or_503_when_a_backing_service_is_down():
    assert unexpected_error_response(RuntimeError("bug")).status_code == 500
    response = unexpected_error_response(ConnectionRefusedError("database"))
    assert response.status_code == 503 and response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_S)


def test_the_ingress_returns_the_envelope_at_the_handle_edge():
    """``IngressDeployment`` handle methods: the service raises, the handle caller gets an ErrorBody (the job id as
    its id); an unknown key is ``unauthorized``. Runs the methods without Ray Serve (a stand-in ``self``)."""
    from deployments.ingress import IngressDeployment

    cls = IngressDeployment.func_or_class

    class Service:
        def status(self, job_id, with_content, caller):
            raise GenerationNotFound(job_id)

        def cancel(self, job_id, caller):
            raise GenerationCanceled(job_id)

    class Keys:
        def authenticate(self, key):
            raise Unauthorized("missing or invalid API key")

    class State:
        keys = Keys()

    ingress = SimpleNamespace(service=Service(), state=State())  # not an instance: no replica is started
    ingress._caller, ingress._answer = partial(cls._caller, ingress), partial(cls._answer, ingress)

    async def ask():
        return (await cls.status(ingress, "abc"), await cls.cancel(ingress, "abc"),
                await cls.status(ingress, "abc", api_key="sk-bad"))

    missing, canceled, bad_key = asyncio.run(ask())
    assert missing == ErrorBody(id="abc", name="generation_not_found", errors=["no generation with id 'abc'"])
    assert canceled == ErrorBody(id="abc", name="generation_canceled", errors=["the generation was canceled"])
    assert bad_key == ErrorBody(id="abc", name="unauthorized", errors=["missing or invalid API key"])
