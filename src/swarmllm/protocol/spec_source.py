"""Reading the protocol's source for its spec (spec.py): comments, and pydantic's types and bounds as text.

`body_notes` gives the comment of every name a class or module body assigns (spec.py's docstring
says how a comment is attached); `type_text`, `constraint_texts` and `json_text` write a field's
type, bounds and default the way docs/protocol.md shows them, from pydantic's public API
(`FieldInfo.annotation`, `FieldInfo.metadata`, read by attribute name). Pure: no files, no imports
of the protocol.
"""

from __future__ import annotations

import ast
import enum
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass

from pydantic import BaseModel

_CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"))
_VERSION_TAG = re.compile(r"^v\d+\b")


@dataclass(frozen=True)
class Note:
    comment: str = ""
    section: str = ""   # a heading comment that starts with this item (and holds for those after it)


# --- comments from the source -------------------------------------------------------------------
def comment_lines(source: str) -> dict[int, tuple[str, bool]]:
    """line -> (comment text, whether the comment is the whole line)."""
    lines, found = source.splitlines(), {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            found[row] = (token.string.lstrip("#").strip(), not lines[row - 1][:col].strip())
    return found


def targets(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return [statement.target.id]
    if isinstance(statement, ast.Assign):
        names = []
        for target in statement.targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names += [e.id for e in elements if isinstance(e, ast.Name)]
        return names
    return []


def _blocks(comments: dict[int, tuple[str, bool]], first: int, last: int) -> list[tuple[int, int, list[str]]]:
    """Runs of whole-line comments within lines [first, last]: (start line, end line, texts)."""
    runs: list[tuple[int, int, list[str]]] = []
    for row in range(first, last + 1):
        if row in comments and comments[row][1]:
            if runs and runs[-1][1] == row - 1:
                runs[-1] = (runs[-1][0], row, runs[-1][2] + [comments[row][0]])
            else:
                runs.append((row, row, [comments[row][0]]))
    return runs


def _continuation(texts: list[str]) -> int:
    """How many of a block's first lines continue the comment above: up to the first that starts a
    sentence (upper case), a version note ("v6: ...") or ends a heading (":")."""
    for k, line in enumerate(texts):
        if line[:1].isupper() or _VERSION_TAG.match(line) or line.endswith(":"):
            return k
    return len(texts)


def body_notes(body: list[ast.stmt], comments: dict[int, tuple[str, bool]]) -> dict[str, Note]:
    """The comment of every name assigned in `body` (module docstring: how comments are attached)."""
    leading: dict[int, list[str]] = {}
    trailing: dict[int, list[str]] = {}
    for i, statement in enumerate(body):
        trailing[i] = [comments[r][0] for r in range(statement.lineno, statement.end_lineno + 1) if r in comments]
        following = body[i + 1].lineno - 1 if i + 1 < len(body) else statement.end_lineno + 200
        for start, end, texts in _blocks(comments, statement.end_lineno + 1, following):
            if start == statement.end_lineno + 1 and trailing[i]:
                continued = _continuation(texts)
                trailing[i] += texts[:continued]
                texts = texts[continued:]
            if texts and end == following and i + 1 < len(body):
                leading[i + 1] = texts
    notes = {}
    for i, statement in enumerate(body):
        above = " ".join(leading.get(i, []))
        heading = above if above.endswith(":") or (above and trailing[i]) else ""  # a group's note
        comment = " ".join(([above] if above and not heading else []) + trailing[i])
        for name in targets(statement):
            notes[name] = Note(comment, heading)
    return notes


# --- types, defaults and constraints ------------------------------------------------------------
def constraint_texts(metadata) -> list[str]:
    """Readable bounds from a field's metadata (annotated_types and pydantic objects, by public attribute)."""
    found = {}
    for item in metadata:
        for name in ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern", "allow_inf_nan",
                     "strict"):
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    texts = [f"{symbol} {number_text(found[name])}" for name, symbol in _CONSTRAINTS if name in found]
    low, high = found.get("min_length"), found.get("max_length")
    if low is not None and low == high:
        texts.append(f"length {low}")
    else:
        texts += [f"length >= {low}"] if low is not None else []
        texts += [f"length <= {number_text(high)}"] if high is not None else []
    texts += [f"pattern `{found['pattern']}`"] if "pattern" in found else []
    texts += ["finite"] if found.get("allow_inf_nan") is False else []
    texts += ["strict"] if found.get("strict") else []
    return texts


def number_text(value) -> str:
    """Numbers as written in the source: 2**16 rather than 65536, 1e+09 as 1e9."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**16 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e6:
        short = f"{value:.0e}".replace("e+0", "e").replace("e+", "e")
        return short if float(short) == value else repr(value)
    return repr(value)


def type_text(annotation, refs: list[str]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        bounds = [text for extra in args[1:] for text in constraint_texts(getattr(extra, "metadata", [extra]))]
        base = type_text(args[0], refs)
        return f"{base} ({', '.join(bounds)})" if bounds else base
    if origin is typing.Literal:
        return " | ".join(json_text(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a, refs) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_text(args[0], refs)}, ...]"
        return f"tuple[{', '.join(type_text(a, refs) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, (BaseModel, enum.Enum)):
        refs.append(annotation.__name__)
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation)


def json_text(value) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value, key=repr) if isinstance(value, (frozenset, set)) else value
        return "[" + ", ".join(json_text(v) for v in items) + "]"
    if isinstance(value, BaseModel):
        return f"{type(value).__name__}()" if value == type(value)() else value.model_dumpjson_text()
    return number_text(value) if isinstance(value, (int, float)) else repr(value)
