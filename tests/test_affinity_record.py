"""Conversation affinity is written when a send is recorded, from the master that sent it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from masters import outbox
from masters.choices import HealthStatus, MessageStatus
from masters.models import ConversationAffinity, Master, Message
from masters.queue import NewMessage, enqueue_batch
from masters.routing import Router
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=30)


@pytest.fixture
def masters():
    return [make_master(name, f"+97150000000{i}") for i, name in enumerate("ab", 1)]


def claim(*contacts: str, router: Router | None = None) -> list[outbox.Claimed]:
    enqueue_batch([NewMessage(to, f"hello {i}") for i, to in enumerate(contacts)])
    return outbox.claim("me", 50, LEASE, router or Router(seed=1))


def sent(claimed: list[outbox.Claimed], master_id: int | None = None) -> list[outbox.Outcome]:
    return [outbox.Outcome(c.id, c.epoch, master_id or c.master_id, f"gw-{c.id}") for c in claimed]


def rows() -> dict[str, int]:
    return dict(ConversationAffinity.objects.values_list("contact", "master_id"))


def test_a_sent_message_points_its_contact_at_the_master_that_sent_it(masters):
    claimed = claim("+971501110001", "+971501110002")
    assert rows() == {}, "routing alone writes nothing"

    outbox.record("me", sent(claimed), 10)

    assert rows() == {c.to: c.master_id for c in claimed}
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.SENT}


def test_the_send_that_went_through_another_master_names_that_master(masters):
    a, b = masters
    [message] = claim("+971501110003")
    other = b if message.master_id == a.pk else a

    # The record's general path: the outcome names a master the row does not.
    outbox.record("me", sent([message], other.pk), 10)

    assert rows() == {"+971501110003": other.pk}
    assert Message.objects.get().master_id == other.pk


def test_a_failed_send_remembers_nothing(masters):
    [message] = claim("+971501110004")
    outbox.record(
        "me", [outbox.Outcome(message.id, message.epoch, message.master_id, "", "boom")], 10
    )
    assert rows() == {}


def test_a_late_send_through_a_master_that_left_rotation_is_not_remembered(masters):
    [message] = claim("+971501110005")
    Master.objects.filter(pk=message.master_id).update(health_status=HealthStatus.FAILED)
    outbox.record("me", sent([message]), 10)
    assert Message.objects.get().status == MessageStatus.SENT
    assert rows() == {}


def test_only_new_moved_or_soon_expiring_rows_are_written(masters, settings):
    settings.BALANCING = settings.BALANCING | {"affinity_ttl_s": 3600}
    a, b = masters
    now = timezone.now()
    steady, moved, expiring, new = (f"+97150222000{i}" for i in range(4))
    for contact, expires_in in ((steady, 3000), (moved, 3000), (expiring, 600)):
        ConversationAffinity.objects.create(
            contact=contact, master=a, expires_at=now + timedelta(seconds=expires_in)
        )
    before = dict(ConversationAffinity.objects.values_list("contact", "expires_at"))
    enqueue_batch([NewMessage(c, "hi") for c in (steady, moved, expiring, new)])
    claimed = {c.to: c for c in outbox.claim("me", 10, LEASE)}  # no router: assign by hand
    masters_by_contact = {steady: a, moved: b, expiring: a, new: b}
    for contact, master in masters_by_contact.items():
        Message.objects.filter(pk=claimed[contact].id).update(master=master)

    outbox.record(
        "me",
        [
            outbox.Outcome(m.id, m.epoch, masters_by_contact[to].pk, f"gw-{m.id}")
            for to, m in claimed.items()
        ],
        10,
    )

    stored = {
        row.contact: (row.master_id, row.expires_at) for row in ConversationAffinity.objects.all()
    }
    assert stored[steady] == (a.pk, before[steady]), "a steady conversation is not rewritten"
    for contact in (moved, expiring, new):
        master_id, expires_at = stored[contact]
        assert master_id == masters_by_contact[contact].pk
        assert expires_at > now + timedelta(seconds=3500), f"{contact} renewed for a full TTL"


def test_a_contacts_latest_message_decides_its_master(masters):
    a, b = masters
    enqueue_batch([NewMessage("+971501110006", f"turn {i}") for i in range(2)])
    first, second = sorted(outbox.claim("me", 10, LEASE), key=lambda c: c.id)
    Message.objects.filter(pk=first.id).update(master=a)
    Message.objects.filter(pk=second.id).update(master=b)

    outbox.record(
        "me",
        [
            outbox.Outcome(first.id, first.epoch, a.pk, "gw-1"),
            outbox.Outcome(second.id, second.epoch, b.pk, "gw-2"),
        ],
        10,
    )

    assert rows() == {"+971501110006": b.pk}


def test_the_claim_reads_affinities_with_its_rows(masters):
    a, _ = masters
    contacts = [f"+97150333{i:04d}" for i in range(20)]
    ConversationAffinity.objects.bulk_create(
        ConversationAffinity(contact=c, master=a, expires_at=timezone.now() + timedelta(hours=1))
        for c in contacts
    )
    router = Router(seed=1)
    router.snapshot()

    with CaptureQueriesContext(connection) as queries:
        claimed = claim(*contacts, router=router)

    assert {c.master_id for c in claimed} == {a.pk}, "every contact kept its master"
    reads = [q["sql"] for q in queries if "conversationaffinity" in q["sql"].lower()]
    assert len(reads) == 1, reads
    assert reads[0].lstrip().upper().startswith("SELECT")
