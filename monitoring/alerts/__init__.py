"""Alerting: rules (pure), the evaluator (engine), delivery by email and webhook (django-q2).

- ``rules``: the plan's rules as pure functions over a snapshot and new events;
- ``engine``: ``evaluate()`` (the prober calls it), ``acknowledge()``, ``active_alerts()``;
- ``delivery``: deliveries per notice and recipient, payload formats, the task body;
- ``transport``: the webhook POST with its URL safety checks;
- ``tasks``: what django-q2 runs. docs/ALERTS.md describes it all for operators.
"""
