"""``deployments.lazy_receive.LazyReceive`` against Ray Serve's own per-request receive proxy (issue 23, poll cost):
a request that never reads its body makes no call to the proxy actor; one that reads gets its body as before."""

import asyncio
import pickle

from ray.serve._private.common import RequestMetadata
from ray.serve._private.http_util import ASGIReceiveProxy

from deployments.lazy_receive import LazyReceive

SCOPE = {"type": "http", "method": "POST", "path": "/v1/x", "headers": []}


def _serve_request(app, fetches: list[str]) -> list[dict]:
    """Run ``app`` the way a Serve replica does (``ray/serve/_private/replica.py``: ``_call_http_entrypoint``): the
    receive proxy's fetch task is started before the app is called. Returns the messages the app sent."""
    batches = [[{"type": "http.request", "body": b"abc", "more_body": False}], [{"type": "http.disconnect"}]]

    async def fetch_from_proxy(metadata) -> bytes:  # stands in for ProxyActor.receive_asgi_messages.remote
        fetches.append(metadata.request_id)
        return pickle.dumps(batches.pop(0))

    async def main() -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        receive = ASGIReceiveProxy(SCOPE, RequestMetadata(request_id="r1", internal_request_id="i1"),
                                   fetch_from_proxy)
        fetching = asyncio.create_task(receive.fetch_until_disconnect())
        await LazyReceive(app)(SCOPE, receive, send)
        fetching.cancel()
        return sent

    return asyncio.run(main())


async def _answer(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_request_that_never_reads_its_body_makes_no_call_to_the_proxy():
    async def poll(scope, receive, send):
        for _ in range(5):
            await asyncio.sleep(0)  # a database read in a worker thread: the loop runs other tasks meanwhile
        await _answer(send, b"queued")

    fetches = []
    sent = _serve_request(poll, fetches)
    assert fetches == []
    assert [m.get("status") or m.get("body") for m in sent] == [200, b"queued"]


def test_a_request_that_reads_its_body_gets_it_from_the_proxy():
    async def echo(scope, receive, send):
        await asyncio.sleep(0)
        message = await receive()
        await _answer(send, message["body"][::-1])

    fetches = []
    sent = _serve_request(echo, fetches)
    assert fetches[:1] == ["r1"]  # then again, for the disconnect
    assert sent[1]["body"] == b"cba"


def test_a_plain_receive_passes_through():
    async def receive():
        return {"type": "http.request", "body": b"xy", "more_body": False}

    async def echo(scope, receive, send):
        await _answer(send, (await receive())["body"])

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(LazyReceive(echo)(SCOPE, receive, send))
    assert sent[1]["body"] == b"xy"
