"""Notebook parameter types: annotations read as strings, and whether a value fits one.

The rules ``clipkit sweep`` and a notebook's own check share: an int is accepted where a
float is declared, a bool is not an int, ``list[float]`` needs a list of numbers,
``Optional[T]`` / ``T | None`` also accepts None; an annotation it cannot read accepts
anything.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["accepted", "list_hint", "type_matches"]


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def type_matches(value: Any, type_name: str) -> bool:
    """Whether ``value`` fits a notebook parameter's annotation, e.g. ``list[float]``.

    int is accepted where float is; bool is not an int. Types it cannot read are accepted.
    """
    t = type_name.strip().replace("typing.", "")
    if t in ("", "Any", "object"):
        return True
    alternatives = _split_top(t, "|")
    if len(alternatives) > 1:
        return any(type_matches(value, a) for a in alternatives)
    m = re.fullmatch(r"(Optional|Union)\[(.*)\]", t)
    if m:
        options = _split_top(m.group(2), ",") + (["None"] if m.group(1) == "Optional" else [])
        return any(type_matches(value, o) for o in options)
    m = re.fullmatch(r"(list|List|Sequence|tuple|Tuple)\[(.*)\]", t)
    if m:
        inner = _split_top(m.group(2), ",")[0].replace("...", "Any")
        return isinstance(value, list) and all(type_matches(v, inner) for v in value)
    if re.fullmatch(r"(dict|Dict|Mapping)(\[.*\])?", t):
        return isinstance(value, dict)
    checks = {
        "None": lambda v: v is None,
        "NoneType": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "List": lambda v: isinstance(v, list),
        "tuple": lambda v: isinstance(v, list),
    }
    check = checks.get(t)
    return True if check is None else check(value)


_ACCEPTS = {
    "float": "an int or a float",
    "int": "an int (not a bool)",
    "bool": "true or false",
    "str": "a string",
}
_ITEMS = {"float": "numbers", "int": "ints", "bool": "booleans", "str": "strings"}
_LIST = re.compile(r"(list|List|Sequence|tuple|Tuple)\[(.*)\]")


def accepted(declared: str) -> str:
    """What a parameter declared as ``declared`` accepts, in words (``float``: an int or ...)."""
    optional = re.fullmatch(r"Optional\[(.*)\]", declared)
    base = optional.group(1) if optional else declared
    listed = _LIST.fullmatch(base.strip())
    if listed:
        inner = _split_top(listed.group(2), ",")[0]
        words = f"a list of {_ITEMS.get(inner, inner)}"
    else:
        words = _ACCEPTS.get(base, base)
    return f"{words}, or None" if optional else words


def list_hint(name: str, value: Any, declared: str, where: str) -> str:
    """How to give a list, when a single value was given for a list parameter ("" else).

    ``where`` says whose syntax to show: ``"papermill"`` (its ``-p`` passes one value,
    ``-y`` takes YAML) or ``"spec"`` (a sweep's YAML file).
    """
    listed = _LIST.fullmatch(re.sub(r"^Optional\[(.*)\]$", r"\1", declared.strip()))
    if listed is None or isinstance(value, list):
        return ""
    inner = _split_top(listed.group(2), ",")[0]
    if isinstance(value, str) and value.strip().startswith("["):
        example = value.strip()  # papermill's -p gave the text of a list
    elif type_matches(value, inner):
        example = f"[{value!r}]" if isinstance(value, str) else f"[{value}]"
    else:
        return ""
    if where == "papermill":
        return (f"write a list: papermill ... -y '{name}: {example}' "
                f"(papermill's -p passes a single value or text)")
    return f"write a list, e.g. {name}: {example}"
