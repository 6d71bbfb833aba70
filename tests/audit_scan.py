"""Every audit action the code can write, found by reading the code (ast), with the detail
keys written beside it: what the SIEM mapping (bot/siem/ocsf.py) must cover.

Audit rows are written through a few callables (the audit port, the store's
`append_audit`, `AuditNote`, the relay's `_audit` and `_retire`, `pin_identity`), directly
or handed to `in_thread`/`asyncio.to_thread`. The action is a literal almost everywhere;
the other forms are resolved, never skipped:

- a name bound in the same function or module (`action = "room.updated"`, a dict of them
  indexed by a kind, `REGISTER_KEYED`): every value it can take;
- an f-string over a parameter typed with an Enum (`f"event.{outcome}"`): every member;
- a parameter of a function that is itself a writer (`_audit(self, actor, action, ...)`):
  its callers are scanned;
- `note.action`: an AuditNote handed on; the AuditNote's construction is scanned.

Anything else is reported as unresolved, and so is any call whose name mentions "audit"
that is neither a known writer nor a known reader: a new way to write audit rows fails the
test until it is taught here, rather than slipping past it.
"""

from __future__ import annotations

import ast
import importlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("bot", "commands")

# Callable name -> (index of the action among the arguments, index of the detail or None).
# A method call (`self.store.append_audit(actor, action, ...)`) and the module function
# (`append_audit(session, actor, action, ...)`) differ: see `_positions`.
WRITERS: dict[str, tuple[int, int | None]] = {
    "audit": (1, 3),  # the audit port: (actor, action, subject, detail)
    "_audit": (1, None),  # relay: (actor, action, room, source, detail); keyshare: port's
    "append_audit": (1, 3),  # Store.append_audit(actor, action, subject, detail)
    "AuditNote": (1, 3),
    "_retire": (1, None),  # relay: (row, action, **detail)
    "pin_identity": (3, None),  # Store.pin_identity(user_id, key, actor, action)
}
# Functions that take an action as a parameter and write it: their callers are scanned.
PASS_THROUGH = frozenset(
    {"_audit", "_retire", "append_audit", "pin_identity", "StoreAudit.__call__"}
)
# Names that mention the audit log but write no row.
READERS = frozenset(
    {
        "AuditEntry",
        "AuditHeadRow",
        "AuditInfo",
        "AuditRow",
        "AuditVerdict",
        "StoreAudit",
        "add_audit_listener",
        "audit_after",
        "audit_rows_after",
        "remove_audit_listener",
        "audit_hash",
        "audit_key_from",
        "audit_line",
        "audit_recent",
        "audit_verify",
        "from_audit_key",
        "has_audit_action",
        "key_audit_log",
        "recent_audit",
        "verify_audit",
    }
)
THREAD_HOPS = frozenset({"in_thread", "to_thread"})


@dataclass
class Scan:
    actions: dict[str, set[str]] = field(default_factory=dict)  # action -> where written
    keys: dict[str, set[str]] = field(default_factory=dict)  # action -> literal detail keys
    unresolved: list[str] = field(default_factory=list)
    unknown_calls: list[str] = field(default_factory=list)


def scan() -> Scan:
    result = Scan()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            _scan_file(path, result)
    return result


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _scan_file(path: Path, result: Scan) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    where = str(path.relative_to(ROOT))
    for scope, qualname, call in _calls(tree):
        name = _name(call.func)
        if name is None:
            continue
        args: list[ast.expr] = list(call.args)
        target = call.func
        if name in THREAD_HOPS and args:
            target, args = args[0], args[1:]
            name = _name(target)
            if name is None:
                continue
        if name not in WRITERS:
            if "audit" in name.lower() and name not in READERS:
                result.unknown_calls.append(f"{where}:{call.lineno} {name}(...)")
            continue
        action_at, detail_at = WRITERS[name]
        if name == "append_audit" and isinstance(target, ast.Name):
            action_at, detail_at = 2, 4  # the module function takes the session first
        action = _keyword(call, "action")
        if action is None:
            if len(args) <= action_at:
                if isinstance(target, ast.Name) and name in READERS:
                    continue
                result.unresolved.append(f"{where}:{call.lineno} {name}: no action argument")
                continue
            action = args[action_at]
        values = _resolve(action, scope, tree, module, qualname)
        if values is None:
            result.unresolved.append(f"{where}:{call.lineno} {name}: {ast.unparse(action)}")
            continue
        detail = _keyword(call, "detail")
        if detail is None and detail_at is not None and len(args) > detail_at:
            detail = args[detail_at]
        if detail is None and name == "_audit" and len(args) > 4:
            detail = args[4]  # the relay's (actor, action, room, source, detail)
        keys = _literal_keys(detail) | {k.arg for k in call.keywords if k.arg and name == "_retire"}
        for value in values:
            result.actions.setdefault(value, set()).add(f"{where}:{call.lineno}")
            result.keys.setdefault(value, set()).update(keys)


