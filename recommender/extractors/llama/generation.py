"""Greedy generation for Kiwi prompts: a batched engine with prefix caching and copy speculation.

Kiwi's prompts share one long instruction prefix per task and their outputs mostly copy the input
sentence, so :class:`TransformersEngine` (a) encodes each prefix once and starts every batch from
a copy of its KV cache, (b) proposes the next tokens by matching the last generated n-gram in the
prompt (prompt-lookup speculation) and checks up to ``draft_tokens`` of them in one forward pass,
and (c) decodes many prompts at once. Its outputs are those of :func:`plain_generate` (Hugging
Face greedy ``generate``, one prompt at a time), token for token, up to floating-point
reassociation, which can only flip a near-tie (never seen in float64; see the benchmark for fp32).

Batching with per-row acceptance: every row of a batch has the same cache length. A forward pass
feeds each row its pending token and its draft (rows with shorter drafts are padded); the slots
of rejected drafts and padding stay in the cache but get attention mask 0 from then on, and each
row carries its own position ids, so each row sees exactly its own accepted sequence.
"""

from __future__ import annotations

import codecs
import inspect
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from recommender.extractors.llama.constrained import (
    CopyOrTagLogitsProcessor,
    State,
    TokenConstraint,
    TokenTable,
    constraint_for,
    token_table,
)
from recommender.extractors.llama.task import STOP, OutputLanguage

MAX_NGRAM = 3  # longest n-gram matched for prompt lookup
PREFIX_CACHE_SIZE = 4  # prefixes (task templates) kept; one per prompt type is typical


@dataclass(frozen=True)
class Prompt:
    prefix: str  # instruction text shared by many prompts; its KV cache is computed once
    text: str  # the rest of the prompt, e.g. "<input> <EOS>\n### Output Text:"
    language: OutputLanguage | None = None  # what the output may be (copy-or-tag); None: free


@dataclass
class Generation:
    text: str  # the continuation, cut before the stop string
    token_logprobs: list[float]  # log_softmax of the raw logits (before masking), per generated token
    token_offsets: list[int]  # character offset in ``text`` where each generated token starts
    stopped: bool  # the stop string or the eos token was reached (False: max_new_tokens hit)


class Engine(ABC):
    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], *, between_steps: Callable[[], None] | None = None
    ) -> list[Generation]:
        """One generation per prompt, in order. An engine that computes here calls ``between_steps``
        before each forward pass (a background worker's way to let requests go first); an engine
        whose server computes ignores it."""


def cache_argument(module: Any) -> str:
    """The name ``module.forward`` takes its KV cache by (``past_key_values`` became ``cache``)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    ids: list[int] = tokenizer(prompt.prefix + prompt.text).input_ids
    if not ids:
        raise ValueError("empty prompt: it encodes to no tokens")
    return ids


def shared_length(tokenizer: Any, prompt: Prompt, ids: Sequence[int]) -> int:
    """How many leading tokens of ``ids`` are the prefix's own tokens (a merge at the seam shortens it)."""
    prefix_ids = tokenizer(prompt.prefix).input_ids if prompt.prefix else []
    n = 0
    for a, b in zip(prefix_ids, ids, strict=False):
        if a != b:
            break
        n += 1
    return min(n, len(ids) - 1)  # at least one token left to produce the first logits


