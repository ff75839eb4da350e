"""The WSGI module gunicorn serves, as in the official image: importing pgAdmin4 creates
the app (and, on a first start, its database and the login from PGADMIN_SETUP_*)."""

import builtins

builtins.SERVER_MODE = None  # type: ignore[attr-defined]  # pgAdmin's own convention

from pgAdmin4 import app  # noqa: E402, F401
