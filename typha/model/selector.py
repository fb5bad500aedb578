"""Calico's label selector language: parse, evaluate, canonical form and unique IDs.

This is a clean-room Python implementation of the behaviour of
``libcalico-go/lib/selector`` (tokenizer + parser + AST).  What matters for
interoperability is that two things are *byte-identical* to upstream:

* ``Selector.canonical`` - upstream's ``Selector.String()``.  Felix hashes it
  into the IP-set ID (``s:<b64url(sha224)>``) and so into the kernel IP-set name
  ``cali40s:…``; one differing byte means a different set name.
* which inputs are accepted and rejected, so a selector that Felix refuses is
  refused here too.

Grammar (recursive descent, precedence lowest first, as upstream)::

    selector  := <empty> | or_expr EOF            # empty / blanks → all()
    or_expr   := and_expr ( "||" and_expr )*
    and_expr  := operation ( "&&" operation )*
    operation := "!"* ( "has(" label ")" | "all()" | "global()"
                      | label ("==" | "!=" | "contains" | "starts with" | "ends with") string
                      | label ("in" | "not in") "{" [ string ("," string)* [","] ] "}"
                      | "(" or_expr ")" )

Notable upstream behaviours reproduced on purpose (each pinned by a test):

* Only space and tab are whitespace; a newline is an "unexpected character".
* String literals have no escapes: ``"…"`` may hold ``'`` and ``'…'`` may hold
  ``"``.  The canonical form quotes with ``"`` unless the value contains ``"``.
* A run of leading ``!`` collapses to its parity *before* the operand is parsed,
  so ``!!has(a)`` is ``has(a)`` but ``!(!has(a))`` is ``!!has(a)`` (which then
  re-parses to ``has(a)``: upstream's canonical form is not idempotent there).
* ``&&``/``||`` chains become one n-ary node, parenthesised as a whole; nested
  groups are kept (not flattened): ``a && (b && c)`` → ``(a && (b && c))``.
* ``in`` sets are sorted (byte order) and de-duplicated; ``{}`` and a trailing
  comma are allowed.
* ``startswith``/``endswith``/``notin`` (no blank) are accepted as operators.
* ``global()`` evaluates like ``all()``.  Its "non-namespaced only" meaning is
  applied by the policy conversion, not by the selector engine.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

__all__ = [
    "MAX_LABEL_LENGTH",
    "Selector",
    "SelectorError",
    "canonicalise",
    "make_unique_id",
    "parse",
    "quote_literal",
    "valid_label",
]

# Upstream tokenizer.MaxLabelLength: longer label names are rejected.
MAX_LABEL_LENGTH: Final = 512

Labels = Mapping[str, str]
Evaluator = Callable[[Labels], bool]


class SelectorError(ValueError):
    """A selector failed to parse.  ``position`` is the character offset of the problem."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.reason = message
        self.text = text
        self.position = position
        super().__init__(f"invalid selector {text!r}: {message} at offset {position}")


def make_unique_id(prefix: str, content: str) -> str:
    """Calico's ``hash.MakeUniqueID``: ``prefix:`` + unpadded base64url(sha224(``prefix:content``))."""
    digest = hashlib.sha224(f"{prefix}:{content}".encode()).digest()
    return prefix + ":" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------------------------
# Tokenizer (mirrors tokenizer.AppendTokens of current upstream, including its word-boundary
# rule for the keyword operators and the 512-byte label limit).
# --------------------------------------------------------------------------------------------

# Token kinds.  Plain strings keep the parser readable; the set is closed.
T_LABEL: Final = "label"
T_STRING: Final = "string"
T_LBRACE: Final = "{"
T_RBRACE: Final = "}"
T_COMMA: Final = ","
T_EQ: Final = "=="
T_NE: Final = "!="
T_IN: Final = "in"
T_NOT: Final = "!"
T_NOT_IN: Final = "not in"
T_CONTAINS: Final = "contains"
T_STARTS_WITH: Final = "starts with"
T_ENDS_WITH: Final = "ends with"
T_ALL: Final = "all()"
T_HAS: Final = "has()"
T_LPAREN: Final = "("
T_RPAREN: Final = ")"
T_AND: Final = "&&"
T_OR: Final = "||"
T_GLOBAL: Final = "global()"
T_EOF: Final = "end of selector"

# Upstream's identifierChar: ASCII letters, digits and _ . / -
_IDENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
# Upstream trims only these two; "\n" and "\r" are errors there, so they are here too.
_BLANKS: Final = " \t"

