"""Markdown of a protocol `Spec` (spec.py): what docs/protocol.md holds.

`render(spec)` is a pure function of the spec: the same code always gives the same bytes (no
dates, no dict or set order, no environment), which is what lets CI compare the committed
document with the code. Module docstrings go into text blocks exactly as written (their
diagrams are aligned by spaces); class docstrings, comments and table cells are escaped where
Markdown would eat them (`|`, `<`). It reads no files and imports nothing but the standard library.
"""

from __future__ import annotations

import re

_SPAN = re.compile(r"(`[^`]*`)")


def text(value: str) -> str:
    """Prose for a table cell or paragraph: `|` and `<` escaped outside code spans, `|` inside them too."""
    parts = []
    for part in _SPAN.split(value):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            parts.append(part.replace("|", "\\|"))
        else:
            parts.append(part.replace("|", "\\|").replace("<", "\\<"))
    return "".join(parts)


def code(value: str) -> str:
    """A code span that survives a table cell (`|` escaped, backticks widened when the value has one)."""
    fence = "``" if "`" in value else "`"
    pad = " " if "`" in value else ""
    return f"{fence}{pad}{value.replace('|', chr(92) + '|')}{pad}{fence}"


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", name.lower()).replace(" ", "-")


def link(name: str, models: set[str]) -> str:
    return f"[{name}](#{anchor(name)})" if name in models else code(name)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def paragraphs(doc: str) -> list[str]:
    """A class docstring as Markdown: indented lines stay as they are (code), the rest is escaped prose."""
    return [line if line.startswith("    ") else text(line) for line in doc.splitlines()]


def _all(spec, attribute):
    return [item for module in spec.modules for item in getattr(module, attribute)]


def _versions(spec) -> list[str]:
    low, high = spec.our_range
    lines = ["## Versions", "",
             f"This code speaks protocol versions v{low} to v{high} (`versions.OUR_RANGE`: "
             f"[`MIN_PROTOCOL_VERSION`, `PROTOCOL_VERSION`]). Two peers interoperate when their ranges overlap "
             "and speak the highest version both know (`versions.negotiate`); otherwise the side whose range lies "
             f"wholly below the other's must upgrade (`{spec.upgrade_command}`), and the refusal "
             "(`ErrorReply(version_mismatch)`) says so, e.g.:", ""]
    lines += [f"- {text(sentence)}" for sentence in spec.refusals]
    lines += ["", "How a release moves the range is in the [messages](#messagespy) module's docstring (Versions); "
              "the fields that carry a range are `OpenSession.protocol_version` / `min_protocol_version`, "
              "`SessionOpened.protocol_version` and `ServerRecord.protocol_version` / `min_protocol_version`.", ""]
    rows = [(f"v{version}", "spoken" if low <= version <= high else "no longer spoken", text(change))
            for version, change in spec.history]
    return lines + table(("version", "status", "what changed (`versions.HISTORY`)"), rows) + [""]


def _overview(spec, models: set[str]) -> list[str]:
    lines = ["## Streams", "", "The libp2p stream handlers of this package (`*_HANDLER`). Each stream carries "
             "length-prefixed frames; the prefix and its size cap are the transport's (swarm/node.py), not this "
             "package's.", ""]
    handlers = [c for c in _all(spec, "constants") if c.name.endswith("_HANDLER")]
    lines += table(("handler", "constant", "who talks"),
                   [(code(c.value.strip('"')), code(f"{c.module}.{c.name}"), text(c.comment)) for c in handlers])
    lines += ["", "## Frames", "", "A frame of the session, push, ping and file streams is `[u8 layout][header]"
              "[payload]`; the layout byte says how the header is written. A layout's meaning never changes: a new "
              "one takes a new byte, and a node that meets a byte it does not know refuses the frame as `malformed`.",
              ""]
    lines += table(("byte", "constant", "what follows"),
                   [(code(f'b"{l.byte}"'), code(l.constant), text(l.carries)) for l in spec.layouts])
    lines += ["", "## DHT records and their keys", "", "Every value is a [SignedRecord](#signedrecord) "
              "(envelope.py), stored under the subkey that is its signer's peer id; `kind` names the body's schema. "
              "Keys are shown with their parameters in braces.", ""]
    lines += table(("kind", "body", "key", "signed by", "where it travels"),
                   [(code(k.kind), link(k.body, models), code(k.key), text(k.signer), text(k.where))
                    for k in spec.kinds])
    lines += ["", "## Messages", ""]
    for union in _all(spec, "unions"):
        how = f"tagged by `{union.discriminator}`" if union.discriminator else "told apart by the envelope's kind"
        lines.append(f"- `{union.module}.{union.name}` ({how}): " + ", ".join(link(m, models) for m in union.members))
    return lines + [""]


