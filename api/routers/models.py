"""The models the workers load (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.auth import Caller, require
from api.deps import SettingsDep, StoreDep
from asr.profiles import available_profiles
from pipeline.language_model import current_lm_spec
from pipeline.models import current_spec

router = APIRouter(tags=["admin"])


@router.get("/v1/models", summary="The model the workers load")
def models(store: StoreDep, s: SettingsDep,
           _: Annotated[Caller, Depends(require("admin"))]) -> dict[str, Any]:
    # the registry's current model (minyin models promote), else MINYIN_MODEL
    return {"model": current_spec(store, s), "default_model": s.model,
            # the character LM for rescoring and correction (minyin lm promote)
            "language_model": current_lm_spec(store, s),
            "default_language_model": s.lm,
            "device": s.device, "compute_type": s.compute_type,
            "batch_size": s.batch_size, "beam_size": s.beam_size,
            "dialects": available_profiles()}
