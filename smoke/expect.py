"""The expectation kinds of a check. Each decides on an Answer and returns None (met) or one
line `expected … got …` that says what to look at. Pure: no I/O, no printing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import ValidationError, best_match

from smoke.model import NOT_JSON, Answer


def _quote(text: str) -> str:
    return f"'{text}'"


@dataclass(frozen=True)
class StatusIn:
    """The status is one of `codes` or in one of the classes (4 = 4xx)."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def accepts(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes

    def describe(self) -> str:
        parts = [str(c) for c in sorted(self.codes)] + [f"{c}xx" for c in sorted(self.classes)]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    def check(self, answer: Answer) -> str | None:
        if self.accepts(answer.status):
            return None
        body = answer.show(answer.text, 100)
        return f"expected status {self.describe()} got {answer.status}" + (
            f" (body: {body})" if body else ""
        )


@dataclass(frozen=True)
class HeaderRule:
    """A response header: present (or absent with present=False), equal to, matching (regex,
    searched) or containing a value. Names are case-insensitive."""

    name: str
    present: bool | None = None
    equals: str | None = None
    matches: re.Pattern[str] | None = None
    contains: str | None = None

    def _wanted(self) -> str:
        if self.equals is not None:
            return f"= {_quote(self.equals)}"
        if self.matches is not None:
            return f"matching {_quote(self.matches.pattern)}"
        if self.contains is not None:
            return f"containing {_quote(self.contains)}"
        return "present"

    def check(self, answer: Answer) -> str | None:
        value = answer.headers.get(self.name)
        if self.present is False:
            if value is None:
                return None
            return f"expected no header {self.name} got {_quote(answer.show(value, 80))}"
        if value is None:
            return f"expected header {self.name} {self._wanted()} got no such header"
        if self.equals is not None and value != self.equals:
            return (
                f"expected header {self.name} {self._wanted()} got {_quote(answer.show(value, 80))}"
            )
        if self.matches is not None and not self.matches.search(value):
            return (
                f"expected header {self.name} {self._wanted()} got {_quote(answer.show(value, 80))}"
            )
        if self.contains is not None and self.contains not in value:
            return (
                f"expected header {self.name} {self._wanted()} got {_quote(answer.show(value, 80))}"
            )
        return None


@dataclass(frozen=True)
class BodyContains:
    text: str

    def check(self, answer: Answer) -> str | None:
        if self.text in answer.text:
            return None
        return (
            f"expected body containing {_quote(self.text)} got {_quote(answer.show(answer.text))}"
        )


@dataclass(frozen=True)
class BodyMatches:
    """A regular expression searched in the body (MULTILINE, so ^ and $ work per line)."""

    pattern: re.Pattern[str]

    def check(self, answer: Answer) -> str | None:
        if self.pattern.search(answer.text):
            return None
        return (
            f"expected body matching {_quote(self.pattern.pattern)} "
            f"got {_quote(answer.show(answer.text))}"
        )


@dataclass(frozen=True)
class SchemaMatches:
    """The body is JSON valid against a JSON Schema (draft from its $schema, default 2020-12).

    `origin` says where the schema came from (inline, or the file) for the detail line."""

    schema: Any = field(compare=False)
    origin: str = "inline schema"

    def __post_init__(self) -> None:
        cls = validators.validator_for(self.schema)
        cls.check_schema(self.schema)  # SchemaError: the loader turns it into a PackError

    def check(self, answer: Answer) -> str | None:
        doc = answer.json
        if doc is NOT_JSON:
            kind = answer.headers.get("content-type", "no Content-Type")
            return (
                f"expected a JSON body matching the {self.origin} got {answer.show(kind, 60)} "
                f"{_quote(answer.show(answer.text, 80))}"
            )
        cls = validators.validator_for(self.schema)
        validator = cls(self.schema, format_checker=cls.FORMAT_CHECKER)
        try:
            errors: list[ValidationError] = list(validator.iter_errors(doc))
        except RecursionError:
            return f"expected body matching the {self.origin} got JSON nested too deeply to check"

        if not errors:
            return None
        best = best_match(errors)
        assert best is not None
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return (
            f"expected body matching the {self.origin} got a mismatch at {best.json_path}: "
            f"{answer.show(best.message, 140)}{more}"
        )


@dataclass(frozen=True)
class LatencyBudget:
    max_ms: float

    def check(self, answer: Answer) -> str | None:
        if answer.elapsed_ms <= self.max_ms:
            return None
        return (
            f"expected an answer within {self.max_ms:g} ms got {answer.elapsed_ms:.0f} ms "
            f"({answer.elapsed_ms / self.max_ms:.1f}x the budget)"
        )
