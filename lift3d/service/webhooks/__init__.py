"""Signed webhooks (Standard Webhooks) sent through an outbox table:

- :mod:`lift3d.service.webhooks.urls` — which URLs may receive them (scheme, credentials, the SSRF address rules);
- :mod:`lift3d.service.webhooks.events` — the events of a job's transitions and their payloads, inserted into the
  outbox inside the job store's transactions (:class:`~lift3d.service.webhooks.events.WebhookEvents`);
- :mod:`lift3d.service.webhooks.sender` — signing, the HTTP POST, and the delivery loop with backoff.
"""
