"""Password verifiers computed here, so a clear-text password never reaches the server.

``ALTER ROLE … PASSWORD '<clear text>'`` can end up in the server log (``log_statement``)
or in ``pg_stat_activity``; like psql's ``\\password``, we send the SCRAM-SHA-256 (or md5)
verifier instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

SCRAM_ITERATIONS = 4096


def _saslprep(password: str) -> str:
    """SASLprep (RFC 4013) as PostgreSQL applies it; on anything it would reject,
    PostgreSQL uses the password as it is, and so do we."""
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return password
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(ch) for ch in normalized for check in prohibited):
        return password
    has_ral = any(stringprep.in_table_d1(ch) for ch in normalized)
    if has_ral:
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return password
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password
    return normalized


def scram_sha256_verifier(password: str, *, salt: bytes | None = None) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` for ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(
        "sha256", _saslprep(password).encode("utf-8"), salt, SCRAM_ITERATIONS
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def md5_verifier(password: str, user: str) -> str:
    """``md5`` + md5(password + user), PostgreSQL's legacy format."""
    digest = hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "md5" + digest


def password_verifier(password: str, user: str, password_encryption: str) -> str:
    """The verifier the server would store itself under ``password_encryption``."""
    if password_encryption.strip().lower() == "scram-sha-256":
        return scram_sha256_verifier(password)
    return md5_verifier(password, user)
