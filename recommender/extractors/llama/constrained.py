"""Copy-or-tag constrained decoding: the model may only copy its input and insert span tags.

Kiwi's NER and RE targets are the input sentence (tokens joined by single spaces) with
``<span class="L">...</span>`` tags inserted, after one space and before `` <EOS>``. A
:class:`CopyOrTag` automaton accepts exactly those byte strings: at each point the next source
byte, an opening tag right before a source token, ``</span>`` right after a token while a span is
open, the single space between tokens, and `` <EOS>`` once the source is consumed and every span is
closed. It runs on bytes, so a model token may end inside a UTF-8 character, and it is a
nondeterministic automaton, so a source that itself contains ``<`` (``<span`` even) is still copied.

:class:`TokenTable` holds every token's bytes once per tokenizer; :class:`TokenConstraint` turns an
automaton state into the token ids that keep the output inside the language (a walk over the
sorted token byte strings), and :meth:`TokenConstraint.choose` is greedy decoding under the
constraint. :class:`CopyOrTagLogitsProcessor` is the same logic for Hugging Face ``generate``.
"""

from __future__ import annotations

import bisect
import json
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

from recommender.extractors.llama.task import OutputLanguage

OPEN_TAG = '<span class="{}">'
CLOSE_TAG = b"</span>"
MAX_DEPTH = 3  # nested spans the constraint allows; Kiwi markup nests rarely and never deeper

# Automaton states are small tuples: (kind, ...). A token position is (_TOK, i, j, opened): j bytes
# of source token i emitted (j == len(token i) means "right after token i"), ``opened`` the open tags
# innermost last, each as its flags below.
_START, _TOK, _OPEN, _CLOSE, _END, _FINAL = range(6)
State = frozenset[tuple[int, ...]]
_OFF_ENTITY = 1  # a tag whose label may not touch the main entity's words


