"""Scope analysis: which module-level names each statement of a cell defines, deletes and uses.

Module-level and class-body code runs as it is read, so its uses are checked against what
earlier statements defined ("use"). Function and lambda bodies run later, so their free names
only need a definition somewhere in the notebook ("deferred").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Literal

from flows.lint.nodes import FUNCTIONS

EventKind = Literal["use", "deferred", "def", "del", "star"]


@dataclass(frozen=True)
class Event:
    """A module-level name defined, deleted or used (``star``: a ``from m import *``)."""

    kind: EventKind
    name: str
    cell: int
    line: int | None


@dataclass
class _Scope:
    kind: Literal["module", "class", "function", "comprehension"]
    names: set[str] = field(default_factory=set)
    globals: set[str] = field(default_factory=set)


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _function_locals(args: ast.arguments, body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """Python decides a function's locals before it runs: every name bound anywhere in it."""
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    declared_global: set[str] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            names.update(node.names)
        elif isinstance(node, (*FUNCTIONS, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Lambda):
            continue
        elif isinstance(node, _COMPREHENSIONS):
            # Only walrus targets leak out of a comprehension into the function.
            names.update(
                n.target.id
                for n in ast.walk(node)
                if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
            )
        else:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update(
                    (a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"
                )
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
            elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
                names.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                names.add(node.rest)
            stack.extend(ast.iter_child_nodes(node))
    return names - declared_global, declared_global


class NameWalker:
    """Walks one cell in execution order and appends its module-level name events."""

    def __init__(self, cell: int, events: list[Event]) -> None:
        self.cell = cell
        self.events = events
        self.scopes: list[_Scope] = [_Scope("module")]

    def _emit(self, kind: EventKind, name: str, node: Any) -> None:
        self.events.append(Event(kind, name, self.cell, getattr(node, "lineno", None)))

    # -- binding and resolving
    def bind(self, name: str, node: ast.AST) -> None:
        scope = self.scopes[-1]
        if scope.kind in ("class", "comprehension"):
            scope.names.add(name)
        elif scope.kind == "module" or name in scope.globals:
            self._emit("def", name, node)

    def bind_walrus(self, name: str, node: ast.AST) -> None:
        for scope in reversed(self.scopes):
            if scope.kind == "comprehension":
                continue
            if scope.kind == "class":
                scope.names.add(name)
            elif scope.kind == "module" or name in scope.globals:
                self._emit("def", name, node)
            return

    def load(self, name: str, node: ast.AST) -> None:
        innermost = True
        for scope in reversed(self.scopes):
            if scope.kind == "module":
                break
            if scope.kind == "function":
                if name in scope.globals:
                    break
                if name in scope.names:
                    return
            elif scope.kind == "comprehension" or innermost:
                if name in scope.names:
                    return
            innermost = False
        deferred = any(s.kind == "function" for s in self.scopes)
        self._emit("deferred" if deferred else "use", name, node)

    # -- statements
    def statements(self, body: list[ast.stmt], *, top: bool = False) -> None:
        for stmt in body:
            self.statement(stmt, top=top)

    def statement(self, node: ast.stmt, *, top: bool = False) -> None:
        if isinstance(node, FUNCTIONS):
            self.exprs(node.decorator_list)
            self.arguments(node.args)
            if node.returns:
                self.expr(node.returns)
            self.bind(node.name, node)
            self.function(node.args, node.body)
        elif isinstance(node, ast.ClassDef):
            self.exprs(node.decorator_list)
            self.exprs(node.bases)
            self.exprs([k.value for k in node.keywords])
            self.scopes.append(_Scope("class"))
            self.statements(node.body)
            self.scopes.pop()
            self.bind(node.name, node)
        elif isinstance(node, ast.Assign):
            self.expr(node.value)
            for target in node.targets:
                self.target(target)
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name):
                self.load(node.target.id, node.target)
            self.expr(node.value)
            self.target(node.target)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value)
            self.expr(node.annotation)
            if node.value is not None or not isinstance(node.target, ast.Name):
                self.target(node.target)
        elif isinstance(node, ast.For | ast.AsyncFor):
            self.expr(node.iter)
            self.target(node.target)
            self.statements(node.body)
            self.statements(node.orelse)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.target(item.optional_vars)
            self.statements(node.body)
        elif isinstance(node, ast.Try | ast.TryStar):
            self.statements(node.body)
            for handler in node.handlers:
                if handler.type is not None:
                    self.expr(handler.type)
                if handler.name:
                    self.bind(handler.name, handler)
                self.statements(handler.body)
            self.statements(node.orelse)
            self.statements(node.finalbody)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                self.bind(alias.asname or alias.name.split(".")[0], node)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    self._emit("star", node.module or "", node)
                else:
                    self.bind(alias.asname or alias.name, node)
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    scope = self.scopes[-1]
                    if scope.kind == "module" and top:
                        self._emit("del", target.id, target)
                    elif scope.kind == "module":
                        self.load(target.id, target)  # a conditional del: keep the name
                    elif scope.kind == "class":
                        scope.names.discard(target.id)
                else:
                    self.expr(target)
        elif isinstance(node, ast.Match):
            self.expr(node.subject)
            for case in node.cases:
                self.pattern(case.pattern)
                if case.guard is not None:
                    self.expr(case.guard)
                self.statements(case.body)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            return
        else:  # if, while, expr, return, raise, assert...: children in field order
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.statement(child)
                elif isinstance(child, ast.expr):
                    self.expr(child)

    def function(self, args: ast.arguments, body: list[ast.stmt]) -> None:
        names, declared_global = _function_locals(args, body)
        self.scopes.append(_Scope("function", names, declared_global))
        self.statements(body)
        self.scopes.pop()

    def arguments(self, args: ast.arguments) -> None:
        self.exprs([d for d in (*args.defaults, *args.kw_defaults) if d is not None])
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
            if arg is not None and arg.annotation is not None:
                self.expr(arg.annotation)

    # -- expressions
    def exprs(self, nodes: list[ast.expr]) -> None:
        for node in nodes:
            self.expr(node)

    def expr(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.load(node.id, node)
            else:
                self.bind(node.id, node)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value)
            self.bind_walrus(node.target.id, node.target)
        elif isinstance(node, ast.Lambda):
            self.arguments(node.args)
            self.function(node.args, [ast.Expr(node.body)])
        elif isinstance(node, _COMPREHENSIONS):
            self.comprehension(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.expr(child)

    def comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
    ) -> None:
        generators = node.generators
        self.expr(generators[0].iter)  # evaluated in the enclosing scope
        self.scopes.append(_Scope("comprehension"))
        for i, gen in enumerate(generators):
            if i:
                self.expr(gen.iter)
            self.target(gen.target)
            self.exprs(gen.ifs)
        if isinstance(node, ast.DictComp):
            self.expr(node.key)
            self.expr(node.value)
        else:
            self.expr(node.elt)
        self.scopes.pop()

    def target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self.bind(node.id, node)
        elif isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Starred):
            self.target(node.value)
        else:  # attribute or subscript: its parts are read
            for child in ast.iter_child_nodes(node):
                self.expr(child)

    def pattern(self, node: ast.AST) -> None:
        if isinstance(node, ast.MatchValue):
            self.expr(node.value)
            return
        if isinstance(node, ast.MatchClass):
            self.expr(node.cls)
        if isinstance(node, ast.MatchMapping):
            self.exprs(node.keys)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.pattern):
                self.pattern(child)
        name = getattr(node, "rest", None) or getattr(node, "name", None)
        if isinstance(name, str):
            self.bind(name, node)
