"""The protocol specification, read from the code: `python -m swarmllm.protocol.spec --write | --check`.

`collect()` walks the protocol package's real schemas and returns a `Spec`: every module's
docstring; every pydantic model (the tagged unions `Message` and `PairMessage` and every other
wire, record and statement type) with each field's type, default, constraints and comment; the
enums (`ErrorCode`, `RecordKind`, ...) with each member's comment; the public constants (limits,
handler names, key prefixes); the frame layout bytes; the DHT record kinds and their keys; the
version range, upgrade command and history (versions.py). Types, defaults and constraints come
from pydantic's public API (`model_fields`, `FieldInfo.metadata`), comments from the source
(tokenize + ast), so the document says what the code does. `spec_render.render` turns a `Spec`
into Markdown, deterministically; docs/protocol.md is that text, and `--check` (run by
scripts/test.sh) fails with a diff summary when the file and the code disagree.

How a comment is attached to a field (or member, or constant), since the source writes them in
two styles: the comments on the field's own lines; a comment block right above a field is that
field's, unless it ends with ":" or the field has a comment of its own: then it heads the group of
fields it stands above; a block right below a field that has a trailing comment continues it when
it starts in lower case (not "vN:").

What it does not do: judge the schemas, or describe framings that live outside this package
(the transport's length prefix is swarm/node.py's). A record kind or a layout byte the tables
below do not describe makes `collect` fail, so a new one cannot go undocumented.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import enum
import importlib
import inspect
import pkgutil
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

import swarmllm.protocol as protocol_package
from swarmllm.protocol import versions
from swarmllm.protocol.spec_source import (
    Note, body_notes, comment_lines, constraint_texts, json_text, targets, type_text,
)

DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
# Modules in the order the document presents them; any other module of the package follows, by name.
MODULE_ORDER = ("messages", "versions", "errors", "codec", "compact_header", "int8_wire", "receipts", "envelope",
                "records", "owners", "pairing", "demand", "releases", "credits", "statements", "invite")
NOT_SPEC = frozenset({"spec", "spec_render", "spec_source"})
# What the code cannot say about each envelope kind: its body, the key function, who signs, where it travels.
RECORD_KINDS = {
    "server": ("records.ServerRecord", "records.block_key", "the node (body.peer_id)",
               "DHT, under every block key of its span (and of a claimed moving_to span)"),
    "model": ("records.ModelRecord", "records.model_registry_key", "a node serving the model", "DHT"),
    "pairing": ("pairing.PairingRecord", "pairing.pairing_key", "the waiting machine (body.peer_id)",
                "DHT, while `swarmllm pair` waits"),
    "demand": ("demand.DemandRecord", "demand.demand_key", "the gateway (body.gateway_id)", "DHT"),
    "release": ("releases.ReleaseRecord", "releases.RELEASE_KEY", "a trusted release key",
                "DHT, and a release.json beside the wheel"),
    "credits": ("credits.CreditStatement", "credits.credits_key", "the gateway (body.gateway)",
                "the credits stream (frame b\"K\"), not the DHT"),
    "credit_link": ("credits.CreditLink", "credits.link_key", "the node (body.node)",
                    "a line a node's owner hands to a gateway, not the DHT"),
    "reputation": ("statements.ReputationStatement", "statements.statement_key", "a gateway (body.issuer)",
                   "not distributed yet"),
}
LAYOUTS = {  # what follows each frame layout byte
    b"J": "[u32 header length, little endian][header JSON][payload]: any message of the `Message` union",
    b"S": "binary `Step` header (compact_header.py), then the payload",
    b"R": "binary `StepResult` header (compact_header.py), then the payload",
    b"V": "a whole `StepReceipt`: its signed fields, then the signature (receipts.py); no payload",
    b"K": "a `CreditStatement` envelope as one line of JSON (credits.py), on the credits stream only",
}
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")


class SpecIncomplete(Exception):
    """The code has something the spec's tables do not describe (a record kind, a layout byte)."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    default: str          # "required", or the default as JSON
    constraints: tuple[str, ...]
    comment: str
    refs: tuple[str, ...]  # models and enums the type names
    section: str = ""      # the note of the group of fields this one starts


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str
    doc: str
    tag: str              # the `type` literal of a message, "" for other models
    config: tuple[str, ...]
    checks: tuple[str, ...]  # validators and serializers, by name
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True)
class MemberSpec:
    name: str
    value: str
    comment: str
    section: str


@dataclass(frozen=True)
class EnumSpec:
    name: str
    module: str
    doc: str
    members: tuple[MemberSpec, ...]


@dataclass(frozen=True)
class ConstantSpec:
    name: str
    module: str
    value: str
    comment: str
    expression: str = ""  # as the source writes it, where that is not the value itself
    section: str = ""     # the note of the group of constants this one starts


