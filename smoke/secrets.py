"""Secrets in smoke packs: `${ENV:NAME}` references resolved from the environment, and the
filter that masks every resolved value in every output (table, JSON, JUnit, error messages).

This is the one redaction filter of releasegate: smoke/ never imports deploy/, so it lives
here and deploy.redact re-exports it. Values shorter than 4 characters are refused, because
masking them would mask ordinary words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MASK = "********"
MIN_SECRET_LENGTH = 4
ENV_REF = re.compile(r"\$\{ENV:([A-Za-z_][A-Za-z0-9_]{0,127})\}")
ANY_REF = re.compile(r"\$\{[^}]*\}?")


class SecretError(ValueError):
    """A `${ENV:NAME}` reference cannot be resolved; the message says why and how to fix it."""


class Redactor:
    """Replaces every known secret value with MASK. Callable on any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                self._secrets.add(secret)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(sorted(self._secrets))

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def deep(self, value: object) -> object:
        """`value` with every string in it (dict keys included) masked: for structured
        records such as journal entries and JSON lines, masked before they are serialised,
        so a secret is found whatever JSON escaping would have done to it."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.deep(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(item) for item in value]
        return value


def has_reference(value: str) -> bool:
    return "${" in value


def resolve(value: str, environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """Substitute every `${ENV:NAME}` in value; return (resolved, secret values used).

    Raises SecretError for a malformed reference or a variable that is unset, empty or too
    short to be masked. The message names the variable, never a value.
    """
    for ref in ANY_REF.findall(value):
        if not ENV_REF.fullmatch(ref):
            raise SecretError(
                f"{ref!r} is not a valid reference; write ${{ENV:NAME}} with NAME an "
                f"environment variable such as API_TOKEN"
            )
    used: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        secret = environ.get(name)
        if secret is None:
            raise SecretError(
                f"${{ENV:{name}}} refers to the environment variable {name}, which is not "
                f"set; export {name} before running, or remove the reference"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise SecretError(
                f"the environment variable {name} is "
                f"{'empty' if not secret else 'shorter than 4 characters'}; a secret that "
                f"short cannot be masked in output — set {name} to the real token"
            )
        used.append(secret)
        return secret

    resolved = ENV_REF.sub(substitute, value)
    return resolved, tuple(used)