def finish(table: TokenTable, stop: bytes, tokens: Sequence[int], logprobs: Sequence[float]) -> Generation:
    """The :class:`Generation` of ``tokens``: text cut before the stop string, character offsets."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    data = bytearray()
    starts: list[int] = []
    n_chars = 0
    for t in tokens:
        starts.append(n_chars)
        piece = table.piece(t)
        data += piece
        n_chars += len(decoder.decode(piece))
    cut = data.find(stop)
    text = bytes(data[:cut] if cut >= 0 else data).decode("utf-8", errors="replace")
    stopped = cut >= 0 or (bool(tokens) and tokens[-1] in table.eos_ids)
    return Generation(text, [float(x) for x in logprobs], [min(s, len(text)) for s in starts], stopped)


def _logprob(logits: torch.Tensor, token: int) -> float:
    return float(logits[token] - torch.logsumexp(logits, -1))


def _choose(constraint: TokenConstraint | None, state: State, logits: torch.Tensor) -> int:
    return int(torch.argmax(logits)) if constraint is None else constraint.choose(state, logits)


def _constraint(prompt: Prompt, table: TokenTable, stop: str, constrained: bool) -> TokenConstraint | None:
    if not constrained or prompt.language is None:
        return None
    return constraint_for(prompt.language, stop, table)


# --- the baseline: Hugging Face generate, one prompt at a time ---------------------------------


def _no_pause() -> None:
    pass


class _StopOnBytes(StoppingCriteria):
    def __init__(self, table: TokenTable, stop: bytes, prompt_length: int) -> None:
        self.table, self.stop, self.prompt_length = table, stop, prompt_length

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = [
            self.stop in b"".join(self.table.piece(t) for t in row[self.prompt_length :].tolist())
            for row in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def plain_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 512,
    stop: str = STOP,
    constrained: bool = True,
) -> list[Generation]:
    """Greedy ``model.generate`` on ``prefix + text``, one prompt at a time (the reference)."""
    table = token_table(tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        return_dict_in_generate=True,
        output_logits=True,
    )
    out: list[Generation] = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        constraint = _constraint(prompt, table, stop, constrained)
        processors = LogitsProcessorList(
            [CopyOrTagLogitsProcessor([constraint], ids.shape[1])] if constraint else []
        )
        with torch.inference_mode():
            result = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_StopOnBytes(table, stop.encode(), ids.shape[1])]),
            )
        tokens = result.sequences[0, ids.shape[1] :].tolist()
        logprobs = [_logprob(step[0].float(), t) for step, t in zip(result.logits, tokens, strict=True)]
        out.append(finish(table, stop.encode(), tokens, logprobs))
    return out


# --- the engine --------------------------------------------------------------------------------


@dataclass
class _Item:
    index: int
    shared: tuple[int, ...]  # the prefix's tokens (the cached part; empty without prefix caching)
    rest: list[int]  # the tokens fed per row
    lookup: list[int]  # the prompt tokens after the prefix: where drafts are looked up
    constraint: TokenConstraint | None


@dataclass
class _Row:
    item: _Item
    state: State
    pos: int  # position id of the pending token (the last chosen one, not yet in the cache)
    hay: list[int]  # lookup tokens + generated tokens
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    cursor: int = 0  # where in ``hay`` the last accepted copy ended: ambiguous matches prefer it
    done: bool = False


class TransformersEngine(Engine):
    """Batched greedy decoding of a Hugging Face causal LM (or a peft model wrapping one)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 512,
        batch_size: int = 16,
        stop: str = STOP,
        prefix_cache: bool = True,
        draft_tokens: int = 8,
        constrained: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.stop = stop
        self.prefix_cache = prefix_cache
        self.draft_tokens = draft_tokens
        self.constrained = constrained
        self.table = token_table(tokenizer)
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.pad_id = int(pad) if pad is not None else 0
        self._stop = stop.encode()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
        self._cache_arg = cache_argument(base)
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def clear_cache(self) -> None:
        """Forget the cached prefixes: call it after changing the model's weights."""
        self._prefixes.clear()

    def generate(
        self, prompts: Sequence[Prompt], *, between_steps: Callable[[], None] | None = None
    ) -> list[Generation]:
        step = between_steps or _no_pause
        items = [self._item(i, p) for i, p in enumerate(prompts)]
        # similar lengths share a batch, so little padding and few rows idle at the end
        items.sort(key=lambda it: (it.shared, len(it.rest)))
        out: list[Generation | None] = [None] * len(items)
        with torch.inference_mode():
            start = 0
            while start < len(items):
                end = start + 1
                while (
                    end < len(items)
                    and end - start < self.batch_size
                    and items[end].shared == items[start].shared
                ):
                    end += 1
                for it, gen in zip(items[start:end], self._batch(items[start:end], step), strict=True):
                    out[it.index] = gen
                start = end
        return [g for g in out if g is not None]

    def _item(self, index: int, prompt: Prompt) -> _Item:
        ids = encode_prompt(self.tokenizer, prompt)
        n = shared_length(self.tokenizer, prompt, ids)
        cut = n if self.prefix_cache else 0
        constraint = _constraint(prompt, self.table, self.stop, self.constrained)
        return _Item(index, tuple(ids[:cut]), ids[cut:], ids[n:], constraint)

    def _prefix_kv(self, shared: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kv = self._prefixes.get(shared)
        if kv is None:
            cache = DynamicCache(config=self.model.config)
            self.model(
                input_ids=torch.tensor([shared]), use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
            )
            kv = self._prefixes[shared] = [(layer.keys, layer.values) for layer in cache.layers]
            while len(self._prefixes) > PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(shared)
        return kv

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: DynamicCache, keep: int
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_arg: cache},
        )
        return out.logits.float()  # as generate: choices and log-probabilities in float32

    def _batch(self, items: list[_Item], step: Callable[[], None]) -> list[Generation]:
        step()
        n_rows, shared = len(items), items[0].shared
        cache = DynamicCache(config=self.model.config)
        if shared:  # every row starts from its own copy of the prefix's cache (update copies)
            for layer, (k, v) in enumerate(self._prefix_kv(shared)):
                cache.update(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1), layer)
        width = max(len(it.rest) for it in items)
        # [prefix][padding][row tokens]: each row's last prompt token is in the last column
        ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, len(shared) + width), dtype=torch.long)
        mask[:, : len(shared)] = 1
        pos = torch.zeros((n_rows, width), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it.rest)
            ids[r, width - n :] = torch.tensor(it.rest)
            mask[r, mask.shape[1] - n :] = 1
            pos[r, width - n :] = torch.arange(len(shared), len(shared) + n)
        logits = self._forward(ids, mask, pos, cache, 1)
        rows = [
            _Row(
                it,
                it.constraint.start() if it.constraint else frozenset(),
                len(shared) + len(it.rest),
                list(it.lookup),
            )
            for it in items
        ]
        for r, row in enumerate(rows):
            self._append(row, _choose(row.item.constraint, row.state, logits[r, -1]), logits[r, -1])
        active = [r for r, row in enumerate(rows) if not row.done]
        if active and len(active) < n_rows:
            cache.batch_select_indices(torch.tensor(active, dtype=torch.long))
            mask = mask[active]
        while active:
            step()
            drafts = [self._draft(rows[r]) for r in active]
            width = 1 + max(len(d) for d, _ in drafts)
            ids = torch.full((len(active), width), self.pad_id, dtype=torch.long)
            new = torch.zeros((len(active), width), dtype=torch.long)
            pos = torch.zeros((len(active), width), dtype=torch.long)
            for a, r in enumerate(active):
                feed = [rows[r].tokens[-1], *drafts[a][0]]
                ids[a, : len(feed)] = torch.tensor(feed)
                new[a, : len(feed)] = 1
                pos[a] = torch.arange(rows[r].pos, rows[r].pos + width)
            past = mask.shape[1]
            mask = torch.cat([mask, new], dim=1)
            logits = self._forward(ids, mask, pos, cache, width)
            for a, r in enumerate(active):
                row, (draft, origin) = rows[r], drafts[a]
                j = 0
                while True:
                    token = _choose(row.item.constraint, row.state, logits[a, j])
                    self._append(row, token, logits[a, j])
                    if row.done or j == len(draft) or token != draft[j]:
                        break
                    j += 1
                mask[a, past + j + 1 :] = 0  # rejected drafts and padding: invisible from now on
                row.pos += j + 1
                if j:
                    row.cursor = origin + j
            keep = [a for a, r in enumerate(active) if not rows[r].done]
            if keep and len(keep) < len(active):
                cache.batch_select_indices(torch.tensor(keep, dtype=torch.long))
                mask = mask[keep]
            active = [active[a] for a in keep]
        return [finish(self.table, self._stop, row.tokens, row.logprobs) for row in rows]

    def _append(self, row: _Row, token: int, logits: torch.Tensor) -> None:
        row.tokens.append(token)
        row.logprobs.append(_logprob(logits, token))
        row.hay.append(token)
        seen = len(row.data)
        row.data += self.table.piece(token)
        if row.item.constraint is not None:
            row.state = row.item.constraint.advance(row.state, token)
        row.done = (
            row.data.find(self._stop, max(0, seen - len(self._stop) + 1)) >= 0
            or token in self.table.eos_ids
            or len(row.tokens) >= self.max_new_tokens
        )

    def _draft(self, row: _Row) -> tuple[list[int], int]:
        """Up to ``draft_tokens`` tokens that followed the last n-gram in the prompt, and where they start."""
        budget = min(self.draft_tokens, self.max_new_tokens - len(row.tokens) - 1)
        hay = row.hay
        for n in range(min(MAX_NGRAM, len(hay) - 1), 0, -1):
            if budget <= 0:
                break
            tail = hay[-n:]
            first = tail[0]
            starts = [i for i in range(len(hay) - n) if hay[i] == first and hay[i : i + n] == tail]
            if not starts:
                continue
            after = [i for i in starts if i + n >= row.cursor]
            origin = (after[0] if after else starts[-1]) + n
            draft = hay[origin : origin + budget]
            if row.item.constraint is not None:
                draft = self._admissible(row, draft)
            if draft:
                return draft, origin
        return [], 0

    def _admissible(self, row: _Row, draft: list[int]) -> list[int]:
        """The longest head of ``draft`` the constraint allows (a token it forbids cannot be chosen)."""
        constraint, state = row.item.constraint, row.state
        assert constraint is not None
        for k, token in enumerate(draft):
            state = constraint.advance(state, token)
            if not state or not self.table.piece(token):  # special tokens are never allowed
                return draft[:k]
            if constraint.automaton.is_final(state):
                return draft[: k + 1]
        return draft