@dataclass(frozen=True)
class UnionSpec:
    name: str
    module: str
    discriminator: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    doc: str
    unions: tuple[UnionSpec, ...]
    models: tuple[ModelSpec, ...]
    enums: tuple[EnumSpec, ...]
    constants: tuple[ConstantSpec, ...]


@dataclass(frozen=True)
class KindSpec:
    kind: str
    body: str
    key: str
    signer: str
    where: str


@dataclass(frozen=True)
class LayoutSpec:
    byte: str
    constant: str
    carries: str


@dataclass(frozen=True)
class Spec:
    our_range: tuple[int, int]
    upgrade_command: str
    refusals: tuple[str, ...]   # the sentences a peer hears when ranges do not overlap
    history: tuple[tuple[int, str], ...]
    modules: tuple[ModuleSpec, ...]
    kinds: tuple[KindSpec, ...]
    layouts: tuple[LayoutSpec, ...]


def field_spec(name: str, info, note: Note) -> FieldSpec:
    refs: list[str] = []
    kind = type_text(info.annotation, refs)
    if info.is_required():
        default = "required"
    elif info.default_factory is not None:
        default = json_text(info.default_factory())
    else:
        default = json_text(info.default)
    return FieldSpec(name, kind, default, tuple(constraint_texts(info.metadata)), note.comment,
                     tuple(dict.fromkeys(refs)), note.section)


# --- walking the package -------------------------------------------------------------------------
def protocol_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(protocol_package.__path__) if m.name not in NOT_SPEC]
    ordered = [n for n in MODULE_ORDER if n in names] + sorted(n for n in names if n not in MODULE_ORDER)
    return [importlib.import_module(f"swarmllm.protocol.{name}") for name in ordered]


def _checks(node: ast.ClassDef) -> tuple[str, ...]:
    """The model's own validators and serializers by name, e.g. ("validated: range not empty",)."""
    validated, serialized = [], []
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            decorators = [ast.unparse(d) for d in item.decorator_list]
            name = item.name.strip("_").replace("_", " ")
            if item.name == "model_post_init" or any("validator" in d for d in decorators):
                validated.append(name)
            elif any("serializer" in d for d in decorators):
                serialized.append(name)
    return tuple(f"{what}: {', '.join(names)}" for what, names in (("validated", validated),
                                                                   ("serialized", serialized)) if names)


def model_spec(cls: type[BaseModel], node: ast.ClassDef, comments) -> ModelSpec:
    notes = body_notes(node.body, comments)
    fields = tuple(field_spec(name, info, notes.get(name, Note())) for name, info in cls.model_fields.items())
    tag = cls.model_fields["type"].default if "type" in cls.model_fields else ""
    config = cls.model_config
    flags = [text for key, value, text in (("frozen", True, "frozen"), ("extra", "forbid", "unknown fields refused"),
                                           ("allow_inf_nan", False, "numbers finite"), ("strict", True, "strict types"))
             if config.get(key) == value]
    return ModelSpec(cls.__name__, cls.__module__.rsplit(".", 1)[-1], inspect.cleandoc(cls.__doc__ or ""), tag,
                     tuple(flags), _checks(node), fields)


def enum_spec(cls: type[enum.Enum], node: ast.ClassDef, comments) -> EnumSpec:
    notes = body_notes(node.body, comments)
    members = tuple(MemberSpec(m.name, json_text(m.value), notes.get(m.name, Note()).comment,
                               notes.get(m.name, Note()).section) for m in cls)
    return EnumSpec(cls.__name__, cls.__module__.rsplit(".", 1)[-1], inspect.cleandoc(cls.__doc__ or ""), members)


def _union_members(value) -> tuple[tuple[type, ...], str]:
    discriminator = ""
    if typing.get_origin(value) is typing.Annotated:
        discriminator = next((getattr(a, "discriminator", "") or "" for a in typing.get_args(value)[1:]), "")
        value = typing.get_args(value)[0]
    if typing.get_origin(value) is not typing.Union:
        return (), ""
    members = typing.get_args(value)
    if not all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return (), ""
    return members, discriminator


def _simple(value) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_simple(v) for v in value)
    return isinstance(value, (bool, int, float, str, bytes))


def _expression(source: str, statement: ast.stmt, value: str) -> str:
    """The source of a single constant's value when it is a computation (30 * 86400.0), else ""."""
    if not isinstance(statement, (ast.Assign, ast.AnnAssign)) or isinstance(getattr(statement, "targets", [None])[0],
                                                                             ast.Tuple):
        return ""
    written = ast.get_source_segment(source, statement.value) or ""
    literal = isinstance(statement.value, (ast.Constant, ast.Tuple, ast.List, ast.Set)) or \
        (isinstance(statement.value, ast.Call) and ast.unparse(statement.value.func) in ("frozenset", "tuple"))
    return "" if literal or written == value or "\n" in written else written


