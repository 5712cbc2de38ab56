"""`--where` expressions: a small, safe subset of Python over a set's metadata columns, compiled to a
pyarrow expression (never evaluated as Python).

    parse_where("clip_score > 28 and class_id in (1, 3)", schema)  # pc.Expression
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}  # fmt: skip
ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}  # fmt: skip
ACCEPTED = "columns, numbers, 'strings', true/false, comparisons (< <= > >= == !=), in (...), +-*/, and, or, not"


class WhereError(ValueError):
    """A --where expression this module cannot take: the message names the part and what is accepted."""


def column_names(text: str) -> set[str]:
    """The names an expression mentions (empty when it does not parse: `parse_where` says why)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """`text` as a pyarrow filter over `schema`; WhereError for anything else (unknown columns named
    with the known ones, types that cannot be compared)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise WhereError(f"--where {text!r}: not an expression ({err.msg}); accepted: {ACCEPTED}") from None
    expr = _compile(tree.body, text, schema)
    try:  # types are checked by filtering an empty table of the same schema
        schema.empty_table().filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as err:
        first = str(err).splitlines()[0]
        raise WhereError(f"--where {text!r}: does not apply to the set's columns ({first})") from None
    return expr


def _compile(node: ast.expr, text: str, schema: pa.Schema) -> Any:
    def again(child: ast.expr) -> Any:
        return _compile(child, text, schema)

    if isinstance(node, ast.BoolOp):
        parts = [again(v) for v in node.values]
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        out = parts[0]
        for part in parts[1:]:
            out = combine(out, part)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~again(node.operand)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return operator.neg(again(node.operand))
    if isinstance(node, ast.Compare):
        out, left = None, node.left
        for op, right in zip(node.ops, node.comparators, strict=True):  # a < b < c: (a < b) and (b < c)
            part = _comparison(op, again(left), right, text, schema)
            out = part if out is None else out & part
            left = right
        return out
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](again(node.left), again(node.right))
    if isinstance(node, ast.Name):
        if node.id in ("true", "false"):
            return pc.scalar(node.id == "true")
        if node.id not in schema.names:
            known = ", ".join(schema.names)
            raise WhereError(f"--where {text!r}: unknown column {node.id!r}; the set's columns: {known}")
        return pc.field(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
        return pc.scalar(node.value)
    part = ast.get_source_segment(text.strip(), node) or type(node).__name__
    raise WhereError(f"--where {text!r}: {part!r} is not accepted; accepted: {ACCEPTED}")


def _comparison(op: ast.cmpop, left: Any, right: ast.expr, text: str, schema: pa.Schema) -> Any:
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(right, (ast.Tuple, ast.List)) or not all(isinstance(e, ast.Constant) for e in right.elts):
            raise WhereError(f"--where {text!r}: 'in' takes a list of constants, e.g. class_id in (1, 3)")
        member = left.isin([e.value for e in right.elts])  # type: ignore[attr-defined]
        return ~member if isinstance(op, ast.NotIn) else member
    if type(op) not in COMPARISONS:
        raise WhereError(f"--where {text!r}: comparison {type(op).__name__} is not accepted; accepted: {ACCEPTED}")
    return COMPARISONS[type(op)](left, _compile(right, text, schema))
