"""A webhook receiver for lift3d that verifies every message (Standard Webhooks) and drops duplicates.

Run it next to the service, then submit with ``"webhook_url": "http://127.0.0.1:8001/hook"`` (a local server needs
``allow_private_webhooks: true``, which ``serve_config.local.yaml`` sets):

    LIFT3D_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 8001

The secret is the one ``lift3d keys create`` printed for the key that submits the jobs.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def make_handler(verifier: Webhook, seen: set[str]):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                event = verifier.verify(body, dict(self.headers))  # signature and timestamp (5 min tolerance)
            except WebhookVerificationError as exc:
                self.send_response(400)
                self.end_headers()
                print(f"rejected: {exc}")
                return
            message_id = self.headers["webhook-id"]
            if message_id not in seen:  # retries carry the same webhook-id: act once
                seen.add(message_id)
                data = event["data"]
                print(f"{event['type']}: {data.get('id')} {data.get('status', '')} {json.dumps(data.get('progress'))}")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    secret = os.environ.get("LIFT3D_WEBHOOK_SECRET")
    if not secret:
        raise SystemExit("set LIFT3D_WEBHOOK_SECRET to the key's whsec_… secret")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(Webhook(secret), set()))
    print(f"listening on http://127.0.0.1:{args.port}/hook")
    server.serve_forever()


if __name__ == "__main__":
    main()
