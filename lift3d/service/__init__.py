"""The service without Ray: the HTTP API, the jobs, the accounts that pay for them, webhooks and the worker side.

Rooms (``docs/CONTRACTS.md``, "Inside service/"): :mod:`~lift3d.service.api` (HTTP only),
:mod:`~lift3d.service.jobs` (generation jobs and image calls, HTTP-free), :mod:`~lift3d.service.accounts` (caller,
keys, credits), :mod:`~lift3d.service.webhooks`, :mod:`~lift3d.service.worker` (queue consumption, the job runner),
:mod:`~lift3d.service.db`. ``api`` and ``worker`` never import each other.
"""
