"""Schemathesis against the OpenAPI schema, on a real server: generated requests to every
documented operation, bounded (a fixed number of examples, derandomized so CI is
repeatable), checking that nothing is a 5xx and that every status, content type and body is
one the schema documents."""

from __future__ import annotations

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import ConversationFactory, UserFactory
from tests.integration.conftest import token
from tests.security.live import cluster_of

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EXAMPLES_PER_OPERATION = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    c = cluster_of(tmp_path_factory.mktemp("schemathesis"), servers={"a": "uvicorn"})
    yield c.servers["a"]
    c.stop()


@pytest.fixture
def auth(transactional_db) -> dict[str, str]:
    user, other = UserFactory(), UserFactory()
    ConversationFactory(owner=user, members=[other])
    return {"Authorization": f"Token {token(user)}"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented(case, server, auth):
    case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=10)
