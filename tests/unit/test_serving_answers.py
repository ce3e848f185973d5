"""What a client reads in the service's answers: ``/similar-items`` names the item with the catalogue's id type,
the OpenAPI document says what fallback scores are, and ``recforge-serve --help`` shows the default port."""

from __future__ import annotations

import numpy as np

from recforge.serving.app import create_app
from recforge.serving.cli import build_parser
from recforge.serving.service import Service
from tests.unit.test_serving_app import call, running, served
from tests.unit.test_serving_core import make_bundle


def test_similar_items_answers_the_item_as_the_catalogue_holds_it(tmp_path):
    make_bundle(tmp_path / "int", np.arange(10, 30), np.arange(500, 540))
    make_bundle(tmp_path / "str", [f"u{i}" for i in range(20)], np.array([f"{i:03d}" for i in range(40)]))
    with running(Service(served(tmp_path / "int" / "model"))) as base:
        status, body, _ = call(f"{base}/similar-items/505?k=3")
    assert status == 200 and body["item"] == 505 and all(isinstance(i, int) for i in body["items"])
    with running(Service(served(tmp_path / "str" / "model"))) as base:
        status, body, _ = call(f"{base}/similar-items/005?k=3")
    assert status == 200 and body["item"] == "005"  # string ids stay strings, leading zeros and all


def test_openapi_says_fallback_scores_are_interaction_counts(tmp_path):
    make_bundle(tmp_path, np.arange(10, 30), np.arange(500, 540))
    model = served(tmp_path / "model")
    items, scores, fallback = model.recommend("nobody", k=3)
    popularity = model.bundle.popularity
    assert fallback and scores == sorted(popularity, reverse=True)[:3]  # raw counts, as documented
    schema = create_app(Service(model)).openapi()["components"]["schemas"]["RecommendResponse"]["properties"]
    assert "interaction counts" in schema["fallback"]["description"]
    assert "interaction counts" in schema["scores"]["description"]


def test_help_shows_the_default_port():
    assert "default 8000" in " ".join(build_parser().format_help().split())