def _errors(spec) -> list[str]:
    lines = []
    for enum in _all(spec, "enums"):
        if enum.name != "ErrorCode":
            continue
        lines += ["## Error codes", "", text(enum.doc), "", "`ErrorReply.code` carries one of these values; a code "
                  "this version does not know reads as `unknown`.", ""]
        rows = []
        for member in enum.members:
            if member.section:
                rows.append((f"*{text(member.section)}*", "", ""))
            rows.append((code(member.value.strip('"')), code(member.name), text(member.comment)))
        lines += table(("code", "name", "meaning"), rows) + [""]
    return lines


def _model(model, models: set[str]) -> list[str]:
    title = f"### {model.name}"
    lines = [title, ""]
    if model.tag:
        lines += [f"Tag: `type = \"{model.tag}\"`.", ""]
    if model.doc:
        lines += paragraphs(model.doc) + [""]
    notes = list(model.config) + list(model.checks)
    if notes:
        lines += ["*" + "; ".join(notes) + ".*", ""]
    rows = []
    for field in model.fields:
        if field.section:
            rows.append((f"*{text(field.section)}*", "", "", "", ""))
        comment = field.comment or ("the message's tag" if field.name == "type" and model.tag else "")
        kind = code(field.type)
        if field.refs and any(r in models for r in field.refs):
            kind += " (" + ", ".join(link(r, models) for r in field.refs) + ")"
        rows.append((code(field.name), kind, code(field.default) if field.default != "required" else "required",
                     text(", ".join(field.constraints)), text(comment)))
    return lines + table(("field", "type", "default", "constraints", "comment"), rows) + [""]


def _enum(enum) -> list[str]:
    lines = [f"### {enum.name}", ""] + (paragraphs(enum.doc) + [""] if enum.doc else [])
    rows = []
    for member in enum.members:
        if member.section:
            rows.append((f"*{text(member.section)}*", "", ""))
        rows.append((code(member.name), code(member.value), text(member.comment)))
    return lines + table(("member", "value", "comment"), rows) + [""]


def _module(module, models: set[str]) -> list[str]:
    lines = [f"## {module.name}.py", ""]
    if module.doc:
        lines += ["```text", *module.doc.splitlines(), "```", ""]
    for model in module.models:
        lines += _model(model, models)
    for enum in module.enums:
        shown_above = enum.name == "ErrorCode"  # the Error codes section
        lines += [f"### {enum.name}", "", "See [Error codes](#error-codes).", ""] if shown_above else _enum(enum)
    if module.constants:
        lines += [f"### Constants of {module.name}.py", ""]
        rows = []
        for constant in module.constants:
            if constant.section:
                rows.append((f"*{text(constant.section)}*", "", ""))
            value = code(constant.value) + (f" = {code(constant.expression)}" if constant.expression else "")
            rows.append((code(constant.name), value, text(constant.comment)))
        lines += table(("name", "value", "comment"), rows) + [""]
    return lines


def render(spec) -> str:
    models = {m.name for m in _all(spec, "models")} | {e.name for e in _all(spec, "enums")}
    lines = ["# The swarmllm protocol", "",
             "<!-- Generated from src/swarmllm/protocol by `python -m swarmllm.protocol.spec --write`; "
             "scripts/test.sh runs `--check`, which fails when this file and the code disagree. "
             "Do not edit by hand: change the code (its docstrings and comments) and regenerate. -->", "",
             "Every message, field, error code, DHT key and record, frame layout and versioning rule of swarmllm, "
             "read from the code's schemas: types, defaults and bounds from the pydantic models, comments from the "
             "source. The module sections repeat each module's docstring, which says who sends what and why.", "",
             "Contents: [Versions](#versions), [Streams](#streams), [Frames](#frames), "
             "[DHT records](#dht-records-and-their-keys), [Messages](#messages), [Error codes](#error-codes), then "
             "one section per module: " + ", ".join(f"[{m.name}.py](#{anchor(m.name + 'py')})"
                                                   for m in spec.modules) + ".", ""]
    lines += _versions(spec) + _overview(spec, models) + _errors(spec)
    for module in spec.modules:
        lines += _module(module, models)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
