"""The JSON nesting bound (bridge.core.jsondepth)."""

import pytest

from bridge.core import jsondepth


def nested(levels):
    return "[" * levels + "]" * levels


def test_depth_of_scalars_objects_and_arrays():
    assert jsondepth.depth(5) == 0
    assert jsondepth.depth({}) == 1
    assert jsondepth.depth({"a": [1, {"b": []}]}) == 4


def test_document_at_the_bound_decodes():
    assert jsondepth.decode(nested(32), 32) == jsondepth.decode(nested(32), 100)


def test_document_one_past_the_bound_is_too_deep():
    with pytest.raises(jsondepth.TooDeep):
        jsondepth.decode(nested(33), 32)


@pytest.mark.parametrize("levels", [1200, 5000, 100_000])
def test_far_too_deep_documents_raise_too_deep_not_recursion_error(levels):
    with pytest.raises(jsondepth.TooDeep):
        jsondepth.decode(nested(levels), 32)
    with pytest.raises(jsondepth.TooDeep):
        jsondepth.decode(nested(levels).encode(), 32)


def test_brackets_inside_strings_do_not_count_as_depth():
    text = '{"a": "%s"}' % ("[" * 100)
    assert jsondepth.decode(text, 2) == {"a": "[" * 100}


def test_other_errors_pass_through():
    with pytest.raises(ValueError) as info:
        jsondepth.decode("{nope", 32)
    assert not isinstance(info.value, jsondepth.TooDeep)
