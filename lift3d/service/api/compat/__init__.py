"""Adapters that let clients written for other services talk to lift3d: each module is one router that translates a
foreign request shape onto the existing services (:class:`~lift3d.service.jobs.generation.GenerationService` and
the image service) and the answer back — no job system, validation or storage of its own.

- :mod:`~lift3d.service.api.compat.cog`: Cog's ``/predictions`` (the wrapper this recipe comes from).
- :mod:`~lift3d.service.api.compat.replicate`: Replicate's ``/v1/models/{owner}/{name}/predictions`` and
  ``/v1/predictions/{id}``.
- :mod:`~lift3d.service.api.compat.files`: the signed download URLs the adapters hand out.
- :mod:`~lift3d.service.api.compat.openai`, :mod:`~lift3d.service.api.compat.stability`: OpenAI images and
  Stability v2beta.
- :mod:`~lift3d.service.api.compat.common`: what they share (the caller and services as dependencies, error parts,
  signed URLs).
"""
