"""Request and response bodies of the service (pydantic, strict types: ``"10"`` is not a valid ``k``).

The response models document what the service answers (OpenAPI at ``/openapi.json``); the handlers write
their JSON directly, and ``tests/integration/test_serving_openapi.py`` checks the two agree.

No ``from __future__ import annotations`` here: pydantic resolves these annotations eagerly."""

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, WithJsonSchema,
                      model_validator)

MAX_ID_CHARS = 256  # a longer string id is a 422: ids are echoed in answers and written to the request log
MAX_PATH_CHARS = 4096
INT64 = (-(2 ** 63), 2 ** 63 - 1)  # the range of the bundles' integer ids


def _bounded_id(value: Union[int, str]) -> Union[int, str]:
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise ValueError(f"an id has at most {MAX_ID_CHARS} characters (got {len(value)})")
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise ValueError("an integer id must fit in 64 bits")
    return value


# one error naming the limit (a constraint per union member would give two errors, one per member)
RawId = Annotated[Union[StrictInt, StrictStr], AfterValidator(_bounded_id), WithJsonSchema({"anyOf": [
    {"type": "integer", "format": "int64"}, {"type": "string", "maxLength": MAX_ID_CHARS}]})]
Int64 = Annotated[StrictInt, Field(ge=INT64[0], le=INT64[1]), WithJsonSchema({"type": "integer", "format": "int64"})]
AnyId = Union[int, str]  # ids in answers: the catalogue's own


class RecommendRequest(BaseModel):
    # exactly one of user and history (the validator below; the schema says it with oneOf)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["user"]},
                                                                           {"required": ["history"]}]})

    user: Optional[RawId] = Field(None, description="raw user id (integer or string); unknown users get popular "
                                                    "items. Give user or history, not both")
    history: Optional[list[RawId]] = Field(None, description="a session instead of a user: raw item ids, oldest "
                                           "first (at most --max-history-items, 400 otherwise); unknown ids are "
                                           "dropped and counted, no known id gets popular items. Sequential, "
                                           "item-item and autoencoder models answer it (400 for others)")
    k: Int64 = Field(10, description="number of items, 1..n_items (400 otherwise)")
    exclude_seen: StrictBool = Field(True, description="leave out items the user interacted with in training")
    allow_items: Optional[list[RawId]] = Field(None, description="recommend only among these item ids (at most "
                                                                 "--max-list-items ids, 400 otherwise)")
    deny_items: Optional[list[RawId]] = Field(None, description="never recommend these item ids (at most "
                                                                "--max-list-items ids, 400 otherwise)")
    time: Optional[Int64] = Field(None, description="when the user asks, in Unix seconds (default: now): a model that "
                                  "reads the interaction's context (data.context_columns) scores the request in the "
                                  "hour and weekday of this time; other models ignore it")
    explain: StrictBool = Field(False, description="also say why each item was recommended (slower: off by default)")
    n_reasons: Int64 = Field(5, description="with explain: the most reasons per item, 1..100 (400 otherwise)")

    @model_validator(mode="after")
    def _user_or_history(self) -> "RecommendRequest":
        if (self.user is None) == (self.history is None):
            given = "both" if self.user is not None else "neither"
            raise ValueError(f"give exactly one of user (a user id) or history (a list of item ids); got {given}")
        return self


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Optional[StrictStr] = Field(None, max_length=MAX_ID_CHARS,
                                       description="models:/<name>@<alias>, models:/<name>/<v> or runs:/<id>/model")
    run_id: Optional[StrictStr] = Field(None, max_length=MAX_ID_CHARS)
    bundle: Optional[StrictStr] = Field(None, max_length=MAX_PATH_CHARS, description="a bundle directory")


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: RawId = Field(description="the new item's raw id (integer or string), not in the catalogue yet")
    features: dict[str, Any] = Field(description="raw column -> raw value, as a row of the training item feature "
                                     "file holds them: every column the declared item features read (data.item_columns"
                                     "), and no other")


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, description="the new items (at most --max-list-items, 400 otherwise); "
                                 "all are added, or none")