class CopyOrTag:
    """The copy-or-tag language of one source: ``' ' + source with tags + ' ' + stop``.

    ``source`` is the plain input, its tokens joined by single spaces; ``labels`` the span classes
    an opening tag may name. With ``entity`` (the main entity's word range of an RE prompt) only
    ``overlapping`` labels touch its words (guideline 3.1.3: a modifier other than bodyloc, course
    and severity never overlaps its entity). A tag over exactly the entity is left to the reader, which
    drops it: forbidding it made a tuned model tag something else instead, mostly wrongly (measured on
    validation notes). Any bytes may follow the stop string (the caller cuts there).
    """

    def __init__(
        self,
        source: str,
        labels: Iterable[str],
        stop: str,
        *,
        entity: tuple[int, int] | None = None,
        overlapping: Iterable[str] = (),
        max_depth: int = MAX_DEPTH,
    ) -> None:
        words = source.split(" ") if source else []
        if any(not w for w in words):
            raise ValueError(
                "source must be tokens joined by single spaces (no leading, trailing or double"
                f" spaces); got one of {len(source)} characters"
            )
        if entity is not None and not 0 <= entity[0] < entity[1] <= len(words):
            raise ValueError(f"entity words {entity} are not a range of the source's {len(words)} words")
        self.words = [w.encode() for w in words]
        self.labels = list(dict.fromkeys(labels))
        self.tags = [OPEN_TAG.format(label).encode() for label in self.labels]
        self.entity = entity
        free = set(overlapping)
        self._off_entity = [entity is not None and label not in free for label in self.labels]
        self.end = b" " + stop.encode()
        self.max_depth = max_depth
        self._steps: dict[tuple[State, int], State] = {}

    @classmethod
    def of(cls, language: OutputLanguage, stop: str) -> CopyOrTag:
        return cls(
            language.source, language.labels, stop, entity=language.entity, overlapping=language.overlapping
        )

    # --- the rules, on word positions (shared by the byte automaton and the grammar) -------------

    def opening(self, i: int, t: int, opened: tuple[int, ...]) -> tuple[int, ...] | None:
        """The open tags after tag ``t`` opens before word ``i``; None where it may not."""
        if len(opened) >= self.max_depth:
            return None
        flags = 0
        if self.entity is not None and self._off_entity[t] and i < self.entity[1]:
            if i >= self.entity[0]:
                return None
            flags = _OFF_ENTITY  # it must close before the entity's first word
        return (*opened, flags)

    def closing(self, i: int, opened: tuple[int, ...]) -> tuple[int, ...] | None:
        """The open tags after the innermost closes right after word ``i``; None where it may not."""
        return opened[:-1] if opened else None

    def moving_on(self, i: int, opened: tuple[int, ...]) -> tuple[int, ...] | None:
        """The open tags on word ``i + 1`` after the space; None where the space may not come."""
        if i + 1 >= len(self.words):
            return None
        if self.entity is not None and i + 1 == self.entity[0] and any(f & _OFF_ENTITY for f in opened):
            return None
        return opened

    # --- the byte automaton -----------------------------------------------------------------------

    def start(self) -> State:
        return frozenset({(_START,)})

    def advance(self, state: State, data: bytes) -> State:
        """The state after ``data``; empty when ``data`` leaves the language."""
        for b in data:
            if not state:
                break
            state = self.step(state, b)
        return state

    def step(self, state: State, b: int) -> State:
        key = (state, b)
        nxt = self._steps.get(key)
        if nxt is None:
            nxt = frozenset(t for s in state for t in self._step(s, b))
            self._steps[key] = nxt
        return nxt

    def is_final(self, state: State) -> bool:
        return (_FINAL,) in state

    def _step(self, s: tuple[int, ...], b: int) -> list[tuple[int, ...]]:
        kind = s[0]
        if kind == _FINAL:
            return [s]
        if kind == _START:
            if b != 0x20:
                return []
            return [(_TOK, 0, 0, ())] if self.words else [(_END, 1)]
        if kind == _END:
            if b != self.end[s[1]]:
                return []
            return [(_FINAL,)] if s[1] + 1 == len(self.end) else [(_END, s[1] + 1)]
        if kind == _OPEN:
            _, i, t, k, after = s
            tag = self.tags[t]
            if b != tag[k]:
                return []
            return [(_TOK, i, 0, after)] if k + 1 == len(tag) else [(_OPEN, i, t, k + 1, after)]
        if kind == _CLOSE:
            _, i, k, after = s
            if b != CLOSE_TAG[k]:
                return []
            return (
                [(_TOK, i, len(self.words[i]), after)]
                if k + 1 == len(CLOSE_TAG)
                else [(_CLOSE, i, k + 1, after)]
            )
        _, i, j, opened = s
        word = self.words[i]
        out: list[tuple[int, ...]] = []
        if j < len(word):
            if word[j] == b:
                out.append((_TOK, i, j + 1, opened))
            if j == 0 and b == 0x3C:  # '<': an opening tag
                for t in range(len(self.tags)):
                    after = self.opening(i, t, opened)
                    if after is not None:
                        out.append((_OPEN, i, t, 1, after))
            return out
        if b == 0x3C:  # right after a token: '</span>'
            after = self.closing(i, opened)
            if after is not None:
                out.append((_CLOSE, i, 1, after))
        elif b == 0x20:
            after = self.moving_on(i, opened)
            if after is not None:
                out.append((_TOK, i + 1, 0, after))
            elif i + 1 == len(self.words) and not opened:
                out.append((_END, 1))
        return out

    def next_bytes(self, state: State) -> list[int]:
        """The bytes that may come next (a superset is fine: :meth:`step` decides)."""
        out: set[int] = set()
        for s in state:
            kind = s[0]
            if kind == _FINAL:
                return list(range(256))
            if kind == _START:
                out.add(0x20)
            elif kind == _END:
                out.add(self.end[s[1]])
            elif kind == _OPEN:
                out.add(self.tags[s[2]][s[3]])
            elif kind == _CLOSE:
                out.add(CLOSE_TAG[s[2]])
            else:
                _, i, j, _opened = s
                word = self.words[i]
                out.update((word[j], 0x3C) if j < len(word) else (0x20, 0x3C))
        return sorted(out)

    # --- the same language as a grammar (vLLM's structured outputs) --------------------------------

    def grammar(self) -> str:
        """The language as an EBNF grammar (xgrammar's dialect, which vLLM's ``structured_outputs``
        ``grammar`` takes): one rule per reachable (word, open tags) before and after the word."""
        names: dict[tuple[str, int, tuple[int, ...]], str] = {}
        rules: list[str] = []
        todo: list[tuple[str, int, tuple[int, ...]]] = []

        def ref(kind: str, i: int, opened: tuple[int, ...]) -> str:
            key = (kind, i, opened)
            if key not in names:
                names[key] = f"{kind}{len(names)}"
                todo.append(key)
            return names[key]

        end = _ebnf_literal(self.end)
        rules.append(f"root ::= {_ebnf_literal(b' ')} {ref('w', 0, ())}" if self.words else f"root ::= {end}")
        while todo:
            kind, i, opened = todo.pop()
            alts: list[str] = []
            if kind == "w":  # before word i: an opening tag, or the word
                for t, tag in enumerate(self.tags):
                    after = self.opening(i, t, opened)
                    if after is not None:
                        alts.append(f"{_ebnf_literal(tag)} {ref('w', i, after)}")
                alts.append(f"{_ebnf_literal(self.words[i])} {ref('a', i, opened)}")
            else:  # after word i: a closing tag, the space to the next word, or the end
                after = self.closing(i, opened)
                if after is not None:
                    alts.append(f"{_ebnf_literal(CLOSE_TAG)} {ref('a', i, after)}")
                after = self.moving_on(i, opened)
                if after is not None:
                    alts.append(f"{_ebnf_literal(b' ')} {ref('w', i + 1, after)}")
                elif i + 1 == len(self.words) and not opened:
                    alts.append(end)
            assert alts, "every state the rules reach can reach the end"
            rules.append(f"{names[(kind, i, opened)]} ::= {' | '.join(alts)}")
        return "\n".join(rules) + "\n"


