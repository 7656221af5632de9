"""HA Portal settings, all read from the environment.

The embedded default (``make run``) needs nothing set: SQLite in ``var/``,
django-q2's ORM broker, an in-memory channel layer. Production sets
``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY`` and ``ALLOWED_HOSTS`` and runs
the same code on PostgreSQL and Redis (see README "Production").
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from ha_portal.lib.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_secret,
    env_str,
)
from monitoring.metrics.sentry import init_sentry

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

# HA_DEV is set by `make run` only: it turns on DEBUG and a per-checkout secret key.
HA_DEV = env_bool("HA_DEV", False)
TESTING = "pytest" in sys.modules or sys.argv[1:2] == ["test"]
DEBUG = env_bool("DJANGO_DEBUG", HA_DEV)


def _dev_secret_key() -> str:
    """Return a random key kept in var/, so dev sessions survive a restart."""
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        VAR_DIR.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not (HA_DEV or DEBUG or TESTING):
        raise ImproperlyConfigured("SECRET_KEY: must be set outside the embedded dev run")
    SECRET_KEY = _dev_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- The product's own settings (the plan's variables) -----------------------
# These seed the run-time settings record (masters.RuntimeSettings) that an
# admin can edit; the environment is only the starting point.

LOAD_BALANCING_STRATEGIES = ("round-robin", "priority", "least-loaded", "geo")

HA_DEFAULTS = {
    "failover_enabled": env_bool("FAILOVER_ENABLED", True),
    "health_check_interval_ms": env_int(
        "HEALTH_CHECK_INTERVAL", 5000, minimum=500, maximum=3_600_000
    ),
    "failover_timeout_ms": env_int("FAILOVER_TIMEOUT", 30000, minimum=0, maximum=86_400_000),
    "max_recovery_attempts": env_int("MAX_RECOVERY_ATTEMPTS", 5, minimum=0, maximum=1000),
    "load_balancing_strategy": env_choice(
        "LOAD_BALANCING_STRATEGY", "round-robin", LOAD_BALANCING_STRATEGIES
    ),
    "alert_critical_enabled": env_bool("ALERT_CRITICAL_ENABLED", True),
    "alert_warning_enabled": env_bool("ALERT_WARNING_ENABLED", True),
}

# Health detection (issue 3): fall/rise thresholds, probe timing, passive
# signals and retention. Thresholds count consecutive probe results.
HEALTH = {
    "timeout_ms": env_int("HEALTH_CHECK_TIMEOUT", 2000, minimum=100, maximum=60_000),
    "confirm_interval_ms": env_int("HEALTH_CONFIRM_INTERVAL", 1000, minimum=100),
    "fall": env_int("HEALTH_FALL_THRESHOLD", 3, minimum=1, maximum=100),
    "rise": env_int("HEALTH_RISE_THRESHOLD", 2, minimum=1, maximum=100),
    "flap_window_s": env_int("HEALTH_FLAP_WINDOW", 300, minimum=10),
    "flap_limit": env_int("HEALTH_FLAP_LIMIT", 4, minimum=2),
    "flap_rise": env_int("HEALTH_FLAP_RISE_THRESHOLD", 6, minimum=1),
    "send_error_limit": env_int("SEND_ERROR_LIMIT", 5, minimum=1),
    "send_ejection_s": env_int("SEND_EJECTION_SECONDS", 30, minimum=1),
    "retention_days": env_int("HEALTH_RETENTION_DAYS", 7, minimum=1),
    "rollup_retention_days": env_int("HEALTH_ROLLUP_RETENTION_DAYS", 90, minimum=1),
}

# The queue and dispatcher (issue 4).
QUEUE = {
    "default_ttl_s": env_int("MESSAGE_TTL", 86_400, minimum=1),
    "max_ttl_s": env_int("MESSAGE_MAX_TTL", 7 * 86_400, minimum=1),
    "max_attempts": env_int("MESSAGE_MAX_ATTEMPTS", 10, minimum=1),
    "retry_base_ms": env_int("RETRY_BASE_MS", 1000, minimum=10),
    "retry_max_ms": env_int("RETRY_MAX_MS", 300_000, minimum=10),
    "lease_s": env_int("DISPATCH_LEASE", 30, minimum=5),
    # A message whose send may have gone out unanswered (a timeout, a lost
    # connection, a dispatcher that died mid-send) is retried only through the
    # same master for this long, since the idempotency key de-duplicates only
    # within one gateway; then any master may take it (docs/RELIABILITY.md).
    "doubt_hold_s": env_int("DISPATCH_DOUBT_HOLD", 300, minimum=0),
    "send_timeout_ms": env_int("SEND_TIMEOUT", 10_000, minimum=100),
    "claim_batch": env_int("DISPATCH_BATCH", 200, minimum=1, maximum=5000),
    "per_master_concurrency": env_int("DISPATCH_CONCURRENCY", 64, minimum=1),
    "api_batch_limit": env_int("API_BATCH_LIMIT", 500, minimum=1, maximum=10_000),
    "text_max_chars": 4096,  # WhatsApp's own limit for a text message
}

if QUEUE["lease_s"] * 1000 < QUEUE["send_timeout_ms"] + 6000:
    # A claim must outlast a whole send plus the margin to record it, or no
    # message could ever be sent.
    raise ImproperlyConfigured(
        "DISPATCH_LEASE: must be at least SEND_TIMEOUT + 6 s "
        f"({(QUEUE['send_timeout_ms'] + 6000) / 1000:g} s), got {QUEUE['lease_s']} s"
    )

# Load balancing on top of the strategy (issue 4).
BALANCING = {
    "affinity_ttl_s": env_int("AFFINITY_TTL", 86_400, minimum=1),
    # A contact stays on its master while that master holds fewer than this
    # many unsent messages, or, past it, no more than a quarter above the
    # routable masters' mean (masters.balancing.AFFINITY_LOAD_SLACK): one busy
    # contact cannot pin a master, and a backlog shared by all does not
    # switch stickiness off.
    "affinity_max_pending": env_int("AFFINITY_MAX_PENDING", 200, minimum=1),
    "slow_start_s": env_int("SLOW_START", 60, minimum=0),
    "slow_start_min_share": 0.1,
    "snapshot_max_age_ms": env_int("ROUTING_SNAPSHOT_MS", 1000, minimum=0),
    # A master more than this many points above its target share has its
    # affinities released (round-robin and priority strategies only).
    "rebalance_drift_pct": env_int("REBALANCE_DRIFT_PCT", 25, minimum=1, maximum=100),
}
LOAD_METRICS_INTERVAL_S = env_int("LOAD_METRICS_INTERVAL", 10, minimum=1)

# Failover orchestration (issue 5).
FAILOVER = {
    # A master failed over takes no work back by failover for this long.
    "hold_down_s": env_int("FAILOVER_HOLD_DOWN", 300, minimum=0),
    # MAX_RECOVERY_ATTEMPTS failovers of one master within this window trip
    # its circuit breaker.
    "breaker_window_s": env_int("FAILOVER_BREAKER_WINDOW", 3600, minimum=60),
    # Move a recovered master's conversations back automatically (off: a human decides).
    "failback_enabled": env_bool("FAILBACK_ENABLED", False),
}

# --- Django -------------------------------------------------------------------

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "django_q",
    "masters",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login except those marked @login_not_required
    # (the login page, and the token- or signature-authenticated endpoints).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Issue 6: the Content-Security-Policy header (settings below).
    "monitoring.pages.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "ha_portal.urls"
ASGI_APPLICATION = "ha_portal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'ha_portal.sqlite3'}")
DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    VAR_DIR.mkdir(exist_ok=True)
    # A file, not Django's in-memory default: tests run probers and dispatchers
    # in other threads and processes, as production does.
    # One file per test run, so that two runs side by side do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Daphne runs each request's view in a thread of its own, where a
    # persistent connection is never reused and lingers: web processes run
    # with CONN_MAX_AGE=0 (the Procfile, make run); the loops keep theirs.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60, minimum=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")

if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # No socket timeout: redis-py 8 times reads out after 5 s by default,
            # which breaks channels-redis' blocking receive (channels_redis#422).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "capacity": 1000,
                "expiry": 10,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
if TESTING:
    # Each test starts with an empty cache (tests/conftest.py); clearing a
    # Redis cache would flush the database django-q2 and Channels share.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# django-q2: the ORM broker on the embedded default, Redis when REDIS_URL is set.
# save_limit -1 keeps failures only: pruning successes on every save caps the
# cluster near 100 tasks/s on this hardware. retry must exceed timeout.
Q_CLUSTER = {
    "name": "ha_portal",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": 60,
    "retry": 90,
    "max_attempts": 3,
    "save_limit": -1,
    "bulk": 10,
    "poll": 0.2,
    "catch_up": False,
    "ack_failures": True,
    **({"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "ha_portal" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# The batch endpoint takes API_BATCH_LIMIT messages of up to 4,096 characters.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("API_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)

# --- Security -------------------------------------------------------------------
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Issue 6: HSTS (sent on HTTPS responses only, so only once TLS is in front) and a
# Content-Security-Policy (monitoring.pages.middleware): scripts from our own static
# files only (htmx is served from there, no inline scripts); inline styles allowed
# because htmx injects its indicator styles.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if SECURE_COOKIES else 0, minimum=0)
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'",
)

# --- Alerts and their delivery (issue 6) ----------------------------------------
# Thresholds live in monitoring.AlertSettings (an admin edits them); whether
# critical / warning alerts are delivered at all in masters.RuntimeSettings,
# seeded from ALERT_CRITICAL_ENABLED / ALERT_WARNING_ENABLED.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("ALERT_FROM_EMAIL", "HA Portal <ha-portal@localhost>")
ALERTS = {
    # How often the elected prober evaluates the rules (seconds).
    "evaluate_every_s": env_int("ALERT_EVALUATE_EVERY", 2, minimum=1),
    "delivery_timeout_s": env_int("ALERT_DELIVERY_TIMEOUT", 10, minimum=1, maximum=120),
    "delivery_attempts": env_int("ALERT_DELIVERY_ATTEMPTS", 5, minimum=1, maximum=50),
    "retry_base_s": env_int("ALERT_RETRY_BASE", 5, minimum=1),
    # The portal's own address in notices (links to the dashboard).
    "portal_url": env_str("PORTAL_URL", "http://127.0.0.1:8000"),
}

# --- Metrics (issue 6): GET /metrics with "Authorization: Bearer <METRICS_TOKEN>".
# No token set: /metrics answers 404 (off), never open to anyone.
METRICS_TOKEN = env_secret("METRICS_TOKEN")
SENTRY_DSN = env_secret("SENTRY_DSN")
init_sentry(SENTRY_DSN)  # optional: needs `pip install sentry-sdk` when set

# --- Login rate limit (issue 6): per username and per client address.
LOGIN_RATE_LIMIT = {
    "attempts": env_int("LOGIN_MAX_ATTEMPTS", 5, minimum=1),
    "window_s": env_int("LOGIN_LOCKOUT_SECONDS", 300, minimum=1),
}

# --- Logging: one line per record to stderr; secrets are never passed to it. ---
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {
        "handlers": ["console"],
        "level": env_choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"]),
    },
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
