"""The service answers what its OpenAPI document says: schemathesis generates requests from ``/openapi.json``
(valid and invalid bodies, path and query values, for every operation including the admin ones) against
the app in process, and checks each answer: no 5xx, a documented status code, the documented content type
and a body that validates against the documented schema."""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from recforge.serving.app import ServiceMiddleware, create_app
from recforge.serving.service import Service
from recforge.serving.core import ServedModel
from recforge.serving.registry import ModelRef
from recforge.tracking.bundle import Bundle
from tests.unit.test_serving_app import AUTH
from tests.unit.test_serving_core import make_bundle

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    make_bundle(tmp, np.arange(10, 30), np.arange(500, 540))
    model = ServedModel(Bundle.load(tmp / "model"), ModelRef(str(tmp / "model")))
    # reloads of generated run ids and registry names look them up in an empty store of this test's own
    service = Service(model, tracking_uri=f"sqlite:///{tmp}/mlflow.db", max_list_items=20)
    token = AUTH["Authorization"].removeprefix("Bearer ")
    return schemathesis.openapi.from_asgi("/openapi.json", ServiceMiddleware(create_app(service, token), service))


OPERATIONS = [("POST", "/recommend", mode) for mode in GenerationMode] + [
    ("GET", "/similar-items/{item_id}", mode) for mode in GenerationMode] + [
    ("POST", "/admin/reload", mode) for mode in GenerationMode] + [
    ("POST", "/admin/items", mode) for mode in GenerationMode] + [
    ("GET", "/health", GenerationMode.POSITIVE), ("GET", "/metrics", GenerationMode.POSITIVE)]  # no input to negate


@pytest.mark.parametrize("method,path,mode", OPERATIONS)
def test_every_answer_conforms_to_the_openapi_document(api, method, path, mode):
    """Per operation and mode (valid or invalid input), a bounded number of generated requests; no example
    database is written."""

    @given(case=api[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def answer_conforms(case) -> None:
        case.call_and_validate(headers={"Authorization": AUTH["Authorization"]}, checks=CHECKS)

    answer_conforms()


def test_the_document_covers_every_route_and_status(api):
    doc = api.raw_schema
    assert set(doc["paths"]) == {"/recommend", "/similar-items/{item_id}", "/health", "/metrics", "/admin/reload",
                                 "/admin/items"}
    statuses = {path: set(op["responses"]) for path, ops in doc["paths"].items() for op in ops.values()}
    assert statuses["/recommend"] == {"200", "400", "413", "422"}
    assert statuses["/similar-items/{item_id}"] == {"200", "400", "404", "413", "422"}
    assert statuses["/admin/reload"] == {"200", "202", "400", "401", "403", "409", "413", "415", "422"}
    assert statuses["/admin/items"] == {"200", "400", "401", "403", "409", "413", "415", "422"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
