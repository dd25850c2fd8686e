"""The forms an endpoint's reply takes across the Spree hub's protocol generations (PROTOCOL §3),
read the same way: the newer generation's `summary` (one sentence about what the endpoint did)
and `parameters` as an object ({"name": value}) beside the older list of {"name", "value"}. And
the rule by which returned parameters are merged into a subscription's, shared by the pump (the
next request of the batch carries them) and the recording of the reply (which stores them).

Pure functions: no ORM, nothing sent."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings

# A summary is a sentence; an endpoint that sends a page of text has it cut here.
SUMMARY_MAX_CHARS = 500


class ParametersRefused(ValueError):
    """The parameters a reply returned would make the subscription's too many or too large."""


def reply_summary(reply: Any) -> str:
    """The reply's `summary` when it is a string, trimmed and cut at SUMMARY_MAX_CHARS; else ""."""
    if not isinstance(reply, Mapping):
        return ""
    summary = reply.get("summary")
    if not isinstance(summary, str):
        return ""
    summary = " ".join(summary.split())
    return summary if len(summary) <= SUMMARY_MAX_CHARS else summary[: SUMMARY_MAX_CHARS - 1] + "…"


def attempt_summary(*, reply: Any, succeeded: bool, status_code: int | None, response_body: str) -> str:
    """The summary an attempt's reply gave: from the parsed reply of a success, or from the kept
    body of a refusal (the newer generation explains a 500 in its `summary`). The body kept is
    already cut to HUB_RESPONSE_BODY_MAX_CHARS, so reading it costs little; one cut mid-JSON
    gives no summary."""
    if succeeded:
        return reply_summary(reply)
    if status_code is None or not response_body.lstrip().startswith("{"):
        return ""
    try:
        return reply_summary(json.loads(response_body))
    except (ValueError, RecursionError):
        return ""


def parameters_returned(value: Any) -> list[Any] | None:
    """A reply's `parameters` as the list form: a list as sent, an object as one {"name", "value"}
    per key, in its order; None when there are none or it is neither. An object of exactly a
    string `name` and a `value` is one parameter of the list form sent without its brackets."""
    if isinstance(value, list):
        return value or None
    if isinstance(value, Mapping):
        if set(value) == {"name", "value"} and isinstance(value["name"], str):
            return [dict(value)]
        return [{"name": name, "value": item} for name, item in value.items()] or None
    return None


def parameters_merged(current: Sequence[Any], returned: Sequence[Any]) -> list[dict[str, Any]]:
    """Returned parameters replace those of the same name and add new ones; the rest stay. An
    item without a non-empty string name is skipped.

    Every later delivery to the endpoint carries them all, so a merge that would leave more than
    HUB_MAX_PARAMETERS of them, or more than HUB_MAX_PARAMETERS_BYTES of JSON, is refused whole
    (ParametersRefused, saying which) unless it changes nothing."""
    merged: dict[str, Any] = {}
    for item in [*current, *returned]:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
            merged[item["name"]] = item.get("value")
    result = [{"name": name, "value": value} for name, value in merged.items()]
    if result != list(current):
        _parameters_check(result, returned=len(returned))
    return result


def _parameters_check(parameters: list[dict[str, Any]], *, returned: int) -> None:
    limit = settings.HUB_MAX_PARAMETERS
    if len(parameters) > limit:
        raise ParametersRefused(
            f"With the {returned} parameters this reply returned the subscription would hold {len(parameters)}; "
            f"at most {limit} are kept (HUB_MAX_PARAMETERS). Nothing of the reply's parameters was stored."
        )
    size = len(json.dumps(parameters, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    limit = settings.HUB_MAX_PARAMETERS_BYTES
    if size > limit:
        raise ParametersRefused(
            f"With the {returned} parameters this reply returned the subscription's parameters would take "
            f"{size} bytes of JSON; at most {limit} are kept (HUB_MAX_PARAMETERS_BYTES), and every delivery "
            "carries them. Nothing of the reply's parameters was stored."
        )


def reply_returns_parameters(*, succeeded: bool, reply: Any) -> bool:
    """Whether a reply returned parameters to merge (a failed attempt's reply is not read)."""
    return succeeded and isinstance(reply, Mapping) and parameters_returned(reply.get("parameters")) is not None


def parameters_after_reply(current: Sequence[Any], *, succeeded: bool, reply: Any) -> list[Any]:
    """What the endpoint's next request carries after this reply: the current parameters merged
    with those a successful reply returned, or the current ones when it returned none or its
    merge is refused (the recording of the reply says why)."""
    if not reply_returns_parameters(succeeded=succeeded, reply=reply):
        return list(current)
    returned = parameters_returned(reply.get("parameters")) or []
    try:
        return parameters_merged(current, returned)
    except ParametersRefused:
        return list(current)


# --- Summaries beside the event's notifications (the admin's event page, GET /events/<id>) -----


@dataclass(frozen=True)
class SummaryNote:
    """An attempt's summary as the event's notifications show it."""

    level: str
    subject: str
    description: str
    created_at: datetime
    subscription: str


def summary_notes(attempts: Iterable[tuple[str, Any]]) -> list[SummaryNote]:
    """One note per attempt that brought a summary, given as (subscription name, attempt), oldest
    first: info for a delivered attempt, warn for a failed one (it says why it failed)."""
    notes = []
    for subscription, attempt in attempts:
        if not attempt.summary:
            continue
        status = f"HTTP {attempt.status_code}" if attempt.status_code is not None else "no answer"
        notes.append(
            SummaryNote(
                level="info" if attempt.succeeded else "warn",
                subject=attempt.summary[:200],
                description=f"Summary of attempt {attempt.number} to {subscription} ({status}): {attempt.summary}",
                created_at=attempt.started_at,
                subscription=subscription,
            )
        )
    notes.sort(key=lambda note: note.created_at)
    return notes
