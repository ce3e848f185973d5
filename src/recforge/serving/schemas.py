"""Request bodies of the service (pydantic, strict types: ``"10"`` is not a valid ``k``).

No ``from __future__ import annotations`` here: pydantic resolves these annotations eagerly."""

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

RawId = Union[StrictInt, StrictStr]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: RawId = Field(description="raw user id (integer or string); unknown users get popular items")
    k: StrictInt = Field(10, description="number of items, 1..n_items")
    exclude_seen: StrictBool = Field(True, description="leave out items the user interacted with in training")
    allow_items: Optional[list[RawId]] = Field(None, description="recommend only among these item ids")
    deny_items: Optional[list[RawId]] = Field(None, description="never recommend these item ids")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, description="models:/<name>@<alias>, models:/<name>/<v> or runs:/<id>/model")
    run_id: Optional[str] = None
    bundle: Optional[str] = None
