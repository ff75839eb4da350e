"""rclone's rules for remote names and definitions, and where it finds remotes: pure checks
that need no rclone binary. Config validation uses them to report every problem at once
(exit 78) and the uploader to build rclone's environment; this module imports nothing of
laterbased, so the configuration can use it without an import circle.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class RemoteDefinition(Protocol):
    """A remote we define in rclone's environment (config.RcloneRemote)."""

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> Mapping[str, Any]: ...


class UploadTarget(Protocol):
    """Where uploads go (config.UploadConfig)."""

    @property
    def remote(self) -> str: ...

    @property
    def remotes(self) -> Sequence[RemoteDefinition]: ...

    @property
    def rclone_config(self) -> Path | None: ...


# rclone's own rule for remote names: letters, digits, '_', '-', '.', '+', '@' and space;
# not starting with '-' or space, not ending with '-' or space (checked with rclone 1.75).
REMOTE_NAME = re.compile(r"^[\w.+@](?:[\w.+@ -]*[\w.+@])?$")
REMOTE_NAME_RULE = (
    "letters, digits, '_', '-', '.', '+', '@' and space; "
    "not starting or ending with '-' or space"
)
_OPTION_NAME = re.compile(r"^[a-z0-9_]+$")
_ENV_REMOTE = re.compile(r"^RCLONE_CONFIG_(.+)_TYPE$")


def option_name(key: str) -> str:
    """rclone's spelling of an option: lower case, '-' as '_' (``access-key-id``)."""
    return key.strip().lower().replace("-", "_")