def _ebnf_literal(data: bytes) -> str:
    """A double-quoted EBNF string: backslash, quote and control characters escaped."""
    out = []
    for ch in data.decode("utf-8"):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character each byte is written as -> the byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _decoder_types(node: Any) -> set[str]:
    if isinstance(node, dict):
        types = {node["type"]} if isinstance(node.get("type"), str) else set()
        for value in node.values():
            types |= _decoder_types(value)
        return types
    if isinstance(node, list):
        return set().union(*map(_decoder_types, node)) if node else set()
    return set()


@dataclass
class TokenTable:
    """Every token's bytes, and the sorted byte strings the constraint walks."""

    pieces: list[bytes]  # by token id; b"" for special tokens
    keys: list[bytes]  # sorted bytes of the tokens a constrained output may use
    ids: list[int]  # the token id of each key
    eos_ids: frozenset[int]

    @classmethod
    def build(cls, tokenizer: Any) -> TokenTable:
        decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder")
        types = _decoder_types(decoder)
        byte_level = "ByteLevel" in types
        if not byte_level and not types & {"ByteFallback", "Metaspace", "Replace"}:
            raise ValueError(f"unsupported tokenizer decoder [{', '.join(sorted(types)) or None}]")
        alphabet = _byte_decoder()
        added = tokenizer.added_tokens_decoder
        special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
        eos = tokenizer.eos_token_id
        eos_ids = frozenset({eos} if eos is not None else ())
        pieces: list[bytes] = []
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if i in special or tok is None:
                pieces.append(b"")
            elif i in added:
                pieces.append(added[i].content.encode())
            elif byte_level and all(c in alphabet for c in tok):
                pieces.append(bytes(alphabet[c] for c in tok))
            elif not byte_level and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                pieces.append(bytes([int(tok[3:5], 16)]))
            else:
                pieces.append(tok.replace("\u2581", " ").encode())
        order = sorted((p, i) for i, p in enumerate(pieces) if p and i not in special)
        return cls(pieces, [p for p, _ in order], [i for _, i in order], eos_ids)

    def piece(self, token_id: int) -> bytes:
        # the model's vocabulary may be padded beyond the tokenizer's
        return self.pieces[token_id] if token_id < len(self.pieces) else b""


