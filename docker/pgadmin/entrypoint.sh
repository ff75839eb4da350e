#!/bin/sh
# The stand-in's /entrypoint.sh: what dpage/pgadmin4's does for the variables compose.yaml
# and the documentation use. pgAdmin's configuration from PGADMIN_CONFIG_<NAME>=<python
# value>; on the first start (no database in /var/lib/pgadmin yet) the login from
# PGADMIN_DEFAULT_EMAIL/PGADMIN_DEFAULT_PASSWORD and the servers from
# PGADMIN_SERVER_JSON_FILE; then gunicorn on PGADMIN_LISTEN_ADDRESS:PGADMIN_LISTEN_PORT.
set -eu
cd /pgadmin4

{
    echo "CA_FILE = '/etc/ssl/certs/ca-certificates.crt'"
    echo "LOG_FILE = '/dev/null'"
    echo "HELP_PATH = '../../docs'"
    # Air-gapped sites: no call home to pgadmin.org for the newest version.
    echo "UPGRADE_CHECK_ENABLED = False"
    env | sed -n 's/^PGADMIN_CONFIG_\([A-Za-z0-9_]*\)=\(.*\)$/\1 = \2/p'
} >/pgadmin4/config_distro.py

if [ ! -f /var/lib/pgadmin/pgadmin4.db ]; then
    if [ -z "${PGADMIN_DEFAULT_EMAIL:-}" ] || [ -z "${PGADMIN_DEFAULT_PASSWORD:-}" ]; then
        echo "You need to define the PGADMIN_DEFAULT_EMAIL and PGADMIN_DEFAULT_PASSWORD" \
            "environment variables." >&2
        exit 1
    fi
    PGADMIN_SETUP_EMAIL="$PGADMIN_DEFAULT_EMAIL" \
        PGADMIN_SETUP_PASSWORD="$PGADMIN_DEFAULT_PASSWORD" python3 run_pgadmin.py
    servers="${PGADMIN_SERVER_JSON_FILE:-/pgadmin4/servers.json}"
    if [ -f "$servers" ]; then
        if [ "${PGADMIN_CONFIG_SERVER_MODE:-True}" = False ]; then
            python3 setup.py load-servers "$servers"
        else
            python3 setup.py load-servers "$servers" --user "$PGADMIN_DEFAULT_EMAIL"
        fi
    fi
fi
# The password is in pgAdmin's database now: not in gunicorn's environment.
unset PGADMIN_DEFAULT_PASSWORD

exec gunicorn --limit-request-line "${GUNICORN_LIMIT_REQUEST_LINE:-8190}" \
    --timeout "${TIMEOUT:-86400}" \
    --bind "${PGADMIN_LISTEN_ADDRESS:-[::]}:${PGADMIN_LISTEN_PORT:-80}" \
    -w 1 --threads "${GUNICORN_THREADS:-25}" --access-logfile "${GUNICORN_ACCESS_LOGFILE:--}" \
    -c gunicorn_config.py run_pgadmin:app
