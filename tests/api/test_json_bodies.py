"""The plain serving routes decode JSON bodies exactly as FastAPI's body parameters do."""

from __future__ import annotations

import json
import math

import pytest

from service.api.serving_deps import _loads


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user": "u1", "items": ["i1", "i2"]}',
        b'{"history": [{"item": "i\\u00e9", "rating": 4.5}, {"item": "x", "rating": null}]}',
        b'  {"a": [1, -0.0, 1e-7, 12345678901234567, true, false, null, "\\ud83d\\ude00"]} ',
        b'{"a": 1, "a": 2}',
        b"[]",
    ],
)
def test_a_document_decodes_to_what_json_reads(raw: bytes) -> None:
    assert _loads(raw) == json.loads(raw)


def test_what_only_json_reads_is_still_read_by_it() -> None:
    lenient = _loads(b'{"rating": NaN, "big": 123456789012345678901234567890}')
    assert math.isnan(lenient["rating"])
    assert lenient["big"] == 123456789012345678901234567890
    assert _loads('{"user": "u"}'.encode("utf-16")) == {"user": "u"}


@pytest.mark.parametrize("raw", [b'{"user": "u", "items": [}', b"", b"{'a': 1}", b'{"a": 1'])
def test_malformed_json_raises_jsons_own_error(raw: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    with pytest.raises(json.JSONDecodeError) as found:
        _loads(raw)
    assert (type(found.value), found.value.msg, found.value.pos) == (
        json.JSONDecodeError,
        expected.value.msg,
        expected.value.pos,
    )