# The options rclone itself treats as secret (``IsPassword`` or ``Sensitive`` in
# ``rclone config providers``, rclone 1.75; tests/test_rclone_secret_options.py checks this
# table against the installed rclone), by backend. ``config show`` masks exactly these, so a
# typo in a non-secret option (an S3 ``endpoint``, ``provider``, ``region``) can be seen. A
# backend missing here (newer than this table, or a typo) has every option masked.
SECRET_OPTIONS: Mapping[str, frozenset[str]] = {
    "alias": frozenset(),
    "archive": frozenset(),
    "azureblob": frozenset(
        {
            "account",
            "client_certificate_password",
            "client_id",
            "client_secret",
            "connection_string",
            "key",
            "msi_client_id",
            "msi_mi_res_id",
            "msi_object_id",
            "password",
            "sas_url",
            "tenant",
            "username",
        }
    ),
    "azurefiles": frozenset(
        {
            "account",
            "client_certificate_password",
            "client_id",
            "client_secret",
            "connection_string",
            "key",
            "msi_client_id",
            "msi_mi_res_id",
            "msi_object_id",
            "password",
            "sas_url",
            "tenant",
            "username",
        }
    ),
    "b2": frozenset(
        {
            "account",
            "key",
            "sse_customer_key",
            "sse_customer_key_base64",
            "sse_customer_key_md5",
        }
    ),
    "box": frozenset(
        {
            "access_token",
            "client_id",
            "client_secret",
            "config_credentials",
            "impersonate",
            "root_folder_id",
            "token",
        }
    ),
    "cache": frozenset({"plex_password", "plex_token", "plex_username"}),
    "chunker": frozenset(),
    "cloudinary": frozenset({"api_key", "api_secret", "cloud_name"}),
    "combine": frozenset(),
    "compress": frozenset(),
    "crypt": frozenset({"password", "password2"}),
    "doi": frozenset(),
    "drime": frozenset({"access_token", "root_folder_id", "workspace_id"}),
    "drive": frozenset(
        {
            "client_id",
            "client_secret",
            "impersonate",
            "resource_key",
            "root_folder_id",
            "service_account_credentials",
            "team_drive",
            "token",
        }
    ),
    "dropbox": frozenset(
        {
            "client_id",
            "client_secret",
            "impersonate",
            "impersonate_admin",
            "token",
        }
    ),
    "fichier": frozenset({"api_key", "file_password", "folder_password"}),
    "filefabric": frozenset({"permanent_token", "root_folder_id", "token"}),
    "filelu": frozenset({"key"}),
    "filen": frozenset(
        {
            "api_key",
            "base_folder_uuid",
            "master_keys",
            "password",
            "private_key",
            "public_key",
        }
    ),
    "filescom": frozenset({"api_key", "password"}),
    "ftp": frozenset({"host", "pass", "user"}),
    "gcs": frozenset(
        {
            "access_token",
            "client_id",
            "client_secret",
            "project_number",
            "service_account_credentials",
            "token",
            "user_project",
        }
    ),
    "gofile": frozenset({"access_token", "account_id", "root_folder_id"}),
    "gphotos": frozenset({"client_id", "client_secret", "token"}),
    "hasher": frozenset(),
    "hdfs": frozenset({"namenode", "service_principal_name", "username"}),
    "hidrive": frozenset({"client_id", "client_secret", "token"}),
    "http": frozenset(),
    "huaweidrive": frozenset({"client_id", "client_secret", "token"}),
    "iclouddrive": frozenset({"apple_id", "cookies", "password", "trust_token"}),
    "imagekit": frozenset({"private_key", "public_key"}),
    "internetarchive": frozenset({"access_key_id", "secret_access_key"}),
    "internxt": frozenset({"email", "mnemonic", "pass"}),
    "jottacloud": frozenset({"client_id", "client_secret", "token"}),
    "koofr": frozenset({"password", "user"}),
    "linkbox": frozenset({"email", "password", "token"}),
    "local": frozenset(),
    "mailru": frozenset({"client_id", "client_secret", "pass", "token", "user"}),
    "mega": frozenset({"master_key", "pass", "session_id", "user"}),
    "memory": frozenset(),
    "netstorage": frozenset({"account", "host", "secret"}),
    "onedrive": frozenset(
        {
            "client_id",
            "client_secret",
            "drive_id",
            "link_password",
            "root_folder_id",
            "tenant",
            "token",
        }
    ),
    "oos": frozenset({"compartment", "namespace"}),
    "opendrive": frozenset({"password", "username"}),
    "pcloud": frozenset(
        {
            "client_id",
            "client_secret",
            "password",
            "root_folder_id",
            "token",
            "username",
        }
    ),
    "pikpak": frozenset({"device_id", "pass", "root_folder_id", "user"}),
    "pixeldrain": frozenset({"api_key"}),
    "premiumizeme": frozenset({"api_key", "client_id", "client_secret", "token"}),
    "protondrive": frozenset(
        {
            "client_access_token",
            "client_refresh_token",
            "client_salted_key_pass",
            "client_uid",
            "mailbox_password",
            "otp_secret_key",
            "password",
        }
    ),
    "putio": frozenset({"client_id", "client_secret", "token"}),
    "qingstor": frozenset({"access_key_id", "secret_access_key"}),
    "quatrix": frozenset({"api_key"}),
    "s3": frozenset(
        {
            "access_key_id",
            "secret_access_key",
            "session_token",
            "sse_customer_key",
            "sse_customer_key_base64",
            "sse_customer_key_md5",
            "sse_kms_key_id",
        }
    ),
    "seafile": frozenset({"auth_token", "library_key", "pass", "url", "user"}),
    "sftp": frozenset({"host", "key_file_pass", "key_pem", "pass", "user"}),
    "shade": frozenset({"api_key"}),
    "sharefile": frozenset({"client_id", "client_secret", "root_folder_id", "token"}),
    "sia": frozenset({"api_password", "api_url"}),
    "smb": frozenset({"domain", "host", "pass", "spn", "user"}),
    "storj": frozenset({"access_grant", "api_key", "passphrase"}),
    "sugarsync": frozenset(
        {
            "access_key_id",
            "app_id",
            "authorization",
            "deleted_id",
            "private_access_key",
            "refresh_token",
            "root_id",
            "user",
        }
    ),
    "swift": frozenset(
        {
            "application_credential_id",
            "application_credential_name",
            "application_credential_secret",
            "auth_token",
            "domain",
            "key",
            "tenant",
            "tenant_domain",
            "tenant_id",
            "user",
            "user_id",
        }
    ),
    "tardigrade": frozenset({"access_grant", "api_key", "passphrase"}),
    "ulozto": frozenset({"app_token", "password", "root_folder_slug", "username"}),
    "union": frozenset(),
    "webdav": frozenset({"bearer_token", "pass", "user"}),
    "yandex": frozenset({"client_id", "client_secret", "token"}),
    "zoho": frozenset({"client_id", "client_secret", "root_folder_id", "token"}),
}


def is_secret_option(backend: str, option: str) -> bool:
    """Does rclone treat ``option`` of a ``backend`` remote as secret? Unknown backends:
    every option is (better a masked endpoint than a shown key)."""
    known = SECRET_OPTIONS.get(backend.strip().lower())
    return known is None or option_name(option) in known


def config_env_name(remote: str, option: str) -> str:
    """The variable rclone reads for ``option`` of ``remote``.

    rclone finds remotes by scanning ``RCLONE_CONFIG_<NAME>_TYPE`` and lower-casing NAME, and
    reads options from ``RCLONE_CONFIG_<NAME>_<OPTION>`` with NAME upper-cased as written (a
    '-' in the remote name stays a '-': ``RCLONE_CONFIG_MY-REMOTE_TYPE``; verified against
    rclone 1.75, where ``RCLONE_CONFIG_MY_REMOTE_TYPE`` defines ``my_remote``, not
    ``my-remote``).
    """
    return f"RCLONE_CONFIG_{remote.upper()}_{option_name(option).upper()}"


