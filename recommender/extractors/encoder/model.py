"""The network (shared encoder, two BIO heads, a pair classifier) and the word-piece windows it reads."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recommender.errors import ModelError
from recommender.extractors.encoder.config import EncoderConfig

# bitsandbytes (imported by transformers for optimizers we never use) warns on CPUs with AVX512-BF16
# that an optional 4-bit kernel package is missing: nothing to do with this model, so not shown.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Distance features of a (entity, modifier) pair: a gap bucket times the modifier's side of the entity.
_GAP_EDGES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
N_SIDES = 3  # modifier overlaps the entity, lies before it, lies after it
N_DIST = (len(_GAP_EDGES) + 1) * N_SIDES


def bio_tags(labels: Sequence[str]) -> list[str]:
    return ["O"] + [f"{p}-{lab}" for lab in labels for p in ("B", "I")]


def distance_feature(ent: tuple[int, int], mod: tuple[int, int]) -> int:
    """Bucketed gap in word pieces between two half-open piece ranges, and the modifier's side."""
    if mod[1] <= ent[0]:
        side, gap = 1, ent[0] - mod[1]
    elif mod[0] >= ent[1]:
        side, gap = 2, mod[0] - ent[1]
    else:
        side, gap = 0, 0
    bucket = sum(gap >= e for e in _GAP_EDGES)
    return bucket * N_SIDES + side


def span_gap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, max(a[0], b[0]) - min(a[1], b[1]))


