"""What a key has made, for the playground's history panel and for clients: Replicate-style listing.

- ``GET /v1/generations?limit=N`` → ``{"results": [GenerationSummary…]}``, the caller's newest generations first
  (a key sees only its own; the local principal sees all).
- ``GET /v1/generation/{id}/artifacts`` → ``{"artifacts": [{"name", "url"}]}``: a succeeded job's artifacts, or
  while it runs those already written that show its progress (``input.png``, ``views/…``), so a page can show the
  prepared input and the novel views as they arrive.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lift3d.service.api.deps import Caller, Generations
from lift3d.service.jobs.generation import visible_to
from lift3d.service.schemas import Artifact, ErrorBody

__all__ = ["ArtifactList", "GenerationList", "GenerationSummary", "router"]

router = APIRouter()


class GenerationSummary(BaseModel):
    """One generation in a listing."""

    id: str
    kind: str = Field(description="image-to-3d, text-to-3d, multiview or views-to-3d.")
    status: Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]
    stage: str | None = None
    prompt: str | None = Field(None, description="The prompt of a prompt job.")
    seed: int | None = None
    created_at: float = Field(description="Seconds since the epoch.")
    finished_at: float | None = None


class GenerationList(BaseModel):
    results: list[GenerationSummary]


class ArtifactList(BaseModel):
    artifacts: list[Artifact]


@router.get("/v1/generations", summary="The caller's newest generations", response_model=GenerationList,
            responses={401: {"model": ErrorBody, "description": "Missing or invalid API key."},
                       422: {"model": ErrorBody, "description": "`limit` is not an integer in 1..100."}})
async def list_generations(caller: Caller, service: Generations,
                           limit: int = Query(20, ge=1, le=100)) -> JSONResponse:
    records = await asyncio.to_thread(service.jobs.recent, visible_to(caller), limit)
    results = [GenerationSummary(id=r.id, kind=r.kind, status=r.status, stage=r.stage, prompt=r.params.prompt,
                                 seed=r.params.seed, created_at=r.created_at, finished_at=r.finished_at)
               for r in records]
    return JSONResponse(GenerationList(results=results).model_dump())


@router.get("/v1/generation/{id}/artifacts", summary="Artifacts written so far", response_model=ArtifactList,
            responses={404: {"model": ErrorBody, "description": "No such generation."},
                       410: {"model": ErrorBody, "description": "Canceled, or its results expired."}})
async def list_artifacts(id: str, caller: Caller, service: Generations) -> JSONResponse:
    names = await asyncio.to_thread(service.artifact_names, id, caller)
    # the one URL rule (lift3d.service.jobs.artifacts); presigning may read the store's credentials: a thread
    artifacts = await asyncio.to_thread(lambda: [Artifact(name=name, url=service.artifact_urls(id, name))
                                                 for name in names])
    return JSONResponse(ArtifactList(artifacts=artifacts).model_dump())