def remote_name_problem(name: str) -> str | None:
    """Why rclone could not use ``name`` as a remote defined in the environment, or None."""
    if not REMOTE_NAME.match(name):
        return f"{name!r} is not a valid rclone remote name ({REMOTE_NAME_RULE})"
    # rclone lower-cases the name it finds in the variable; a name whose case does not
    # survive upper → lower (e.g. 'ß' → 'SS' → 'ss') would not be found again.
    if name.upper().lower() != name.lower():
        return (
            f"{name!r} cannot be defined through environment variables (its upper case "
            "changes its spelling); pick an ASCII name or define it in rclone.conf"
        )
    return None


def definition_problems(
    remotes: Sequence[RemoteDefinition], *, legacy: bool = False
) -> list[str]:
    """Problems with remotes we would define in rclone's environment. ``legacy``: they came
    from ``RCLONE_REMOTE_<N>_*`` (numbered from 1, in order), so name the variables."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for index, remote in enumerate(remotes):
        label = (
            f"RCLONE_REMOTE_{index + 1}_NAME={remote.name!r}"
            if legacy
            else f"upload.remotes.{index} ({remote.name!r})"
        )
        problem = remote_name_problem(remote.name)
        if problem:
            problems.append(f"{label}: {problem}")
        folded = remote.name.lower()
        if folded in seen and seen[folded] != remote.name:
            problems.append(
                f"{label}: {remote.name!r} and {seen[folded]!r} are the same remote for "
                "rclone's environment configuration (names are not case-sensitive there)"
            )
        seen.setdefault(folded, remote.name)
        for key in remote.params:
            option = option_name(key)
            if not _OPTION_NAME.match(option):
                problems.append(
                    f"{label}: parameter {key!r} is not an rclone option name "
                    "(letters, digits and '_', e.g. access_key_id)"
                )
            elif option == "type":
                problems.append(
                    f"{label}: parameter 'type' would override the remote's TYPE; "
                    "set RCLONE_REMOTE_<N>_TYPE (or type:) instead"
                )
    return problems


def default_config_path(environ: Mapping[str, str]) -> Path:
    """Where rclone looks for its config when not told (``RCLONE_CONFIG``, XDG, home)."""
    if environ.get("RCLONE_CONFIG"):
        return Path(environ["RCLONE_CONFIG"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    xdg = environ.get("XDG_CONFIG_HOME")
    candidates = [Path(xdg) / "rclone" / "rclone.conf"] if xdg else []
    candidates += [home / ".config" / "rclone" / "rclone.conf", home / ".rclone.conf"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def config_file_sections(path: Path) -> set[str] | None:
    """Remote names defined in an rclone.conf; None when that cannot be told (encrypted)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("# Encrypted rclone configuration File"):
        return None
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error:
        return None
    return set(parser.sections())


def environment_remotes(environ: Mapping[str, str]) -> set[str]:
    """Remotes an operator defined directly as ``RCLONE_CONFIG_<NAME>_TYPE`` (lower case)."""
    names = set()
    for key in environ:
        match = _ENV_REMOTE.match(key)
        if match and match.group(1) not in {"PASS", "PASS_COMMAND", "DIR"}:
            names.add(match.group(1).lower())
    return names


def upload_config_problems(
    upload: UploadTarget, environ: Mapping[str, str], *, legacy: bool = False
) -> list[str]:
    """Every problem with the upload target that can be found without running rclone."""
    problems = definition_problems(upload.remotes, legacy=legacy)
    config_path = upload.rclone_config
    if config_path is not None and not config_path.is_file():
        problems.append(f"upload.rclone_config: {config_path} does not exist or is not a file")
    if not upload.remote:
        return problems
    remote = upload.remote
    if ":" in remote or not REMOTE_NAME.match(remote):
        problems.append(
            f"upload.remote: {remote!r} is not an rclone remote name ({REMOTE_NAME_RULE}); "
            "put the folder in upload.path (RCLONE_REMOTE_PATH), not after a ':'"
        )
        return problems
    ours = {r.name.lower(): r.name for r in upload.remotes}
    if remote.lower() in ours:
        return problems
    operator_env = environment_remotes(environ)
    if remote.lower() in operator_env:
        return problems
    path = config_path or default_config_path(environ)
    sections: set[str] | None = set()
    if path.is_file():
        try:
            sections = config_file_sections(path)
        except OSError:
            sections = None
    if sections is None or remote in sections:
        return problems  # an encrypted or unreadable rclone.conf: rclone will tell at run time
    defined = sorted(set(ours.values()) | operator_env | sections)
    where = (
        f"rclone.conf {path}" if path.is_file() else f"no rclone.conf (looked for {path})"
    )
    problems.append(
        f"upload.remote: remote {remote!r} is not defined; "
        f"defined: {', '.join(defined) if defined else 'none'} (looked in "
        f"RCLONE_REMOTE_<N>_* / upload.remotes, RCLONE_CONFIG_<NAME>_TYPE variables, {where})"
    )
    return problems