@dataclass
class Pieces:
    """A text as word pieces: ids, character offsets, and the windows that cover them."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    windows: list[tuple[int, int]]  # half-open piece ranges, each <= max_length - 2 pieces
    owned: list[tuple[int, int]]  # the part of each window whose hidden states the document keeps
    # Whether each piece begins a word of the tokenizer's pre-tokenizer (whitespace and punctuation).
    # Tags are read on word-initial pieces only, so a span never starts or ends inside a word.
    word_start: list[bool]

    def share_window(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        """Whether one window holds both piece ranges (training only ever pairs spans that way)."""
        lo, hi = min(a[0], b[0]), max(a[1], b[1])
        return any(s <= lo and hi <= e for s, e in self.windows)

    def piece_range(self, begin: int, end: int) -> tuple[int, int] | None:
        """Pieces overlapping the characters [begin, end), as a half-open range; None if there are none."""
        first = next((i for i, (b, e) in enumerate(self.offsets) if e > begin), None)
        if first is None or self.offsets[first][0] >= end:
            return None
        last = first
        while last + 1 < len(self.offsets) and self.offsets[last + 1][0] < end:
            last += 1
        return first, last + 1


_SENTENCE_END = frozenset(".?!;")


def sentence_windows(
    text: str, offsets: list[tuple[int, int]], size: int, overlap: int
) -> list[tuple[int, int]]:
    """Half-open piece ranges of at most ``size`` pieces, cut before a piece that follows a line break
    or sentence-final punctuation, as close as possible to equal lengths."""
    n = len(offsets)

    def starts_sentence(i: int) -> bool:
        gap = text[offsets[i - 1][1] : offsets[i][0]]
        return "\n" in gap or (bool(gap) and text[offsets[i - 1][0] : offsets[i - 1][1]] in _SENTENCE_END)

    windows: list[tuple[int, int]] = []
    s = 0
    while s < n:
        if n - s <= size:
            windows.append((s, n))
            break
        balanced = s + math.ceil((n - s) / math.ceil((n - s) / size))
        cuts = [i for i in range(s + size // 2, s + size + 1) if starts_sentence(i)]
        if cuts:
            e = min(cuts, key=lambda i: abs(i - balanced))
            windows.append((s, e))
            s = e
        else:  # one very long sentence: cut it, sharing ``overlap`` pieces of context
            windows.append((s, s + size))
            s += size - overlap
    return windows


def encode_text(tokenizer: Any, text: str, max_length: int, overlap: int, cuts: str = "sentences") -> Pieces:
    """Split ``text`` into windows of word pieces that together cover every piece.

    ``cuts="sentences"``: windows end where a sentence or line ends and are balanced in length, so
    no piece is encoded twice (a third less work than overlapping windows on a typical note); only a
    sentence longer than half a window is cut inside, with ``overlap`` pieces shared there.
    ``cuts="fixed"``: windows of ``max_length`` pieces every ``max_length - overlap`` pieces.
    Where windows overlap, each piece is owned by the window where it sits furthest from an edge.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    words = enc.word_ids()
    word_start = [i == 0 or words[i] is None or words[i] != words[i - 1] for i in range(len(ids))]
    size = max_length - 2
    if cuts == "sentences":
        windows = sentence_windows(text, offsets, size, overlap)
    else:
        step = size - overlap
        n = len(ids)
        windows = [(s, min(s + size, n)) for s in range(0, max(n - overlap, 1), step)] if n else []
    owned = []
    for k, (s, e) in enumerate(windows):
        lo = s if k == 0 else max(s, (s + windows[k - 1][1]) // 2)
        hi = e if k == len(windows) - 1 else min(e, (windows[k + 1][0] + e) // 2)
        owned.append((lo, hi))
    return Pieces(ids, offsets, windows, owned, word_start)


class KiwiEncoderModel(nn.Module):
    """One transformer encoder shared by an entity BIO head, a modifier BIO head and a pair classifier."""

    def __init__(
        self,
        encoder: nn.Module,
        n_ent_tags: int,
        n_mod_tags: int,
        n_pairs: int,
        rel_hidden: int,
        dropout: float,
        condition_modifiers: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.ent_head = nn.Linear(hidden, n_ent_tags)
        self.mod_head = nn.Linear(hidden, n_mod_tags)
        # The entity tag of each piece, added to its state before the modifier head: a body location
        # is bounded by the problem it sits in, and in RE mode the entities are given.
        self.ent_context = nn.Embedding(n_ent_tags, hidden) if condition_modifiers else None
        self.pair_type = nn.Embedding(n_pairs, 32)
        self.distance = nn.Embedding(N_DIST, 32)
        self.rel_head = nn.Sequential(
            nn.Linear(3 * hidden + 64, rel_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(rel_hidden, 1)
        )

    def heads(self) -> list[nn.Module]:
        heads = [self.ent_head, self.mod_head, self.pair_type, self.distance, self.rel_head]
        return heads + ([self.ent_context] if self.ent_context is not None else [])

    def mod_logits(self, h: torch.Tensor, ent_tags: torch.Tensor) -> torch.Tensor:
        """Modifier tag logits of states ``h`` given the entity tag ids of the same pieces."""
        if self.ent_context is None:
            return self.mod_head(h)
        return self.mod_head(h + self.ent_context(ent_tags).to(h.dtype))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.dropout(out.last_hidden_state)

    def pair_logits(
        self, ent: torch.Tensor, mod: torch.Tensor, pair_type: torch.Tensor, distance: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([ent, mod, ent * mod, self.pair_type(pair_type), self.distance(distance)], dim=-1)
        return self.rel_head(x).squeeze(-1)


def pool(cumsum: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over half-open ranges, from ``cumsum`` = zero row + cumulative sum ([n+1, H])."""
    begin, end = ranges[:, 0], ranges[:, 1]
    return (cumsum[end] - cumsum[begin]) / (end - begin).clamp(min=1).unsqueeze(-1).to(cumsum.dtype)


@dataclass
class LabelMaps:
    """Tag inventories of the two BIO heads, the allowed pairs, and the calibration temperatures."""

    ent_tags: list[str]
    mod_tags: list[str]
    pairs: list[tuple[str, str]]
    temperatures: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ent_tags": self.ent_tags,
            "mod_tags": self.mod_tags,
            "pairs": [list(p) for p in self.pairs],
            "temperatures": self.temperatures,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelMaps:
        return cls(
            list(data["ent_tags"]),
            list(data["mod_tags"]),
            [(str(a), str(b)) for a, b in data["pairs"]],
            {k: float(v) for k, v in data.get("temperatures", {}).items()},
        )


def build_model(encoder: nn.Module, labels: LabelMaps, config: EncoderConfig) -> KiwiEncoderModel:
    """The network for these label maps on top of ``encoder`` (fresh heads)."""
    return KiwiEncoderModel(
        encoder,
        len(labels.ent_tags),
        len(labels.mod_tags),
        len(labels.pairs),
        config.rel_hidden,
        config.dropout,
        config.condition_modifiers,
    )


def load_pretrained(name: str) -> tuple[Any, nn.Module]:
    """Tokenizer and encoder of a Hugging Face model; the error says what to do when it is missing."""
    from huggingface_hub import constants
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        encoder = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as e:
        offline = constants.HF_HUB_OFFLINE  # the hub library's reading of HF_HUB_OFFLINE, which it obeys
        hint = (
            "HF_HUB_OFFLINE is set, so the hub was not asked; unset it to download, or "
            if offline
            else "check the name and network access, or "
        )
        raise ModelError(
            f"cannot load base model [{name}] ({type(e).__name__}); {hint}download it "
            "(`huggingface-cli download NAME`) and pass its local folder, "
            "or use the offline default --base-model minilm"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"base model [{name}] has no fast tokenizer (character offsets are needed)")
    return tokenizer, encoder