def _calls(tree: ast.Module) -> Iterator[tuple[ast.AST, str, ast.Call]]:
    """Every call, with its enclosing function (or the module) and that one's qualname."""

    def walk(
        node: ast.AST, scope: ast.AST, qualname: str
    ) -> Iterator[tuple[ast.AST, str, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, scope, child.name)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = f"{qualname}.{child.name}" if qualname else child.name
                yield from walk(child, child, inner)
            else:
                if isinstance(child, ast.Call):
                    yield scope, qualname, child
                yield from walk(child, scope, qualname)

    yield from walk(tree, tree, "")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _literal_keys(node: ast.expr | None) -> set[str]:
    if not isinstance(node, ast.Dict):
        return set()
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _resolve(
    node: ast.expr, scope: ast.AST, tree: ast.Module, module: str, qualname: str
) -> set[str] | None:
    """Every string the expression can be, or None when that cannot be told."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        a = _resolve(node.body, scope, tree, module, qualname)
        b = _resolve(node.orelse, scope, tree, module, qualname)
        return a | b if a is not None and b is not None else None
    if isinstance(node, ast.Dict):
        out: set[str] = set()
        for value in node.values:
            got = _resolve(value, scope, tree, module, qualname)
            if got is None:
                return None
            out |= got
        return out
    if isinstance(node, ast.Subscript):  # a table of actions indexed by a kind
        return _resolve(node.value, scope, tree, module, qualname)
    if isinstance(node, ast.Attribute) and node.attr == "action":
        return set()  # an AuditNote handed on: its construction is scanned
    if isinstance(node, ast.JoinedStr):
        return _resolve_fstring(node, scope, module)
    if isinstance(node, ast.Name):
        if _is_parameter(node.id, scope):
            short = qualname.rsplit(".", 1)[-1]
            return set() if qualname in PASS_THROUGH or short in PASS_THROUGH else None
        bound = _assigned(node.id, scope) or _assigned(node.id, tree)
        if not bound:
            return None
        out = set()
        for value in bound:
            got = _resolve(value, scope, tree, module, qualname)
            if got is None:
                return None
            out |= got
        return out
    return None


def _is_parameter(name: str, scope: ast.AST) -> bool:
    if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    a = scope.args
    return any(arg.arg == name for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs])


def _assigned(name: str, scope: ast.AST) -> list[ast.expr]:
    """The values assigned to `name` directly in this scope (not in nested functions)."""
    values: list[ast.expr] = []
    body = (
        scope.body if isinstance(scope, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef) else []
    )
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                values.append(node.value)
        elif (
            isinstance(node, ast.AnnAssign)
            and node.value is not None
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            values.append(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return values


def _resolve_fstring(node: ast.JoinedStr, scope: ast.AST, module: str) -> set[str] | None:
    """An f-string whose placeholders are parameters typed with an Enum: every member."""
    parts: list[list[str]] = []
    for piece in node.values:
        if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
            parts.append([piece.value])
            continue
        if not (isinstance(piece, ast.FormattedValue) and isinstance(piece.value, ast.Name)):
            return None
        enum = _enum_parameter(piece.value.id, scope, module)
        if enum is None:
            return None
        parts.append([str(member) for member in enum])
    return {"".join(combo) for combo in itertools.product(*parts)}


def _enum_parameter(name: str, scope: ast.AST, module: str) -> type[Enum] | None:
    if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    a = scope.args
    arg = next((x for x in [*a.posonlyargs, *a.args, *a.kwonlyargs] if x.arg == name), None)
    if arg is None or not isinstance(arg.annotation, ast.Name):
        return None
    found = getattr(importlib.import_module(module), arg.annotation.id, None)
    return found if isinstance(found, type) and issubclass(found, Enum) else None