_TABLES: weakref.WeakKeyDictionary[Any, TokenTable] = weakref.WeakKeyDictionary()


def token_table(tokenizer: Any) -> TokenTable:
    """The :class:`TokenTable` of ``tokenizer``, built once (a second or so for 50k tokens)."""
    table = _TABLES.get(tokenizer)
    if table is None:
        table = _TABLES[tokenizer] = TokenTable.build(tokenizer)
    return table


@dataclass
class TokenConstraint:
    """A :class:`CopyOrTag` automaton seen through a tokenizer: allowed token ids per state."""

    automaton: CopyOrTag
    table: TokenTable
    _allowed: dict[State, torch.Tensor] = field(default_factory=dict)

    def start(self) -> State:
        return self.automaton.start()

    def advance(self, state: State, token_id: int) -> State:
        return self.automaton.advance(state, self.table.piece(token_id))

    def allowed(self, state: State) -> torch.Tensor:
        """Ascending ids of the tokens whose bytes keep the output in the language."""
        ids = self._allowed.get(state)
        if ids is None:
            found: set[int] = set()
            self._walk(state, b"", 0, len(self.table.keys), found)
            if not found:
                raise ValueError("the tokenizer cannot spell any byte the constraint allows")
            ids = self._allowed[state] = torch.tensor(sorted(found), dtype=torch.long)
        return ids

    def _walk(self, state: State, prefix: bytes, lo: int, hi: int, found: set[int]) -> None:
        keys, ids = self.table.keys, self.table.ids
        for b in self.automaton.next_bytes(state):
            nxt = self.automaton.step(state, b)
            if not nxt:
                continue
            key = prefix + bytes([b])
            a = bisect.bisect_left(keys, key, lo, hi)
            z = bisect.bisect_left(keys, prefix + bytes([b + 1]), a, hi) if b < 255 else hi
            if a == z:
                continue
            if self.automaton.is_final(nxt):  # anything may follow the stop string
                found.update(ids[a:z])
                continue
            while a < z and keys[a] == key:
                found.add(ids[a])
                a += 1
            if a < z:
                self._walk(nxt, key, a, z, found)

    def choose(self, state: State, logits: torch.Tensor) -> int:
        """Greedy choice under the constraint; ties go to the lowest id, as ``torch.argmax``."""
        ids = self.allowed(state)
        return int(ids[int(torch.argmax(logits[ids]))])


def constraint_for(language: OutputLanguage, stop: str, table: TokenTable) -> TokenConstraint:
    return TokenConstraint(CopyOrTag.of(language, stop), table)


class CopyOrTagLogitsProcessor(LogitsProcessor):
    """Masks every token the row's constraint forbids (``None``: that row generates freely)."""

    def __init__(self, constraints: Sequence[TokenConstraint | None], prompt_length: int) -> None:
        self.constraints = list(constraints)
        self.prompt_length = prompt_length
        self._states = [c.start() if c else frozenset() for c in self.constraints]
        self._seen = [prompt_length] * len(self.constraints)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = scores.clone()
        for row, c in enumerate(self.constraints):
            if c is None:
                continue
            state = self._states[row]
            for t in input_ids[row, self._seen[row] :].tolist():
                state = c.advance(state, t)
            self._states[row], self._seen[row] = state, input_ids.shape[1]
            keep = c.allowed(state)
            masked[row] = float("-inf")
            masked[row, keep] = scores[row, keep]
        return masked
