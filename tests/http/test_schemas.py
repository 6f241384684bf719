"""Request bodies: the compiled check (jsonschema-rs) lets through exactly what jsonschema,
the reference, accepts, and a refusal is worded by jsonschema."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from tether.errors import TetherError
from tether.http import schemas

BODIES = [
    (schemas.V1_CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    (schemas.V1_CHAT, {"model": "m", "messages": []}),
    (schemas.V1_CHAT, {"model": "m", "messages": [{"content": "no role"}]}),
    (schemas.V1_CHAT, {"model": "", "messages": [{"role": "user"}]}),
    (schemas.V1_CHAT, {"model": "m", "messages": [{"role": "user"}], "stream": "yes"}),
    (schemas.V1_CHAT, ["not", "an", "object"]),
    (schemas.V1_EMBEDDING, {"model": "m", "input": ["a", "b"]}),
    (schemas.V1_EMBEDDING, {"model": "m", "input": 3}),
    (schemas.RESULT_FINAL, {"status": 200, "body": {"deep": [[[[1.5]]]]}}),
    (schemas.RESULT_FINAL, {"status": 200.0}),  # an integer in JSON Schema's sense
    (schemas.RESULT_FINAL, {"status": True}),
    (schemas.RESULT_FINAL, {"status": 10**30}),
    (schemas.RESULT_CHUNKS, {"chunks": [{"data": "x"}, {"done": True}]}),
    (schemas.RESULT_CHUNKS, {"chunks": [{}]}),
    (schemas.REGISTER, {"providers": [{"name": "ok-name", "type": "t", "model": "m"}]}),
    (schemas.REGISTER, {"providers": [{"name": "-bad", "type": "t", "model": "m"}]}),
    # Python's `$` matches before a final newline, the compiled check's does not: the
    # reference's verdict stands.
    (schemas.REGISTER, {"providers": [{"name": "name\n", "type": "t", "model": "m"}]}),
    (schemas.HEARTBEAT, {"providerSessionId": "s" * 129}),
]


@pytest.mark.parametrize("schema, body", BODIES)
def test_validate_accepts_what_jsonschema_accepts(schema, body):
    reference = Draft202012Validator(schema)
    if reference.is_valid(body):
        assert schemas.validate(schema, body) is body
        return
    with pytest.raises(TetherError) as refused:
        schemas.validate(schema, body)
    error = refused.value
    assert error.status == 400 and error.code == "invalid_request"
    assert error.message.split(": ", 1)[1] in {e.message for e in reference.iter_errors(body)}