def module_spec(module: types.ModuleType) -> ModuleSpec:
    source = inspect.getsource(module)
    tree, comments = ast.parse(source), comment_lines(source)
    short = module.__name__.rsplit(".", 1)[-1]
    notes = body_notes(tree.body, comments)
    models, enums, unions, constants = [], [], [], []
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef) and not statement.name.startswith("_"):
            cls = getattr(module, statement.name)
            if issubclass(cls, BaseModel):
                models.append(model_spec(cls, statement, comments))
            elif issubclass(cls, enum.Enum):
                enums.append(enum_spec(cls, statement, comments))
        for name in targets(statement):
            value = getattr(module, name, None)
            members, discriminator = _union_members(value)
            if members:
                unions.append(UnionSpec(name, short, discriminator, tuple(m.__name__ for m in members)))
            elif _CONSTANT.match(name) and _simple(value):
                constants.append(ConstantSpec(name, short, json_text(value), notes[name].comment,
                                              _expression(source, statement, json_text(value)),
                                              notes[name].section))
    return ModuleSpec(short, inspect.cleandoc(module.__doc__ or ""), tuple(unions), tuple(models), tuple(enums),
                      tuple(constants))


def _resolve(dotted: str):
    module, _, name = dotted.partition(".")
    return getattr(importlib.import_module(f"swarmllm.protocol.{module}"), name)


def _key_text(function) -> str:
    if isinstance(function, str):
        return function
    return function(*(f"{{{name}}}" for name in inspect.signature(function).parameters))


def kind_specs(modules: list[ModuleSpec]) -> tuple[KindSpec, ...]:
    from swarmllm.protocol.records import RecordKind
    known = {kind.value for kind in RecordKind}
    known |= {c.value.strip('"') for m in modules for c in m.constants if c.name.endswith("_KIND")}
    missing = sorted(known - set(RECORD_KINDS))
    if missing:
        raise SpecIncomplete(f"record kinds {missing} are not described in spec.RECORD_KINDS")
    return tuple(KindSpec(kind, body.split(".")[1], _key_text(_resolve(key)), signer, where)
                 for kind, (body, key, signer, where) in RECORD_KINDS.items() if kind in known)


def layout_specs(modules: list[ModuleSpec]) -> tuple[LayoutSpec, ...]:
    found = {}
    for module in modules:
        for constant in module.constants:
            if constant.name.startswith("LAYOUT_"):
                found[getattr(importlib.import_module(f"swarmllm.protocol.{module.name}"), constant.name)] = \
                    f"{module.name}.{constant.name}"
    missing = sorted(set(found) - set(LAYOUTS))
    if missing:
        raise SpecIncomplete(f"frame layouts {missing} are not described in spec.LAYOUTS")
    return tuple(LayoutSpec(byte.decode(), constant, LAYOUTS[byte]) for byte, constant in found.items())


def collect() -> Spec:
    modules = [module_spec(m) for m in protocol_modules()]
    ours = versions.OUR_RANGE
    refusals = (versions.incompatibility(ours, (ours[1] + 1, ours[1] + 1)),
                versions.incompatibility(ours, (ours[0] - 1, ours[0] - 1)))
    return Spec(ours, versions.UPGRADE_COMMAND, refusals, tuple(sorted(versions.HISTORY.items())), tuple(modules),
                kind_specs(modules), layout_specs(modules))


# --- the command ---------------------------------------------------------------------------------
def check(text: str, path: Path) -> list[str]:
    """Lines of a diff summary when `path` does not hold `text`; [] when it does."""
    current = path.read_text() if path.exists() else ""
    if current == text:
        return []
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(path), "the code", lineterm="", n=1))
    changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    return [f"{path} does not match the protocol's code ({changed} lines differ); regenerate it with "
            f"`python -m swarmllm.protocol.spec --write` and commit it:", *diff[:60],
            *([f"... ({len(diff) - 60} more diff lines)"] if len(diff) > 60 else [])]


def main(argv: list[str] | None = None) -> int:
    from swarmllm.protocol.spec_render import render

    parser = argparse.ArgumentParser(prog="python -m swarmllm.protocol.spec", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the document from the code")
    action.add_argument("--check", action="store_true", help="exit 1 when the document does not match the code")
    parser.add_argument("--path", type=Path, default=DOC_PATH, help=f"the document (default {DOC_PATH})")
    args = parser.parse_args(argv)
    text = render(collect())
    if args.write:
        args.path.write_text(text)
        print(f"wrote {args.path} ({len(text.splitlines())} lines)")
        return 0
    problems = check(text, args.path)
    print("\n".join(problems) or f"{args.path} matches the protocol's code")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
