"""Encryption at rest of the secrets the service database keeps — each API key's Standard Webhooks signing secret
(``api_keys.webhook_secret``) — with Fernet (AES-128-CBC + HMAC-SHA256, ``cryptography.fernet``; spec:
https://github.com/fernet/spec). A database dump or backup then holds tokens, not secrets that sign webhooks.

The key comes from ``LIFT3D_ENCRYPTION_KEY`` (a k8s Secret in clusters: ``k8s/postgres.yaml``): one or more
URL-safe base64 Fernet keys separated by commas; the first encrypts, every one decrypts (rotation: put the new key
first, re-encrypt, drop the old). Without it:

- a SQLite file database (``make serve``, ``lift3d playground``, the CLI on one machine — the local setups) uses a
  key file beside it, ``<database>.key``, created once with mode 0600;
- an in-memory SQLite database uses a key of the process;
- any other database (PostgreSQL: a cluster) refuses to open: :class:`MissingEncryptionKey` says what to set.

:class:`EncryptedText` is the column type; it finds the cipher on the engine's dialect, where
:class:`~lift3d.service.db.engine.Database` puts it, so two databases in one process keep two keys and nothing is
global.

Examples:
    >>> cipher = SecretCipher([Fernet.generate_key()])
    >>> token = cipher.encrypt("whsec_abc")
    >>> token.startswith("gAAAAA"), cipher.decrypt(token)
    (True, 'whsec_abc')
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text, text
from sqlalchemy.engine import URL
from sqlalchemy.types import TypeDecorator

from lift3d.errors import Lift3DError

__all__ = ["ENCRYPTION_KEY_ENV", "EncryptedText", "MissingEncryptionKey", "SecretCipher", "UnreadableSecret",
           "cipher_for_url", "cipher_of", "rotate_secrets"]

ENCRYPTION_KEY_ENV = "LIFT3D_ENCRYPTION_KEY"
_GENERATE = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


class MissingEncryptionKey(Lift3DError):
    """A non-local database and no ``LIFT3D_ENCRYPTION_KEY``: the service refuses to start."""

    name = "configuration_error"


class UnreadableSecret(Lift3DError):
    """A stored secret that none of the configured keys decrypts (a wrong or rotated-out key)."""

    name = "configuration_error"


class SecretCipher:
    """Encrypts and decrypts short text secrets with Fernet keys (the first encrypts; all decrypt).

    Args:
        keys: Fernet keys (32 random bytes, URL-safe base64: ``Fernet.generate_key()``), newest first.

    Raises:
        ValueError: no key, or a key that is not a Fernet key (the message never shows the key).
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.strip() if isinstance(key, (str, bytes)) else key))
            except (ValueError, TypeError):
                raise ValueError(f"{ENCRYPTION_KEY_ENV}: key {index + 1} is not a Fernet key (32 bytes, URL-safe "
                                 f"base64); generate one with {_GENERATE}") from None
        if not fernets:
            raise ValueError(f"{ENCRYPTION_KEY_ENV}: no key given")
        self._fernet = MultiFernet(fernets)

    def encrypt(self, text: str) -> str:
        """A Fernet token: URL-safe base64 text starting ``gAAAAA``, 140 characters for a ``whsec_`` secret."""
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The text of ``token``.

        Raises:
            UnreadableSecret: no configured key opens it.
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise UnreadableSecret(f"a stored secret cannot be decrypted with the keys in {ENCRYPTION_KEY_ENV} "
                                   "(wrong key, or the key that wrote it was removed)") from None

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted with the first key (after a rotation put a new key first).

        Raises:
            UnreadableSecret: no configured key opens it.
        """
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise UnreadableSecret(f"a stored secret cannot be decrypted with the keys in {ENCRYPTION_KEY_ENV}") \
                from None

    def __repr__(self) -> str:  # never show keys
        return "SecretCipher(<keys hidden>)"


def cipher_for_url(url: URL, key: str | None = None, environ: Mapping[str, str] | None = None) -> SecretCipher:
    """The cipher of the database at ``url``: ``key`` if given, else ``LIFT3D_ENCRYPTION_KEY``, else the local
    fallbacks of the module docstring.

    Raises:
        MissingEncryptionKey: no key for a database that is not a SQLite file (a cluster's PostgreSQL).
        ValueError: a malformed key.
    """
    env = os.environ if environ is None else environ
    keys = key if key is not None else env.get(ENCRYPTION_KEY_ENV, "")
    if keys.strip():
        return SecretCipher([part for part in keys.split(",") if part.strip()])
    if url.get_backend_name() != "sqlite":
        raise MissingEncryptionKey(
            f"{ENCRYPTION_KEY_ENV} is not set: a {url.get_backend_name()} database keeps the API keys' webhook "
            f"secrets encrypted and needs the key (in clusters, the lift3d-encryption Secret: docs/deployment.md). "
            f"Generate one with {_GENERATE}")
    database = url.database
    if not database or database == ":memory:":
        return SecretCipher([Fernet.generate_key()])
    return SecretCipher([_local_key_file(Path(database).with_name(Path(database).name + ".key"))])


def _local_key_file(path: Path) -> bytes:
    """The key in ``path``, created (0600, exclusively: two processes starting at once agree) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process created it a moment ago: wait for its write
            key = path.read_bytes().strip()
            if key:
                return key
            time.sleep(0.01)
        raise MissingEncryptionKey(f"the local encryption key file {path.name} beside the database is empty; "
                                   f"set {ENCRYPTION_KEY_ENV} or delete the file together with the database")
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as file:
        file.write(key + b"\n")
    return key


def rotate_secrets(database: Any) -> int:
    """Re-encrypt every stored secret with the first key of the database's cipher, in one transaction; returns how
    many were rewritten. The last step of a key rotation: ``LIFT3D_ENCRYPTION_KEY=<new>,<old>``, restart, run this
    once, then drop ``<old>``.

    Examples:
        >>> rotate_secrets(Database(url))  # doctest: +SKIP
        3

    Raises:
        UnreadableSecret: a stored secret that none of the keys opens (nothing is rewritten).
    """
    with database.transaction() as session:
        rows = session.execute(text("SELECT id, webhook_secret FROM api_keys")).all()
        for key_id, token in rows:
            session.execute(text("UPDATE api_keys SET webhook_secret = :token WHERE id = :id"),
                            {"token": database.cipher.rotate(token), "id": key_id})
    return len(rows)


def cipher_of(dialect: Any) -> SecretCipher:
    """The cipher that :class:`~lift3d.service.db.engine.Database` attached to its engine's dialect.

    Raises:
        RuntimeError: an engine not made by ``Database`` reads or writes an encrypted column.
    """
    cipher = getattr(dialect, "lift3d_cipher", None)
    if cipher is None:
        raise RuntimeError("this engine has no secret cipher; open the database with lift3d.service.db.Database")
    return cipher


class EncryptedText(TypeDecorator):
    """A text column stored as a Fernet token (``TEXT`` in the database); Python code sees the plaintext. Tokens
    differ on every write, so the column cannot be searched or compared in SQL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else cipher_of(dialect).encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else cipher_of(dialect).decrypt(value)
