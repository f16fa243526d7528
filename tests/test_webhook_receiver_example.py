"""examples/webhook_receiver.py accepts what the service signs, refuses a tampered body, acts once per webhook-id."""

import importlib.util
import json
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx

from lift3d.service.webhooks.sender import sign

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "webhook_receiver.py"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_example_receiver_verifies_and_deduplicates(capsys):
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from standardwebhooks import Webhook

    server = ThreadingHTTPServer(("127.0.0.1", 0), module.make_handler(Webhook(SECRET), set()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    body = json.dumps({"type": "generation.completed", "timestamp": "2026-12-03T00:00:00Z",
                       "data": {"id": "a" * 32, "status": "succeeded"}})
    headers = sign("msg_1", body, SECRET, time.time())
    codes = [httpx.post(url, content=body, headers=headers).status_code for _ in range(2)]  # a retry: same id
    tampered = httpx.post(url, content=body.replace("succeeded", "failed"), headers=headers).status_code
    server.shutdown()
    assert codes == [204, 204] and tampered == 400
    printed = capsys.readouterr().out
    assert printed.count("generation.completed: " + "a" * 32 + " succeeded") == 1
    assert "rejected" in printed
