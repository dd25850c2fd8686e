import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from ops.selectors import subscriptions_failing
from routing.backlog import delivery_due_lag_seconds, delivery_oldest_open, delivery_state_counts


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


class Command(BaseCommand):
    help = "The delivery queue at a glance: deliveries per state, the oldest waiting one, failing subscriptions."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print JSON, for scripts.")
        parser.add_argument("--limit", type=int, default=20, help="Failing subscriptions to list (default 20).")

    def handle(self, *args, as_json: bool, limit: int, **options):
        now = timezone.now()
        counts = delivery_state_counts()
        oldest = delivery_oldest_open(now=now)
        lag = delivery_due_lag_seconds(now=now)
        failing = subscriptions_failing(limit=limit)
        if as_json:
            self.stdout.write(self.json_report(counts, oldest, lag, failing))
            return
        self.stdout.write("Deliveries by state:")
        for state, n in counts.items():
            # "~": PostgreSQL's estimate, for a state holding more than HUB_EXACT_COUNT_LIMIT.
            shown = f"~{n}" if state in counts.estimated else str(n)
            self.stdout.write(f"  {state:<11} {shown:>10}")
        if oldest is None:
            self.stdout.write("Oldest waiting delivery: none")
        else:
            self.stdout.write(
                f"Oldest waiting delivery: #{oldest.delivery_id} to '{oldest.subscription}' ({oldest.state}), "
                f"created {_age(oldest.age_seconds)} ago"
            )
        self.stdout.write(f"Most overdue delivery has been due for: {_age(lag)}")
        if not failing:
            self.stdout.write("Failing subscriptions: none")
            return
        self.stdout.write("Failing subscriptions:")
        for sub in failing:
            status = "enabled" if sub.is_enabled else f"DISABLED ({sub.disabled_reason})"
            last = (
                f", last failure {_age((now - sub.last_failure_at).total_seconds())} ago" if sub.last_failure_at else ""
            )
            self.stdout.write(
                f"  {sub.name}: {sub.failed} failed, {sub.retrying} retrying, {status}{last}  <{sub.url}>"
            )

    @staticmethod
    def json_report(counts, oldest, lag, failing) -> str:
        return json.dumps(
            {
                "deliveries": counts,
                "deliveries_estimated": sorted(counts.estimated),
                "oldest_waiting": None
                if oldest is None
                else {
                    "delivery_id": oldest.delivery_id,
                    "subscription": oldest.subscription,
                    "state": oldest.state,
                    "created_at": oldest.created_at.isoformat(),
                    "age_seconds": round(oldest.age_seconds, 1),
                },
                "due_lag_seconds": round(lag, 1),
                "failing_subscriptions": [
                    {
                        "name": s.name,
                        "url": s.url,
                        "is_enabled": s.is_enabled,
                        "disabled_reason": s.disabled_reason,
                        "failed": s.failed,
                        "retrying": s.retrying,
                        "last_failure_at": s.last_failure_at.isoformat() if s.last_failure_at else None,
                    }
                    for s in failing
                ],
            }
        )
