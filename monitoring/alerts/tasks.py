"""django-q2 task functions for alerts: thin wrappers, enqueued by path.

django-q2 runs a task at least once (a killed worker's task runs again);
``deliver`` claims its row with a compare-and-set, so a second run of the
same task sends nothing.
"""

from __future__ import annotations

from datetime import datetime

from monitoring.alerts import delivery


def deliver(delivery_id: int, at: datetime | None = None) -> str:
    """Make one attempt at one alert delivery; return its status afterwards."""
    return delivery.deliver(delivery_id, at)
