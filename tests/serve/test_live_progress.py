"""Live progress through the Serve proxy: several concurrent event streams on one job, and its signed webhooks
delivered by the consumer replica to a local receiver."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from keyed import HTTP
from standardwebhooks import Webhook

FAST = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 12, "seed": 5}


class Receiver:
    """Webhook receiver on 127.0.0.1: keeps (headers, body) of every POST."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict, bytes]] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                received.append((dict(self.headers), self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def read_events(url: str, job_id: str, out: list) -> None:
    """Follow the job's event stream to its end; appends (event, data) pairs to ``out``."""
    event = None
    with httpx.stream("GET", f"{url}/v1/generation/{job_id}/events", timeout=240,
                      headers={"Authorization": f"Bearer {HTTP.key}"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event is not None:
                out.append((event, json.loads(line.split(":", 1)[1])))


@pytest.mark.slow
def test_concurrent_event_streams_and_signed_webhooks(serve_graph):
    receiver = Receiver()
    response = HTTP.post(f"{serve_graph.url}/v1/generation/text-to-3d", timeout=30,
                         json={"prompt": "a wooden toy robot", "webhook_url": receiver.url, **FAST})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    streams: list[list] = [[], [], []]
    readers = [threading.Thread(target=read_events, args=(serve_graph.url, job_id, out)) for out in streams]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=300)
    for events in streams:  # every stream saw the job through to its terminal event, which ends it
        names = [name for name, _ in events]
        assert names[-1] == "succeeded" and names.count("succeeded") == 1, names
        assert "progress" in names and events[-1][1]["id"] == job_id

    deadline = time.monotonic() + 60  # the consumer delivers due webhooks about once a second
    while time.monotonic() < deadline and not any(b'"generation.completed"' in body for _, body in receiver.messages):
        time.sleep(0.5)
    receiver.server.shutdown()
    verifier = Webhook(_secret(serve_graph))
    types = [verifier.verify(body, headers)["type"] for headers, body in receiver.messages]  # all signed
    assert types[0] == "generation.started" and types[-1] == "generation.completed"
    completed = json.loads(receiver.messages[-1][1])["data"]
    assert completed["id"] == job_id and completed["status"] == "succeeded"
    assert len({headers["webhook-id"] for headers, _ in receiver.messages}) == len(receiver.messages)


def _secret(serve_graph) -> str:
    from lift3d.service.accounts.keys import ApiKeyStore

    return ApiKeyStore(serve_graph.jobs.database).get(serve_graph.key_id).webhook_secret
