"""A small, safe expression language for ``when:`` conditions on parents' results.

It is Python expression syntax, parsed with :mod:`ast` and evaluated by walking the tree over
an allow-list; nothing is ever passed to ``eval``. Allowed: literals (numbers, strings, True,
False, None, lists, tuples, dicts), names, ``x[key]``, arithmetic (``+ - * / // %``),
comparisons (``== != < <= > >= in not in``, chained), ``and``/``or``/``not``, ``a if c else b``,
and the functions ``len``, ``abs``, ``min``, ``max``, ``round``, ``int``, ``float``, ``str``,
``bool``. Names are ``inputs`` (parent id -> result) and each parent whose id is an identifier.
A parent's id may be written without the run prefix that ``Dag.instance()`` adds.

    when: "inputs['probe'] > 1000"
    when: "probe['status'] == 'ok' and len(probe['rows']) > 0"
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from titan_zmq.errors import ExprError

MAX_LENGTH = 2000
MAX_RESULT = 1_000_000  # items (characters, elements) a condition may build with * or +
_FUNCS: dict[str, Any] = {
    "len": len, "abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float, "str": str,
    "bool": bool,
}  # fmt: skip
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}  # fmt: skip
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b}  # fmt: skip


def parse(text: str) -> ast.Expression:
    """Parse and check an expression; raise ExprError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("a 'when' condition must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"a 'when' condition is limited to {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"'when' {text!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise ExprError(f"'when' {text!r}: only {', '.join(_FUNCS)} may be called")
        elif not isinstance(node, _ALLOWED):
            raise ExprError(f"'when' {text!r}: {type(node).__name__} is not allowed in a condition")
    return tree


_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
    *_BIN, ast.Compare, *_CMP, ast.IfExp, ast.Constant, ast.Name, ast.Load, ast.Subscript, ast.List,
    ast.Tuple, ast.Dict, ast.Call,
)  # fmt: skip


def evaluate(text: str, inputs: dict[str, Any]) -> Any:
    """The value of the condition over the parents' results; ExprError if it cannot be computed."""
    view = dict(inputs)
    for k, v in inputs.items():  # a run of a DAG prefixes job ids ("<run>.probe"): "probe" works too
        view.setdefault(k.rsplit(".", 1)[-1], v)
    names: dict[str, Any] = {"inputs": view, **{k: v for k, v in view.items() if k.isidentifier()}}
    try:
        return _eval(parse(text).body, names)
    except ExprError:
        raise
    except Exception as exc:  # a missing key, a type mismatch...: the condition's fault, said plainly
        raise ExprError(f"'when' {text!r} failed: {type(exc).__name__}: {exc}") from None


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse ``seq * n`` and ``seq + seq`` that would build more than MAX_RESULT items: a condition
    is evaluated inside the broker, which must not be made to allocate without bound."""
    seqs = (str, bytes, list, tuple)
    size = 0
    if isinstance(op, ast.Mult):
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, seqs) and isinstance(n, int):
                size = len(seq) * n
    elif isinstance(op, ast.Add) and isinstance(left, seqs) and isinstance(right, seqs):
        size = len(left) + len(right)
    if size > MAX_RESULT:
        raise ExprError(f"the condition would build a value of {size:,} items (at most {MAX_RESULT:,})")


def _eval(node: ast.AST, names: dict[str, Any]) -> Any:
    """The value of ``node``: each kind of node the parser allows has its evaluator in _EVAL."""
    evaluate_node = _EVAL.get(type(node))
    if evaluate_node is None:
        raise ExprError(f"{type(node).__name__} is not allowed in a condition")
    return evaluate_node(node, names)


def _constant(node: Any, names: dict[str, Any]) -> Any:
    return node.value


def _name(node: Any, names: dict[str, Any]) -> Any:
    if node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if node.id not in names:
        raise ExprError(f"unknown name {node.id!r} (use inputs['<parent id>'])")
    return names[node.id]


def _bool_op(node: Any, names: dict[str, Any]) -> Any:
    """``and``: the first false value, else the last; ``or``: the first true value, else the last."""
    is_and = isinstance(node.op, ast.And)
    value: Any = is_and
    for v in node.values:
        value = _eval(v, names)
        if bool(value) != is_and:
            return value
    return value


def _unary_op(node: Any, names: dict[str, Any]) -> Any:
    operand = _eval(node.operand, names)
    if isinstance(node.op, ast.Not):
        return not operand
    return -operand if isinstance(node.op, ast.USub) else +operand


def _bin_op(node: Any, names: dict[str, Any]) -> Any:
    left, right = _eval(node.left, names), _eval(node.right, names)
    _check_size(node.op, left, right)
    return _BIN[type(node.op)](left, right)


def _compare(node: Any, names: dict[str, Any]) -> Any:
    left = _eval(node.left, names)
    for op, comp in zip(node.ops, node.comparators, strict=True):
        right = _eval(comp, names)
        if not _CMP[type(op)](left, right):
            return False
        left = right
    return True


def _if_exp(node: Any, names: dict[str, Any]) -> Any:
    return _eval(node.body, names) if _eval(node.test, names) else _eval(node.orelse, names)


def _subscript(node: Any, names: dict[str, Any]) -> Any:
    return _eval(node.value, names)[_eval(node.slice, names)]


def _list(node: Any, names: dict[str, Any]) -> Any:
    return [_eval(e, names) for e in node.elts]


def _tuple(node: Any, names: dict[str, Any]) -> Any:
    return tuple(_eval(e, names) for e in node.elts)


def _dict(node: Any, names: dict[str, Any]) -> Any:
    return {_eval(k, names): _eval(v, names) for k, v in zip(node.keys, node.values, strict=True) if k is not None}


def _call(node: Any, names: dict[str, Any]) -> Any:
    assert isinstance(node.func, ast.Name)
    return _FUNCS[node.func.id](*[_eval(a, names) for a in node.args])


_EVAL: dict[type, Callable[[Any, dict[str, Any]], Any]] = {
    ast.Constant: _constant, ast.Name: _name, ast.BoolOp: _bool_op, ast.UnaryOp: _unary_op, ast.BinOp: _bin_op,
    ast.Compare: _compare, ast.IfExp: _if_exp, ast.Subscript: _subscript, ast.List: _list, ast.Tuple: _tuple,
    ast.Dict: _dict, ast.Call: _call,
}  # fmt: skip
