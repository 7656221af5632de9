"""Real parts for the alert tests: an SMTP server and an HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django_q.conf import Conf

from masters.choices import RecipientKind, WebhookFormat
from masters.models import AlertRecipient


@pytest.fixture
def sync_tasks(monkeypatch):
    """Run django-q2 tasks inline, at enqueue time (after commit)."""
    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture
def alerting(transactional_db, sync_tasks, settings):
    """Deliveries run for real: committed transactions, tasks inline, a short timeout."""
    settings.ALERTS = settings.ALERTS | {
        "delivery_timeout_s": 3,
        "delivery_attempts": 3,
        "retry_base_s": 5,
        "portal_url": "http://portal.test",
    }
    return settings


# --- SMTP -----------------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message_from_bytes(envelope.original_content, policy=policy.default))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on 127.0.0.1; Django's SMTP backend points at it."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.DEFAULT_FROM_EMAIL = "HA Portal <alerts@portal.test>"
    try:
        yield inbox
    finally:
        controller.stop()


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver: records every request, answers the statuses it is told to."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    # Statuses to answer per path, in order; once used up, 200 (or ``always``).
    script: dict[str, list[int]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    cert_file: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    def answer(self, path: str) -> int:
        with self.lock:
            queued = self.script.get(path)
            if queued:
                return queued.pop(0)
            return self.always.get(path, 200)


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.answer(self.path)
            reply = b"ok" if status < 400 else b"receiver error"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args) -> None:
            pass  # the test output stays readable

    return Handler


@contextmanager
def serve(state: Receiver, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Run a receiver on 127.0.0.1 (over TLS if given) on its own thread; yield its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 that records webhook requests."""
    state = Receiver()
    with serve(state) as port:
        state.url = f"http://127.0.0.1:{port}"
        yield state


@pytest.fixture
def tls_receiver(tmp_path):
    """The receiver over HTTPS with a self-signed certificate for localhost; ``.cert_file``."""
    cert_file, key_file = self_signed_certificate(tmp_path, "localhost")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    state = Receiver()
    state.cert_file = str(cert_file)
    with serve(state, tls) as port:
        state.url = f"https://localhost:{port}"
        yield state


def self_signed_certificate(directory, host: str):
    """Write a throw-away certificate and key for HOST (and 127.0.0.1, ::1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    names = [x509.DNSName(host)] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# --- recipients -----------------------------------------------------------------------------


def email_recipient(address: str = "ops@example.com", **wants) -> AlertRecipient:
    return AlertRecipient.objects.create(kind=RecipientKind.EMAIL, email=address, **wants)


def webhook(url: str, format: str = WebhookFormat.JSON, secret: str = "", **wants):
    return AlertRecipient.objects.create(
        kind=RecipientKind.WEBHOOK, url=url, format=format, secret=secret, **wants
    )
