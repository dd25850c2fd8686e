"""Local endpoints that behave as the Spree hub's endpoints did, written from the open-source
endpoint_base library they were built on (flowlink/endpoint_base and its forerunners), to plug
into tests.live.Subscriber with `respond_with`.

- The older generation read `{message_id, payload}` and its config from `payload.parameters`
  (a list of `{name, value}`), answering with `message_id`.
- The newer one reads `request_id`, the object under its own key and `parameters` as an object,
  and answers with `request_id` and a `summary`.

Both parse a body and check the endpoint key (`X-Hub-Token`) on POST only; any other method finds
no route (Sinatra's 404); a body that is not JSON is a 406.
"""

from __future__ import annotations

import json
from typing import Any

from tests.live import Received, Reply


def _checked(received: Received, key: str | None) -> tuple[Reply | None, Any]:
    if received.method != "POST":
        return Reply(404, body=b"<h1>Not Found</h1>", headers={"Content-Type": "text/html"}), None
    headers = {k.lower(): v for k, v in received.headers.items()}
    if key is not None and headers.get("x-hub-token") != key:
        return Reply(401, json={"text": "unauthorized"}), None
    try:
        return None, json.loads(received.body)
    except ValueError:
        return Reply(406, body=b""), None


def older_endpoint(key: str | None = None):
    """An endpoint of the older generation: acknowledges `message_id`, echoes its config."""

    def respond(received: Received) -> Reply:
        refusal, body = _checked(received, key)
        if refusal is not None:
            return refusal
        config = {p["name"]: p["value"] for p in body["payload"].get("parameters") or []}
        return Reply.ok(message_id=body["message_id"], config=config)

    return respond


def newer_endpoint(key: str | None = None, object_name: str = "order", **reply: Any):
    """An endpoint of the newer generation (a route such as `/add_order`): answers with the
    request_id and a summary naming the object it read; `reply` adds what else it returns."""

    def respond(received: Received) -> Reply:
        refusal, body = _checked(received, key)
        if refusal is not None:
            return refusal
        item = body.get(object_name)
        if not isinstance(item, dict) or not isinstance(body.get("parameters"), dict):
            return Reply(500, json={"request_id": body.get("request_id"), "summary": f"no {object_name} object"})
        summary = f"{object_name.capitalize()} {item.get('number') or item.get('id')} received"
        return Reply.ok(request_id=body["request_id"], summary=summary, **reply)

    return respond
