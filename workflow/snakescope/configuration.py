"""Config checking with messages that name the key: 'unknown config key model.weigth_format (did you mean weight_format?)'."""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def config_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Readable messages for every schema violation of ``config``, one line each, naming the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = list(error.absolute_path)
        if error.validator == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed)):
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
                messages.append(f"unknown config key {_dotted(where + [key])!r}{suggestion}")
        elif error.validator == "required":
            messages.append(f"missing config key at {_dotted(where)}: {error.message}")
        else:
            messages.append(f"config key {_dotted(where)!r}: {error.message}")
    return messages


def settings_from_section(cls: type[T], section: dict[str, Any]) -> T:
    """A settings dataclass from its config section; keys it does not hold (used by other stages) are ignored."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in known})
