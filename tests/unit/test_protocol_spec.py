"""docs/protocol.md is generated from the protocol's code and says all of it: every message, field, error
code, record kind and layout byte; a changed schema makes `--check` fail; the rendering is deterministic."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import typing
from typing import Annotated

import pytest
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

import swarmllm.protocol as protocol_package
from swarmllm.protocol import ErrorCode, Message, OpenSession, PROTOCOL_VERSION, RecordKind, spec, versions
from swarmllm.protocol.spec_render import render
from swarmllm.protocol.spec_source import body_notes, comment_lines


@pytest.fixture(scope="module")
def document() -> str:
    return render(spec.collect())


def _section(document: str, name: str) -> str:
    """The text of `### name` up to the next heading."""
    match = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^##)", document, re.S | re.M)
    assert match, f"no section for {name}"
    return match.group(1)


def _models_found_independently() -> list[type[BaseModel]]:
    """Every public pydantic model defined in the protocol package, found without spec.py's walk."""
    found = []
    for info in pkgutil.iter_modules(protocol_package.__path__):
        module = importlib.import_module(f"swarmllm.protocol.{info.name}")
        found += [cls for name, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, BaseModel) and cls.__module__ == module.__name__ and not name.startswith("_")]
    return found


def test_every_message_of_the_union_has_its_section_with_its_tag(document):
    members = typing.get_args(typing.get_args(Message)[0])
    assert len(members) >= 16
    for cls in members:
        section = _section(document, cls.__name__)
        assert f'Tag: `type = "{cls.model_fields["type"].default}"`' in section
        assert f"[{cls.__name__}](#{cls.__name__.lower()})" in document  # listed under Messages


def test_every_error_code_appears_with_its_value_and_comment(document):
    section = document.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    for code in ErrorCode:
        assert f"| `{code.value}` | `{code.name}` | " in section
    assert "| `forbidden` | `FORBIDDEN` | the sender may not do this to the session (not its opener, not its upstream" \
           " server" in section  # a comment continued on the next line is whole
    assert section.index("*Raised by the client about a server") < section.index("| `unreachable`")


def test_every_field_of_every_protocol_model_appears_in_its_section(document):
    models = _models_found_independently()
    assert {"ServerRecord", "SignedRecord", "PairHello", "CreditStatement", "Invite", "OwnerCertificate",
            "ReleaseRecord", "DemandRecord", "ReputationStatement", "ComputeClass"} <= {m.__name__ for m in models}
    for cls in models:
        section = _section(document, cls.__name__)
        for name in cls.model_fields:
            assert f"| `{name}` | " in section, f"{cls.__name__}.{name} is missing from docs/protocol.md"


def test_types_bounds_defaults_and_comments_come_from_the_schemas(document):
    step, ring, record = (_section(document, n) for n in ("Step", "RingSampling", "ServerRecord"))
    assert "| `token_ids` | `tuple[int, ...] \\| null` | `null` | length \\<= 8192 | v6: token ids instead" in step
    assert "`tuple[int (>= 0, < 2**31), ...]` | `[]` | length \\<= 2**17 |" in ring
    assert "| `queued_steps` | `int` | `0` | >= 0, \\<= 2**20 | v7: steps waiting" in record
    assert "| `compute_class` | `ComputeClass` ([ComputeClass](#computeclass)) | `ComputeClass()` |" in record
    assert "*v9: the node's counters when it announced" in record  # a group's note heads its fields
    assert "validated: before v8, spans within the model" in record
    read_range = _section(document, "ReadRange")
    assert "whatever its name (a lite client reading the header) |" in read_range.split("| `offset`")[0]


def test_record_kinds_keys_layouts_handlers_and_versions_are_listed(document):
    for kind in RecordKind:
        assert f"| `{kind.value}` | " in document
    assert "| `server` | [ServerRecord](#serverrecord) | `swarmllm.v1.{model_id}.block{block}` |" in document
    for layout in ("J", "S", "R", "V", "K"):
        assert f'| `b"{layout}"` | ' in document
    assert "| `swarmllm.v1.session` | `messages.SESSION_HANDLER` | client -> each server of the chain |" in document
    low, high = versions.OUR_RANGE
    assert f"speaks protocol versions v{low} to v{high}" in document and versions.UPGRADE_COMMAND in document
    for version in versions.HISTORY:
        assert f"| v{version} | " in document
    assert "| *What a DHT node stores for others (swarm/validation.py)" in document  # a constants group's note


def test_history_is_contiguous_and_ends_at_the_current_version():
    assert sorted(versions.HISTORY) == list(range(1, PROTOCOL_VERSION + 1))


def test_an_undescribed_record_kind_or_layout_fails_the_walk(monkeypatch):
    # (whole tables replaced, not items deleted: undoing a delitem would move the item to the end)
    monkeypatch.setattr(spec, "RECORD_KINDS", {k: v for k, v in spec.RECORD_KINDS.items() if k != "demand"})
    with pytest.raises(spec.SpecIncomplete, match="demand"):
        spec.collect()
    monkeypatch.undo()
    monkeypatch.setattr(spec, "LAYOUTS", {k: v for k, v in spec.LAYOUTS.items() if k != b"V"})
    with pytest.raises(spec.SpecIncomplete, match="V"):
        spec.collect()


def test_a_changed_schema_makes_check_fail_with_a_diff(tmp_path, monkeypatch, capsys):
    path = tmp_path / "protocol.md"
    assert spec.main(["--write", "--path", str(path)]) == 0
    assert spec.main(["--check", "--path", str(path)]) == 0
    narrower = FieldInfo.from_annotation(Annotated[str, Field(min_length=8, max_length=32)])
    monkeypatch.setitem(OpenSession.model_fields, "session_id", narrower)
    capsys.readouterr()
    assert spec.main(["--check", "--path", str(path)]) == 1
    out = capsys.readouterr().out
    assert "does not match the protocol's code" in out and "--write" in out
    assert "+| `session_id` | `str` | required | length >= 8, length \\<= 32 |" in out
    monkeypatch.undo()
    monkeypatch.setitem(versions.HISTORY, PROTOCOL_VERSION + 1, "a version nobody wrote")
    assert spec.main(["--check", "--path", str(path)]) == 1


def test_the_committed_document_matches_the_code(document):
    assert spec.check(document, spec.DOC_PATH) == [], "run `python -m swarmllm.protocol.spec --write` and commit"


def test_rendering_is_deterministic_across_processes_and_hash_seeds(document):
    code = "import sys; from swarmllm.protocol import spec, spec_render; " \
           "sys.stdout.write(spec_render.render(spec.collect()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert other == document == render(spec.collect())


def test_comments_are_attached_by_the_documented_rules():
    source = '''class Example:
    a: int = 1  # a's comment
    # continues a's
    # Leading note of b
    b: int = 2
    # v3: a version note, of c
    c: int = 3
    # Group of d and e:
    d: int = 4  # d's own
    # Heads e because e has its own comment
    e: int = 5  # e's own
    f: int = 6  # f's comment
    # goes on, and g has none
    g: int = 7
'''
    notes = body_notes(ast.parse(source).body[0].body, comment_lines(source))
    assert notes["a"].comment == "a's comment continues a's"
    assert notes["b"].comment == "Leading note of b"
    assert notes["c"].comment == "v3: a version note, of c"
    assert (notes["d"].comment, notes["d"].section) == ("d's own", "Group of d and e:")
    assert (notes["e"].comment, notes["e"].section) == ("e's own", "Heads e because e has its own comment")
    assert (notes["f"].comment, notes["g"].comment) == ("f's comment goes on, and g has none", "")
