"""gunicorn settings of the official image: no server version in the responses."""

import gunicorn

gunicorn.SERVER_SOFTWARE = "Python"
