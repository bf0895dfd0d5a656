"""Settings: the catalog app, the bookshelf app (Django's defaults) and a database, from DATABASE_URL
(postgres://user:pass@host:port/db)."""
import os
from urllib.parse import unquote, urlsplit

url = os.environ.get("DATABASE_URL")
if not url:
    raise SystemExit("set DATABASE_URL to the catalog database, e.g. postgres://app:123qwe@127.0.0.1:5432/movies")
parts = urlsplit(url)

SECRET_KEY = "tests-only"
DEBUG = False
INSTALLED_APPS = ["movies", "shelf"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": parts.port or 5432,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
