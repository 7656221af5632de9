"""The domain's tables: masters and everything that happens to them.

State that changes over time is a row (HealthCheck, FailoverEvent, Event),
and every state change writes an ``Event`` in the same transaction.
"""

from masters.models.api import ApiToken
from masters.models.dispatch import DispatcherNode
from masters.models.events import AlertRecipient, Event, EventQuerySet
from masters.models.failover import FailoverEvent
from masters.models.health import HealthCheck, HealthRollup, LoadMetric, ProberLease
from masters.models.master import API_VERSION_RE, CLOUD_API_DEFAULT_URL, Master, RuntimeSettings
from masters.models.queue import ConversationAffinity, IdempotencyKey, Message

__all__ = [
    "API_VERSION_RE",
    "CLOUD_API_DEFAULT_URL",
    "AlertRecipient",
    "ApiToken",
    "ConversationAffinity",
    "DispatcherNode",
    "Event",
    "EventQuerySet",
    "FailoverEvent",
    "HealthCheck",
    "HealthRollup",
    "IdempotencyKey",
    "LoadMetric",
    "Master",
    "Message",
    "ProberLease",
    "RuntimeSettings",
]