_SIMPLE: Final = {"(": T_LPAREN, ")": T_RPAREN, "{": T_LBRACE, "}": T_RBRACE, ",": T_COMMA}
_PAIRS: Final = {"=": ("==", T_EQ), "&": ("&&", T_AND), "|": ("||", T_OR)}
# Operators that may follow a label, tried in upstream's order ("contains" before "in" etc.).
_KEYWORD_OPS: Final = (
    (("contains",), T_CONTAINS),
    (("starts", "with"), T_STARTS_WITH),
    (("ends", "with"), T_ENDS_WITH),
    (("not", "in"), T_NOT_IN),
    (("in",), T_IN),
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    value: str
    pos: int


def _skip_blanks(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _BLANKS:
        i += 1
    return i


def _ident_end(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _IDENT_CHARS:
        i += 1
    return i


def _cut_label(text: str, i: int) -> tuple[str, int]:
    end = _ident_end(text, i)
    if end == i:
        raise SelectorError("expected a label name", text, i)
    if end - i > MAX_LABEL_LENGTH:
        raise SelectorError(f"label name longer than {MAX_LABEL_LENGTH} characters", text, i)
    return text[i:end], end


def _cut_keywords(text: str, i: int, words: tuple[str, ...]) -> int | None:
    """Match keyword operator ``words`` at ``i`` ending on a word boundary; return the end or None.

    Upstream's two helpers differ slightly and we copy both: a one-word operator ("in",
    "contains") needs the boundary right after the word; a two-word one skips blanks after
    each word (so "notin" and "startswith" are accepted) and then needs the boundary.  Only
    error messages could tell the difference, but staying exact is cheaper than arguing.
    """
    j = i
    for word in words:
        if not text.startswith(word, j):
            return None
        j += len(word)
        if len(words) > 1:
            j = _skip_blanks(text, j)
    if j < len(text) and text[j] in _IDENT_CHARS:
        return None
    return j


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while True:
        i = _skip_blanks(text, i)
        if i >= n:
            tokens.append(_Token(T_EOF, "", i))
            return tokens
        c = text[i]
        start = i
        if c in _SIMPLE:
            tokens.append(_Token(_SIMPLE[c], "", start))
            i += 1
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorError(f"unterminated string (no closing {c})", text, start)
            tokens.append(_Token(T_STRING, text[i + 1 : end], start))
            i = end + 1
        elif c in _PAIRS:
            pair, kind = _PAIRS[c]
            if not text.startswith(pair, i):
                raise SelectorError(f"expected {pair}", text, start)
            tokens.append(_Token(kind, "", start))
            i += 2
        elif c == "!":
            if text.startswith("!=", i):
                tokens.append(_Token(T_NE, "", start))
                i += 2
            else:
                tokens.append(_Token(T_NOT, "", start))
                i += 1
        elif tokens and tokens[-1].kind == T_LABEL:
            # Right after a label only a keyword operator can come (the symbolic ones were
            # handled above).  This is also why a label may be called "in" or "contains".
            for words, kind in _KEYWORD_OPS:
                kw_end = _cut_keywords(text, i, words)
                if kw_end is not None:
                    tokens.append(_Token(kind, "", start))
                    i = kw_end
                    break
            else:
                raise SelectorError(f"expected an operator after label {tokens[-1].value!r}", text, start)
        elif text.startswith("has(", i):
            label, i = _cut_label(text, _skip_blanks(text, i + 4))
            i = _skip_blanks(text, i)
            if not text.startswith(")", i):
                raise SelectorError("expected ) to close has(", text, i)
            tokens.append(_Token(T_HAS, label, start))
            i += 1
        elif text.startswith("all(", i) or text.startswith("global(", i):
            kind = T_ALL if c == "a" else T_GLOBAL
            i = _skip_blanks(text, i + (4 if kind == T_ALL else 7))
            if not text.startswith(")", i):
                raise SelectorError(f"expected ) to close {kind[:-1]}", text, i)
            tokens.append(_Token(kind, "", start))
            i += 1
        elif c in _IDENT_CHARS:
            label, i = _cut_label(text, i)
            tokens.append(_Token(T_LABEL, label, start))
        else:
            raise SelectorError(f"unexpected character {c!r}", text, start)


def valid_label(name: str) -> bool:
    """Whether ``name`` is a label name the selector language can express (upstream ``ValidLabel``)."""
    return 0 < len(name) <= MAX_LABEL_LENGTH and all(ch in _IDENT_CHARS for ch in name)


def quote_literal(value: str) -> str:
    """``value`` as one string literal of the selector language, for building selectors from data.

    Single quotes, as upstream's Kubernetes conversions write them; double quotes when the value
    holds a single quote. The language has no escapes, so a value holding both quote characters
    cannot be written at all: that raises ValueError rather than producing a literal that ends
    early and lets the rest of the value be read as selector syntax.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"a selector string cannot hold both quote characters: {value!r}")


# --------------------------------------------------------------------------------------------
# AST.  Frozen, so a Selector can share subtrees freely.  Each node knows how to write its
# canonical fragments (exactly upstream's collectFragments), compile itself into a closure,
# list its label names and copy itself with prefixed label names.
# --------------------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    # Upstream: single quotes iff the value contains a double quote.  No escaping exists, so
    # a value can never contain both (the tokenizer cannot produce one).
    return f"'{value}'" if '"' in value else f'"{value}"'


class Node:
    """Base class of selector AST nodes."""

    __slots__ = ()

    def write(self, out: list[str]) -> None:
        raise NotImplementedError

    def compile(self) -> Evaluator:
        """A closure tree evaluating this node (the fallback when code generation is refused)."""
        raise NotImplementedError

    def py_expr(self) -> str:
        """A Python expression over a mapping ``L`` that is true iff this node matches.

        Strings are embedded with repr(), which always yields a literal equal to the value,
        so no label or value can inject code.
        """
        raise NotImplementedError

    def collect_labels(self, out: set[str]) -> None:
        pass

    def prefixed(self, prefix: str) -> Node:
        return self


@dataclass(frozen=True, slots=True)
class AllNode(Node):
    def write(self, out: list[str]) -> None:
        out.append("all()")

    def compile(self) -> Evaluator:
        return _always_true

    def py_expr(self) -> str:
        return "True"


@dataclass(frozen=True, slots=True)
class GlobalNode(Node):
    def write(self, out: list[str]) -> None:
        out.append("global()")

    def compile(self) -> Evaluator:
        # Upstream GlobalNode.Evaluate returns true; scoping to non-namespaced endpoints is the
        # job of whoever builds the rule selector.
        return _always_true

    def py_expr(self) -> str:
        return "True"


def _always_true(_labels: Labels) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class HasNode(Node):
    label: str

    def write(self, out: list[str]) -> None:
        out.append(f"has({self.label})")

    def compile(self) -> Evaluator:
        label = self.label
        return lambda labels: label in labels

    def py_expr(self) -> str:
        return f"({self.label!r} in L)"

    def collect_labels(self, out: set[str]) -> None:
        out.add(self.label)

    def prefixed(self, prefix: str) -> Node:
        return HasNode(prefix + self.label)


@dataclass(frozen=True, slots=True)
class LabelOpNode(Node):
    """``label <op> "value"`` for ==, !=, contains, starts with, ends with."""

    op: str
    label: str
    value: str

    def write(self, out: list[str]) -> None:
        out.append(f"{self.label} {self.op} {_quoted(self.value)}")

    def compile(self) -> Evaluator:
        # Specialised closures: this runs for every (selector, endpoint) pair, so avoid the
        # generic _OPS indirection on the hot path.
        label, value, op = self.label, self.value, self.op
        if op == "==":
            return lambda labels: labels.get(label) == value
        if op == "!=":
            return lambda labels: labels.get(label) != value
        if op == "contains":

            def contains(labels: Labels) -> bool:
                actual = labels.get(label)
                return actual is not None and value in actual

            return contains
        if op == "starts with":

            def starts_with(labels: Labels) -> bool:
                actual = labels.get(label)
                return actual is not None and actual.startswith(value)

            return starts_with
        if op == "ends with":

            def ends_with(labels: Labels) -> bool:
                actual = labels.get(label)
                return actual is not None and actual.endswith(value)

            return ends_with
        raise AssertionError(op)

    def py_expr(self) -> str:
        k, v = repr(self.label), repr(self.value)
        if self.op in ("==", "!="):
            # .get() gives None for a missing label: never == a string, always != one.
            return f"(L.get({k}) {self.op} {v})"
        # The others are false for a missing label (even "contains ''"), hence the guard.
        test = {"contains": f"{v} in L[{k}]", "starts with": f"L[{k}].startswith({v})"}.get(
            self.op, f"L[{k}].endswith({v})"
        )
        return f"({k} in L and {test})"

    def collect_labels(self, out: set[str]) -> None:
        out.add(self.label)

    def prefixed(self, prefix: str) -> Node:
        return LabelOpNode(self.op, prefix + self.label, self.value)


@dataclass(frozen=True, slots=True)
class LabelSetNode(Node):
    """``label in {…}`` / ``label not in {…}``; ``values`` is sorted and de-duplicated."""

    label: str
    values: tuple[str, ...]
    negated: bool = False

    def write(self, out: list[str]) -> None:
        op = "not in" if self.negated else "in"
        out.append(f"{self.label} {op} {{{', '.join(_quoted(v) for v in self.values)}}}")

    def compile(self) -> Evaluator:
        label, members = self.label, frozenset(self.values)
        # labels.get() gives None for a missing label, which is never a member: "in" is false
        # and "not in" true, as upstream.
        if self.negated:
            return lambda labels: labels.get(label) not in members
        return lambda labels: labels.get(label) in members

    def py_expr(self) -> str:
        # CPython folds a constant set display after "in" into a frozenset constant.  "()"
        # for the empty set: "{}" would be a dict.
        members = "{" + ", ".join(repr(v) for v in self.values) + "}" if self.values else "()"
        op = "not in" if self.negated else "in"
        return f"(L.get({self.label!r}) {op} {members})"

    def collect_labels(self, out: set[str]) -> None:
        out.add(self.label)

    def prefixed(self, prefix: str) -> Node:
        return LabelSetNode(prefix + self.label, self.values, self.negated)


@dataclass(frozen=True, slots=True)
class NotNode(Node):
    operand: Node

    def write(self, out: list[str]) -> None:
        # No parentheses of its own: an And/Or operand brings them, a leaf needs none.
        out.append("!")
        self.operand.write(out)

    def compile(self) -> Evaluator:
        inner = self.operand.compile()
        return lambda labels: not inner(labels)

    def py_expr(self) -> str:
        return f"(not {self.operand.py_expr()})"

    def collect_labels(self, out: set[str]) -> None:
        self.operand.collect_labels(out)

    def prefixed(self, prefix: str) -> Node:
        return NotNode(self.operand.prefixed(prefix))


@dataclass(frozen=True, slots=True)
class AndNode(Node):
    operands: tuple[Node, ...]  # at least two

    def write(self, out: list[str]) -> None:
        _write_joined(out, self.operands, " && ")

    def compile(self) -> Evaluator:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            first, second = fns
            return lambda labels: first(labels) and second(labels)
        return lambda labels: all(fn(labels) for fn in fns)

    def py_expr(self) -> str:
        return "(" + " and ".join(op.py_expr() for op in self.operands) + ")"

    def collect_labels(self, out: set[str]) -> None:
        for op in self.operands:
            op.collect_labels(out)

    def prefixed(self, prefix: str) -> Node:
        return AndNode(tuple(op.prefixed(prefix) for op in self.operands))


@dataclass(frozen=True, slots=True)
class OrNode(Node):
    operands: tuple[Node, ...]  # at least two

    def write(self, out: list[str]) -> None:
        _write_joined(out, self.operands, " || ")

    def compile(self) -> Evaluator:
        fns = tuple(op.compile() for op in self.operands)
        if len(fns) == 2:
            first, second = fns
            return lambda labels: first(labels) or second(labels)
        return lambda labels: any(fn(labels) for fn in fns)

    def py_expr(self) -> str:
        return "(" + " or ".join(op.py_expr() for op in self.operands) + ")"

    def collect_labels(self, out: set[str]) -> None:
        for op in self.operands:
            op.collect_labels(out)

    def prefixed(self, prefix: str) -> Node:
        return OrNode(tuple(op.prefixed(prefix) for op in self.operands))


def _write_joined(out: list[str], operands: tuple[Node, ...], sep: str) -> None:
    out.append("(")
    for i, op in enumerate(operands):
        if i:
            out.append(sep)
        op.write(out)
    out.append(")")


# --------------------------------------------------------------------------------------------
# Parser (mirrors parser.parseOrExpression / parseAndExpression / parseOperation).
# --------------------------------------------------------------------------------------------

_VALUE_OPS: Final = {
    T_EQ: "==",
    T_NE: "!=",
    T_CONTAINS: "contains",
    T_STARTS_WITH: "starts with",
    T_ENDS_WITH: "ends with",
}


class _Parser:
    __slots__ = ("i", "text", "tokens")

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens  # always ends with T_EOF, so peeking never runs off the end
        self.i = 0

    def error(self, message: str, tok: _Token) -> SelectorError:
        return SelectorError(message, self.text, tok.pos)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != T_EOF:
            self.i += 1
        return tok

    def parse_or(self) -> Node:
        nodes = [self.parse_and()]
        while self.peek().kind == T_OR:
            self.i += 1
            nodes.append(self.parse_and())
        return nodes[0] if len(nodes) == 1 else OrNode(tuple(nodes))

    def parse_and(self) -> Node:
        nodes = [self.parse_operation()]
        while self.peek().kind == T_AND:
            self.i += 1
            nodes.append(self.parse_operation())
        return nodes[0] if len(nodes) == 1 else AndNode(tuple(nodes))

    def parse_operation(self) -> Node:
        # Upstream collapses a run of "!" into its parity before looking at the operand.
        negated = False
        while self.peek().kind == T_NOT:
            negated = not negated
            self.i += 1
        node = self.parse_operand()
        return NotNode(node) if negated else node

    def parse_operand(self) -> Node:
        tok = self.take()
        kind = tok.kind
        if kind == T_HAS:
            return HasNode(tok.value)
        if kind == T_ALL:
            return AllNode()
        if kind == T_GLOBAL:
            return GlobalNode()
        if kind == T_LPAREN:
            node = self.parse_or()
            close = self.take()
            if close.kind != T_RPAREN:
                raise self.error(f"expected ) to match ( at offset {tok.pos}, found {_describe(close)}", close)
            return node
        if kind == T_LABEL:
            return self.parse_label_op(tok)
        raise self.error(f"unexpected {_describe(tok)}, expected a label, has(), all(), global(), ! or (", tok)

    def parse_label_op(self, label: _Token) -> Node:
        op = self.take()
        if op.kind in _VALUE_OPS:
            value = self.take()
            if value.kind != T_STRING:
                raise self.error(f"expected a quoted string after {op.kind}, found {_describe(value)}", value)
            return LabelOpNode(_VALUE_OPS[op.kind], label.value, value.value)
        if op.kind in (T_IN, T_NOT_IN):
            brace = self.take()
            if brace.kind != T_LBRACE:
                raise self.error(f"expected {{ after {op.kind}, found {_describe(brace)}", brace)
            values: list[str] = []
            # Upstream loop: string [","] repeated; so "{}" and a trailing comma are accepted.
            while self.peek().kind == T_STRING:
                values.append(self.take().value)
                if self.peek().kind != T_COMMA:
                    break
                self.i += 1
            close = self.take()
            if close.kind != T_RBRACE:
                raise self.error(f"expected a quoted string or }} in set, found {_describe(close)}", close)
            # Python str order is code-point order, which equals Go's UTF-8 byte order.
            return LabelSetNode(label.value, tuple(sorted(set(values))), op.kind == T_NOT_IN)
        raise self.error(
            f"expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "
            f"{label.value!r}, found {_describe(op)}",
            op,
        )


def _describe(tok: _Token) -> str:
    if tok.kind == T_EOF:
        return "end of selector"
    if tok.kind == T_LABEL:
        return f"label {tok.value!r}"
    if tok.kind == T_STRING:
        return f"string {tok.value!r}"
    if tok.kind == T_HAS:
        return f"has({tok.value})"
    return repr(tok.kind)


def _parse_node(text: str) -> Node:
    tokens = _tokenize(text)
    if tokens[0].kind == T_EOF:
        return AllNode()
    parser = _Parser(text, tokens)
    try:
        node = parser.parse_or()
    except RecursionError:
        # Go's growable stacks have no practical limit; ours does.  Refuse rather than crash.
        raise SelectorError("selector nested too deeply", text, 0) from None
    rest = parser.peek()
    if rest.kind != T_EOF:
        raise parser.error(f"unexpected {_describe(rest)} after a complete expression", rest)
    return node


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


# Past this many nodes we skip code generation: CPython's compiler limits nesting depth, and a
# huge generated function buys nothing over the closure tree.
_MAX_CODEGEN_NODES: Final = 2000


def _count_nodes(node: Node) -> int:
    if isinstance(node, NotNode):
        return 1 + _count_nodes(node.operand)
    if isinstance(node, AndNode | OrNode):
        return 1 + sum(_count_nodes(op) for op in node.operands)
    return 1


def _compile(root: Node) -> Evaluator:
    """Turn the AST into one Python function.

    Generated code is one lambda with short-circuiting ``and``/``or`` and no calls between
    nodes.  Measured against the closure tree on this kind of machine: 116 vs 149 ns for the K8s
    policy selector of docs/calico/felix.md, 109 vs 527 ns for a four-term ``&&`` with a set.
    Anything the CPython compiler refuses (e.g. too deeply nested) falls back to the closures,
    which compute the same thing.
    """
    if _count_nodes(root) <= _MAX_CODEGEN_NODES:
        try:
            fn: Evaluator = eval(f"lambda L: {root.py_expr()}", {"__builtins__": {}})  # safe: see Node.py_expr
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            pass
        else:
            return fn
    return root.compile()


class Selector:
    """A parsed selector.  Immutable; equal (and hashing equal) iff the canonical forms are equal."""

    __slots__ = ("_canonical", "_labels", "_root", "_unique_id", "evaluate")

    # ``evaluate(labels) -> bool`` is the compiled function itself, stored per instance, rather
    # than a method that forwards to it: the forwarding call cost ~25 ns, a quarter of a
    # typical evaluation, and this runs for every (selector, endpoint) pair.
    evaluate: Evaluator
    _root: Node
    _canonical: str
    _unique_id: str | None
    _labels: frozenset[str] | None

    def __init__(self, root: Node) -> None:
        out: list[str] = []
        root.write(out)
        setattr_ = object.__setattr__  # __setattr__ below refuses writes: this is the only way in
        setattr_(self, "_root", root)
        setattr_(self, "_canonical", "".join(out))
        # Compile once, so evaluation never walks the AST or re-parses.
        setattr_(self, "evaluate", _compile(root))
        setattr_(self, "_unique_id", None)
        setattr_(self, "_labels", None)

    @property
    def root(self) -> Node:
        """The AST (frozen dataclasses); for indexing and analysis, not needed for matching."""
        return self._root

    @property
    def canonical(self) -> str:
        """Upstream's ``Selector.String()``, byte for byte."""
        return self._canonical

    @property
    def unique_id(self) -> str:
        """``hash.MakeUniqueID("s", canonical)``: the ID Felix gives this selector's IP set."""
        uid = self._unique_id
        if uid is None:
            uid = make_unique_id("s", self._canonical)
            object.__setattr__(self, "_unique_id", uid)
        return uid

    def with_label_prefix(self, prefix: str) -> Selector:
        """Every label name gets ``prefix`` (Calico's PrefixVisitor / parseSelectorAttachPrefix).

        Used to turn a namespaceSelector into one over the ``pcns.`` labels that profiles
        give endpoints.  ``all()`` and ``global()`` have no labels and stay as they are:
        upstream's getEndpointSelector then rewrites them *textually* in the canonical string
        (``all()`` → ``has(projectcalico.org/namespace)``, ``global()`` →
        ``!has(projectcalico.org/namespace)``), which is the converter's job.  Like upstream,
        the prefix is not validated.
        """
        if not prefix:
            return self
        return Selector(self._root.prefixed(prefix))

    def label_names(self) -> frozenset[str]:
        """The label keys this selector reads."""
        found = self._labels
        if found is None:
            names: set[str] = set()
            self._root.collect_labels(names)
            found = frozenset(names)
            object.__setattr__(self, "_labels", found)
        return found

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __repr__(self) -> str:
        return f"Selector({self._canonical!r})"

    def __str__(self) -> str:
        return self._canonical

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Selector is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Selector is immutable (cannot delete {name})")

    def __reduce__(self) -> tuple[type[Selector], tuple[Node]]:
        # Pickle the AST, not the text: re-parsing the canonical text is not always the same
        # selector (upstream prints !(!x) as "!!x", which parses back as x), and the ID must
        # survive a trip to another process unchanged.
        return (Selector, (self._root,))


@lru_cache(maxsize=16384)
def parse(text: str) -> Selector:
    """Parse ``text``; raises SelectorError.  Results are cached (Selector is immutable)."""
    if not isinstance(text, str):
        raise TypeError(f"selector must be str, not {type(text).__name__}")
    return Selector(_parse_node(text))


@lru_cache(maxsize=16384)
def canonicalise(text: str) -> str:
    """``parse(text).canonical``; raises SelectorError."""
    return parse(text).canonical
