"""Encryption at rest for what must never be readable in storage: MSAL token caches and the PKCE
secrets of OAuth flows in progress.

AES-256-GCM (``cryptography``) with a random 96-bit nonce. The associated data binds a ciphertext
to the row it belongs to, so a blob copied into another user's row does not decrypt. Key ids make
rotation possible: ``TOKEN_ENCRYPTION_KEYS`` lists ``kid:key`` pairs; the first encrypts, any
decrypts; rows are re-encrypted with the first key whenever they are next written.

Format: ``v1.<kid>.<base64url nonce>.<base64url ciphertext+tag>``.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.rules.errors import PermanentError

Keys = tuple[tuple[str, bytes], ...]


class UndecryptableError(PermanentError):
    """A stored blob whose key is gone or that was tampered with; the user must reconnect."""


def encrypt(plaintext: bytes, keys: Keys, associated_data: str) -> str:
    kid, key = keys[0]
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext, associated_data.encode())
    return ".".join(("v1", kid, _b64(nonce), _b64(sealed)))


def decrypt(blob: str, keys: Keys, associated_data: str) -> bytes:
    try:
        version, kid, nonce, sealed = blob.split(".")
    except ValueError:
        raise UndecryptableError("stored secret is not in the v1 format") from None
    key = dict(keys).get(kid)
    if version != "v1" or key is None:
        raise UndecryptableError(f"no key with id {kid!r} in TOKEN_ENCRYPTION_KEYS")
    try:
        return AESGCM(key).decrypt(_unb64(nonce), _unb64(sealed), associated_data.encode())
    except (InvalidTag, ValueError):
        raise UndecryptableError("stored secret failed authentication (wrong row or tampered)") from None


def key_id(blob: str) -> str:
    """Which key sealed a blob, to know whether it needs re-encrypting with the current key."""
    return blob.split(".")[1] if blob.count(".") == 3 else ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
