"""The one way releasegate reads a YAML file a user (or a release) gives it: inventories, smoke
packs and their schema files.

`yaml.safe_load` alone is safe from code execution but not from hostile shapes: a duplicated
key silently wins over the first (a `port:` written twice deploys the one below), anchors
that alias each other nine times per level ("billion laughs") expand into billions of values
once validation walks them, and deep nesting ends in a RecursionError traceback. A pack is
read from the revision being deployed, so whoever can commit to the app's repository can
hand releasegate such a file. Each of these is refused here as a `yaml.YAMLError` (the
callers already turn that into a one-paragraph error naming the file), with the line where
the problem is when there is one.

Lives in smoke/ because smoke/ never imports deploy/; deploy/inventory.py uses it too.
"""

from __future__ import annotations

from typing import Any

import yaml

# Far beyond any real inventory, pack or schema (the sample app's pack is ~300 values), far
# below what hurts: walking 200k values takes milliseconds.
MAX_VALUES = 200_000
MAX_DEPTH = 100
MAX_BYTES = 4 * 1024 * 1024
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (merge keys `<<` excepted:
    overriding a merged key is what they are for)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key_node.value!r} appears twice in one mapping (also at line "
                    f"{seen[key_node.value] + 1}); YAML would silently keep the last one — "
                    f"keep one",
                    key_node.start_mark,
                )
            seen[key_node.value] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse one YAML document; raise yaml.YAMLError for bad syntax and for the hostile shapes
    above."""
    if len(text) > MAX_BYTES:
        raise yaml.YAMLError(
            f"the file is {len(text) // 1024} KiB, more than releasegate reads "
            f"({MAX_BYTES // (1024 * 1024)} MiB); split it or shrink it"
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(
            f"values are nested more than {MAX_DEPTH} levels deep; flatten the file"
        ) from None
    _check_shape(data)
    return data


def _check_shape(data: Any) -> None:
    """Walk the loaded value as validation will, aliases expanded, and stop at the first
    limit crossed: the walk costs at most MAX_VALUES steps whatever the file."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise yaml.YAMLError(
                f"the file holds more than {MAX_VALUES} values once its anchors and aliases "
                f"are expanded (aliases that multiply each other, a 'billion laughs', are "
                f"refused); write the values out or simplify it"
            )
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(
                f"values are nested more than {MAX_DEPTH} levels deep; flatten the file"
            )
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
