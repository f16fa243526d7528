"""The HTTP API (FastAPI): nothing here runs jobs; it parses, stores and enqueues through the services below it.

- :mod:`~lift3d.service.api.app`: the app factory (middleware, the error handlers, the routers).
- :mod:`~lift3d.service.api.deps`: what routes receive as dependencies (the caller, the services, the settings).
- :mod:`~lift3d.service.api.errors`: the error envelope as answers; one handler for typed exceptions.
- :mod:`~lift3d.service.api.bodies`, :mod:`~lift3d.service.api.negotiation`, :mod:`~lift3d.service.api.openapi`:
  request bodies, ``Accept`` handling, the hand-written parts of the OpenAPI document.
- :mod:`~lift3d.service.api.auth`, :mod:`~lift3d.service.api.admission`, :mod:`~lift3d.service.api.idempotency`: the
  middleware (API keys, rate and job limits, ``Idempotency-Key``).
- :mod:`lift3d.service.api.routes`: one router per resource.

It never imports the worker (:mod:`lift3d.service.worker`), nor the worker it (``tests/test_architecture.py``).
"""
