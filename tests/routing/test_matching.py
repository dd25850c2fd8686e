import pytest

from routing.matching import (
    filter_matches,
    filters_match,
    filters_validate,
    message_matches,
    message_types_validate,
)

PAYLOAD = {
    "order": {
        "number": "R104702249",
        "channel": "spree",
        "email": "spree@example.com",
        "totals": {"order": 114.95, "item": "99.95"},
        "placed_on": "2013-07-30T19:19:05Z",
        "tags": ["vip", "eu"],
        "note": "",
        "gift": None,
        "line_items": [{"sku": "SPR-00001"}],
    }
}


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("*", "order:new", True),
        ("order:*", "order:canceled", True),
        ("order:*", "orders:new", False),
        ("order:new", "order:new", True),
        ("order:new", "order:updated", False),
        ("order:update", "order:updated", True),  # an alias stands for its canonical name
        (" Order:New ", "order:new", True),
    ],
)
def test_message_patterns(pattern, message, expected):
    assert message_matches(pattern, message) is expected


@pytest.mark.parametrize(
    ("op", "path", "value", "expected"),
    [
        ("eq", "order.channel", "spree", True),
        ("eq", "order.channel", "amazon", False),
        ("eq", "order.totals.order", "114.95", True),  # numbers and numeric strings compare as numbers
        ("eq", "order.totals.item", 99.95, True),
        ("neq", "order.channel", "amazon", True),
        ("neq", "order.missing", "x", True),
        ("neq", "order.channel", "spree", False),
        ("gt", "order.totals.order", 100, True),
        ("gt", "order.totals.item", "100", False),
        ("lt", "order.totals.item", 100, True),
        ("gt", "order.placed_on", "2013-01-01", True),  # ISO timestamps compare as text
        ("gt", "order.channel", 5, False),
        ("begins", "order.number", "R10", True),
        ("begins", "order.number", "H", False),
        ("ends", "order.email", "@example.com", True),
        ("contains", "order.email", "example", True),
        ("contains", "order.tags", "vip", True),
        ("contains", "order.tags", "us", False),
        ("match", "order.number", r"^R\d{9}$", True),
        ("match", "order.email", r"@spree\.com$", False),
        ("match", "order.totals.order", r"^114\.9", True),  # numbers are matched as their text
        ("match", "order.number", r"(a)\1", False),  # refused by RE2: never matches
        ("eq", "order.line_items.0.sku", "SPR-00001", True),
        ("eq", "order.missing", "x", False),
        ("gt", "order.missing", 1, False),
    ],
)
def test_filter_operators(op, path, value, expected):
    assert filter_matches({"path": path, "op": op, "value": value}, PAYLOAD) is expected


@pytest.mark.parametrize(
    ("op", "path", "expected"),
    [
        ("present", "order.number", True),
        ("present", "order.gift", False),
        ("present", "order.missing", False),
        ("empty", "order.note", True),
        ("empty", "order.gift", True),
        ("empty", "order.missing", True),
        ("empty", "order.tags", False),
    ],
)
def test_presence_operators(op, path, expected):
    assert filter_matches({"path": path, "op": op}, PAYLOAD) is expected


def test_match_reads_any_text_an_endpoint_may_send():
    payload = {"order": {"note": "caf\u00e9 \ud800 ok"}}  # a lone surrogate: json.loads lets it through
    assert filter_matches({"path": "order.note", "op": "match", "value": "^caf\u00e9 .* ok$"}, payload) is True
    assert filter_matches({"path": "order.note", "op": "match", "value": "^nope"}, payload) is False


def test_mode_all_needs_every_filter_and_any_needs_one():
    filters = [
        {"path": "order.channel", "op": "eq", "value": "spree"},
        {"path": "order.currency", "op": "eq", "value": "EUR"},
    ]
    assert filters_match(filters, PAYLOAD, "all") is False
    assert filters_match(filters, PAYLOAD, "any") is True
    assert filters_match([], PAYLOAD, "all") is True
    assert filters_match(None, PAYLOAD, "any") is True


def test_valid_filters_pass_validation():
    filters_validate(
        [
            {"path": "order.channel", "op": "eq", "value": "spree"},
            {"path": "order.gift", "op": "present"},
            {"path": "order.number", "op": "match", "value": "^R"},
            {"path": "order.totals.order", "op": "gt", "value": "10.5"},
        ]
    )
    filters_validate([])
    filters_validate(None)


@pytest.mark.parametrize(
    ("filters", "sentence"),
    [
        ({"path": "a"}, "must be a list"),
        (["order.channel"], "Filter 1 must be an object"),
        ([{"path": "", "op": "eq", "value": 1}], "Filter 1 needs a 'path'"),
        ([{"path": "a..b", "op": "eq", "value": 1}], "no empty parts"),
        ([{"path": "a", "op": "equals", "value": 1}], "must be one of eq, neq"),
        ([{"path": "a", "op": "eq"}], "needs a 'value'"),
        ([{"path": "a", "op": "eq", "value": 1, "vale": 2}], "unknown key(s) vale"),
        ([{"path": "a", "op": "begins", "value": 3}], "needs a string 'value'"),
        ([{"path": "a", "op": "gt", "value": [1]}], "needs a number or a string"),
        ([{"path": "a", "op": "present"}, {"path": "b", "op": "match", "value": "(unclosed"}], "Filter 2 (match)"),
        ([{"path": "a", "op": "match", "value": r"(a)\1"}], "Filter 1 (match) uses a backreference"),
        ([{"path": "a", "op": "match", "value": r"a(?!b)"}], "Filter 1 (match) uses a lookahead"),
        ([{"path": "a", "op": "match", "value": "a" * 501}], "longer than 500 characters"),
    ],
)
def test_invalid_filters_raise_a_sentence(filters, sentence):
    with pytest.raises(ValueError) as excinfo:
        filters_validate(filters)
    assert sentence in str(excinfo.value)
    assert str(excinfo.value).endswith(".")


def test_message_types_validation():
    message_types_validate(["order:new", "shipment:*", "*", "order:update", "stock:change"])
    # None: a subscription that only pulls.
    message_types_validate([])
    for bad, sentence in [
        ("order:new", "must be a list"),
        (None, "must be a list"),
        (["order:new", ""], "Message type 2 must be a non-empty string"),
        (["order new"], "is not a message name"),
        (["*:new"], "is not a message name"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            message_types_validate(bad)
        assert sentence in str(excinfo.value)


@pytest.mark.django_db
def test_subscription_clean_reports_each_bad_field():
    from django.core.exceptions import ValidationError

    from tests.factories import SubscriptionFactory

    sub = SubscriptionFactory.build(
        message_types=["order new"],
        filters=[{"path": "a", "op": "nope"}],
        retry_schedule=[-1],
        timeout_seconds=0,
    )
    with pytest.raises(ValidationError) as excinfo:
        sub.clean()
    assert set(excinfo.value.message_dict) == {"message_types", "filters", "retry_schedule", "timeout_seconds"}
    SubscriptionFactory.build(filters=[{"path": "order.channel", "op": "eq", "value": "spree"}]).clean()
