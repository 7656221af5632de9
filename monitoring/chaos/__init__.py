"""The chaos run (``make chaos``, ``manage.py ha_chaos``): the product under fire, nothing lost.

It starts the real processes on PostgreSQL and Redis against the gateway
simulator, submits messages through the REST API at a steady rate, injects
faults on a schedule drawn from a seed, and at the end reconciles the
portal's records with the simulator's delivery log. The pure parts
(``schedule``, ``reconcile``, ``verdict``) are plain functions over plain
data; ``fleet``, ``faults``, ``load`` and ``run`` do the I/O.
"""
