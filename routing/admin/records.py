"""Rows that are records of what happened (events, deliveries, attempts): the admin shows them and
operates on them through actions, but never adds, edits or deletes one by hand."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnlyRecords:
    """Mixed into a ModelAdmin or an inline; `obj` is optional to fit both signatures."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
