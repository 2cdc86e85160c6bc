"""Elliptic-curve key pairs for the signing tests (``omama export --sign``, ``--trust``),
generated with ``cryptography`` (model-signing's own dependency)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_key_pair(folder: Path, name: str, key=None) -> tuple[Path, Path]:
    """``name.pem`` (private, PKCS#8, unencrypted) and ``name.pub`` (SubjectPublicKeyInfo) of
    ``key``, by default a new P-256 key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