class Reason(BaseModel):
    item: Optional[AnyId] = Field(None, description="a history item (raw id), for methods whose reasons are items")
    feature: Optional[str] = Field(None, description="a variable (user_id, item_id or a feature), for feature "
                                                     "methods")
    weight: float = Field(description="the reason's weight: its term of the score for exact methods")
    position: Optional[int] = Field(None, description="sequential methods: the item's place back from the user's "
                                                      "latest item (1 = the latest)")


class ItemExplanation(BaseModel):
    item: AnyId
    reasons: list[Reason] = Field(description="the strongest reasons, best first (none for a fallback item)")
    rest: Optional[float] = Field(None, description="exact methods: the score's part no reason carries (biases, "
                                                    "the user's own vector)")


class Explanation(BaseModel):
    method: str = Field(description="how the reasons were found, e.g. item_weights, item_similarity, "
                                    "attention_rollout, fm_terms; popularity_fallback for an unknown user")
    exact: bool = Field(description="the weights of all reasons plus rest add up to the score")
    note: str = Field(description="one sentence: what the weights are, or why there are none")
    items: list[ItemExplanation] = Field(description="one per recommended item, in the same order")


class RecommendResponse(BaseModel):
    user: Optional[AnyId] = Field(description="the request's user; null for a history request")
    items: list[AnyId]
    scores: list[float] = Field(description="the model's scores, highest first; with fallback true, the items' "
                                            "training interaction counts (another scale)")
    fallback: bool = Field(description="true for an unknown user or a history with no known item: the most popular "
                                       "items, scored by their training interaction counts, not by the model")
    unknown_history_items: Optional[int] = Field(None, description="history requests only: how many of the "
                                                 "history's ids are not in the catalogue (dropped)")
    model_id: str
    run_id: Optional[str]
    model_version: Optional[str]
    explanation: Optional[Explanation] = Field(None, description="only with explain: true")


class SimilarItemsResponse(BaseModel):
    item: AnyId = Field(description="the item id as the catalogue holds it (an integer for integer ids)")
    items: list[AnyId]
    scores: list[float]
    similarity: Literal["item_vectors", "score_columns"]
    model_id: str
    run_id: Optional[str]
    model_version: Optional[str]


class ModelSource(BaseModel):
    uri: str
    model_id: str
    run_id: Optional[str]
    name: Optional[str]
    model_version: Optional[str]


class ModelInfo(ModelSource):
    n_users: int
    n_items: int
    similar_items_from: Literal["item_vectors", "score_columns"]
    score_cache: bool
    retrieval: str = Field(description="how known users are ranked: exact, or ann:<kind> through the bundle's ANN "
                                       "index (catalogues of at least --ann-min-items items)")
    rerank: Optional[str] = Field(None, description="the re-ranker applied to known users' lists (the run's), or null")
    loaded_at: float
    added_items: int = Field(description="items added with POST /admin/items since the model was loaded (a reload "
                                         "drops them)")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: ModelInfo
    reloading: bool
    last_reload_error: Optional[str]


class ReloadAccepted(BaseModel):
    status: Literal["reloading"]
    source: str
    serving: ModelSource = Field(description="the model serving until the new one is loaded")


class ReloadDone(BaseModel):
    status: Literal["ok"]
    serving: ModelSource


class ItemsAdded(BaseModel):
    status: Literal["ok"]
    items: list[AnyId] = Field(description="the added ids as the catalogue holds them")
    n_items: int = Field(description="the catalogue's size now")
    added_items: int = Field(description="all items added since the model was loaded")
    serving: ModelSource


class ErrorResponse(BaseModel):
    detail: str = Field(description="one line: what is wrong and how to fix it")


class ErrorLocation(BaseModel):
    loc: list[Union[str, int]]
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[ErrorLocation]
