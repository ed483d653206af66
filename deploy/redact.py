"""One redaction filter, seeded with every secret value, guarding every output surface."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "********"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        # Very short values would mask ordinary words; secrets that short are refused upstream.
        for secret in secrets:
            if secret and len(secret) >= 4:
                self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def deep(self, value: object) -> object:
        """`value` with every string in it (dict keys included) masked: for structured
        records such as journal entries, masked before they are serialised, so a secret
        is found whatever JSON escaping would have done to it."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.deep(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(item) for item in value]
        return value
