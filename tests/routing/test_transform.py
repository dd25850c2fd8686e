"""A subscription's JSONata mapping, run in its own capped process: the mapped document, or an
error that says where and why; a mapping that loops, blows up or builds too much is stopped."""

from __future__ import annotations

import json

import pytest

from routing.transform import TransformError, _Sandbox, transform_run, transform_validate

ORDER = {
    "payload": {"order": {"number": "R1", "totals": {"order": 29.99}, "line_items": [{"sku": "A", "quantity": 2}]}}
}


def test_a_mapping_gives_the_mapped_document():
    expression = """{
        "id": payload.order.number,
        "total": payload.order.totals.order,
        "lines": [payload.order.line_items.{"sku": sku, "qty": quantity}]
    }"""
    assert json.loads(transform_run(expression, ORDER)) == {
        "id": "R1",
        "total": 29.99,
        "lines": [{"sku": "A", "qty": 2}],
    }


@pytest.mark.parametrize(
    "expression",
    [
        # Recursion without end: a function applied to itself.
        "(function($f){$f($f)})(function($g){$g($g)})",
        # One built-in that runs long: no evaluator step to check a clock between.
        '$pad("", 200000000, "x")',
        # A regular expression that backtracks for hours inside one call of the regex engine,
        # which nothing in the evaluating process can interrupt.
        '$contains($pad("", 40, "a") & "!", /^(a+)+$/)',
    ],
)
def test_a_pathological_mapping_is_stopped_at_the_time_limit(expression):
    with pytest.raises(TransformError) as caught:
        transform_run(expression, ORDER, seconds=0.5)
    assert caught.value.stage == "limit"
    assert "longer than 0.5s" in str(caught.value)
    # The next mapping runs in a fresh process and works.
    assert transform_run("payload.order.number", ORDER) == '"R1"'


def test_a_result_over_the_output_limit_is_refused():
    with pytest.raises(TransformError) as caught:
        transform_run('$pad("", 5000, "x")', ORDER, output_max_bytes=1000)
    assert caught.value.stage == "result"
    assert "over the limit of 1000" in str(caught.value)


def test_a_mapping_that_fails_says_where_and_why():
    with pytest.raises(TransformError) as caught:
        transform_run("$sum(payload.order.number)", ORDER)
    error = caught.value
    assert error.stage == "evaluate"
    assert error.code == "T0412"
    assert error.position is not None
    assert "at character" in str(error) and "$sum" in str(error)


def test_a_mapping_that_matches_nothing_or_gives_a_function_is_an_error():
    with pytest.raises(TransformError, match="produced nothing"):
        transform_run("payload.shipment", ORDER)
    with pytest.raises(TransformError, match="not JSON"):
        transform_run("function($x){$x}", ORDER)


def test_a_mapping_sees_no_environment():
    # JSONata has no access to the process's environment or files: nothing to leak.
    with pytest.raises(TransformError):
        transform_run('$env("HUB_ENCRYPTION_KEYS")', ORDER)


def test_validation_reads_the_expression_and_names_the_position():
    transform_validate('{"id": payload.order.number}')
    with pytest.raises(ValueError, match=r"^The transform could not be read at character 15"):
        transform_validate("payload.order.(")
    with pytest.raises(ValueError, match="needs a JSONata expression"):
        transform_validate("  ")


def test_a_mapping_that_needs_too_much_memory_fails_saying_so(settings):
    settings.HUB_TRANSFORM_MEMORY_MAX_BYTES = 256 * 1024 * 1024
    sandbox = _Sandbox()
    try:
        with pytest.raises(TransformError) as caught:
            sandbox.call(
                {"op": "eval", "expression": '$pad("", 400000000, "x")', "input": {}, "max_output": 1000},
                seconds=30,
                read_max=100_000,
                expression='$pad("", 400000000, "x")',
            )
        assert "ran out of memory" in str(caught.value)
        # The process survives its MemoryError and maps the next event.
        answer = sandbox.call(
            {"op": "eval", "expression": "a", "input": {"a": 1}, "max_output": 1000},
            seconds=30,
            read_max=100_000,
            expression="a",
        )
        assert answer["output"] == "1"
    finally:
        sandbox._stop()
