"""``kiwi.encoder.v1``: entities, modifiers and hasAttr relations from one pass of a BERT-style encoder."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recommender.document import Choice, Document, Span
from recommender.errors import ModelError
from recommender.extractors import register
from recommender.extractors.base import (
    Extractor,
    ModelInfo,
    binary_choice,
    least_confidence,
)
from recommender.extractors.encoder.card import write_card
from recommender.extractors.encoder.config import EncoderConfig
from recommender.extractors.encoder.model import (
    KiwiEncoderModel,
    LabelMaps,
    Pieces,
    build_model,
    distance_feature,
    encode_text,
    pool,
    span_gap,
)
from recommender.schema import load_schema

log = logging.getLogger(__name__)

NAME = "kiwi.encoder.v1"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
ENCODER_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
# What models saved before these settings existed were trained with.
BEFORE_SETTINGS = {"window_cuts": "fixed", "condition_modifiers": False}


@dataclass
class _Found:
    """A span found (or given) in a document, with its word-piece range."""

    label: str
    begin: int
    end: int
    pieces: tuple[int, int] | None
    score: float
    given: Span | None = None


def decode_bio(tags: list[int], probs: list[float], names: list[str]) -> list[tuple[str, int, int, float]]:
    """(label, first piece, end piece, mean tag probability) for each span of a BIO sequence.

    An I- tag that does not continue a span of its type starts one (the usual repair of CRF-free
    decoding), so a span whose B- was missed is not lost.
    """
    out: list[tuple[str, int, int, float]] = []
    cur: list[Any] | None = None
    for i, t in enumerate(tags):
        name = names[t]
        kind, label = (name[0], name[2:]) if name != "O" else ("O", "")
        if cur is not None and kind == "I" and label == cur[0]:
            cur[2] = i + 1
            cur[3].append(probs[i])
            continue
        if cur is not None:
            out.append((cur[0], cur[1], cur[2], sum(cur[3]) / len(cur[3])))
            cur = None
        if kind in ("B", "I"):
            cur = [label, i, i + 1, [probs[i]]]
    if cur is not None:
        out.append((cur[0], cur[1], cur[2], sum(cur[3]) / len(cur[3])))
    return out


def resolve_precision(precision: str) -> str:
    """``auto`` is bf16 on CPUs with native bfloat16 (AVX512-BF16, AMX), where it is fast; elsewhere bf16 is
    emulated and slow, so auto falls back to int8."""
    if precision != "auto":
        return precision
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "int8"


def bio_viterbi(logp: np.ndarray, names: list[str]) -> list[int]:
    """The most probable tag sequence (``logp``: [words, tags] log-probabilities) in which every I-X
    follows B-X or I-X. Measured on dev: +3 points of exact NER F1 over per-word argmax with repair,
    which turns a stray I- into a span of its own or cuts a span at a wrong B-."""
    n, k = logp.shape
    if n == 0:
        return []
    blocked = -1e9
    trans = np.zeros((k, k))  # [from, to]
    start = np.zeros(k)
    for j, name in enumerate(names):
        if name.startswith("I-"):
            start[j] = blocked
            trans[:, j] = [0.0 if other[2:] == name[2:] and other != "O" else blocked for other in names]
    score = start + logp[0]
    back = np.zeros((n, k), dtype=np.int64)
    cand = np.empty((k, k))  # reused: this loop runs once per word of every note
    columns = np.arange(k)
    for t in range(1, n):
        np.add(score[:, None], trans, out=cand)
        back[t] = best = cand.argmax(axis=0)
        score = cand[best, columns] + logp[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def word_tags(
    tags: list[int], probs: list[float], word_start: list[bool], names: list[str]
) -> tuple[list[int], list[float]]:
    """Tags and probabilities where every word-continuation piece takes its word's first-piece tag
    (as I- of the same type), so spans begin and end on word boundaries, as the annotations do."""
    inside = {k: names.index(f"I-{n[2:]}") for k, n in enumerate(names) if n != "O"}
    out_t, out_p = list(tags), list(probs)
    for i in range(1, len(tags)):
        if not word_start[i]:
            prev = out_t[i - 1]
            out_t[i], out_p[i] = (inside[prev] if prev else 0), out_p[i - 1]
    return out_t, out_p


def word_choices(kind: str, logp: np.ndarray, words: list[int], path: list[int], p: Pieces) -> list[Choice]:
    """Each word's tag distribution (``logp``: [pieces, tags]) and the tag the Viterbi path gave it; a
    word runs from its first piece to the piece before the next word's first."""
    if not words:
        return []
    probs = np.exp(logp[words])
    top2 = np.sort(probs, axis=1)[:, -2:]  # a BIO tag set has O and at least B-X, I-X
    ent = -(probs * logp[words]).sum(1) / np.log(probs.shape[1])
    ends = [*words[1:], len(p.ids)]
    return [
        Choice(
            kind,
            p.offsets[w][0],
            p.offsets[last - 1][1],
            round(float(probs[k, path[k]]), 4),
            round(float(top2[k, 1]), 4),
            round(float(top2[k, 0]), 4),
            round(float(ent[k]), 4),
        )
        for k, (w, last) in enumerate(zip(words, ends, strict=True))
    ]


@register(NAME)
class EncoderExtractor(Extractor):
    config_class = EncoderConfig
    trainer = "recommender.extractors.encoder.training:train_encoder"

    def __init__(
        self,
        model: KiwiEncoderModel,
        tokenizer: Any,
        config: EncoderConfig,
        labels: LabelMaps,
        info: ModelInfo,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.labels = labels
        self.info = info
        self.schema = load_schema()
        self._pair_index = {p: i for i, p in enumerate(labels.pairs)}
        self._infer: nn.Module | None = None  # the (possibly quantized) copy used for inference
        self._infer_lock = threading.Lock()
        self._precision = ""  # config.precision resolved for this machine, with the inference copy

    # --- inference -----------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget the inference copy after the weights changed (training)."""
        self._infer = None

    def _inference_model(self) -> nn.Module:
        with self._infer_lock:  # concurrent first requests build one copy
            return self._build_inference_model()

    def _build_inference_model(self) -> nn.Module:
        if self._infer is None:
            model = copy.deepcopy(self.model).eval()
            self._precision = resolve_precision(self.config.precision)
            if self._precision == "int8":
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                # The encoder's Linear layers dominate CPU time. One int8 scale per output channel
                # keeps dev F1 within a point of bf16; one per tensor lost 2-4 points.
                model.encoder = quantize_dynamic(model.encoder, {nn.Linear: per_channel_dynamic_qconfig})
            elif self._precision == "bf16":
                # What autocast would cast the Linear weights to on every call, done once: same
                # results, ~5% less time, half the weight memory.
                for module in model.encoder.modules():
                    if isinstance(module, nn.Linear):
                        module.to(torch.bfloat16)
            self._infer = model
        return self._infer

    def encode(self, texts: Sequence[str]) -> list[Pieces]:
        cfg = self.config
        return [
            encode_text(self.tokenizer, t, cfg.max_length, cfg.window_overlap, cfg.window_cuts) for t in texts
        ]

    @torch.inference_mode()
    def hidden_states(self, pieces: Sequence[Pieces], model: nn.Module | None = None) -> list[torch.Tensor]:
        """Per document, the encoder state of every word piece ([pieces, hidden]); windows are batched
        across documents by length so padding stays small."""
        model = model or self._inference_model()
        hidden = model.encoder.config.hidden_size
        out = [torch.zeros(len(p.ids), hidden) for p in pieces]
        jobs = [(d, w) for d, p in enumerate(pieces) for w in range(len(p.windows))]
        jobs.sort(key=lambda j: -(pieces[j[0]].windows[j[1]][1] - pieces[j[0]].windows[j[1]][0]))
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pad = self.tokenizer.pad_token_id or 0
        bs = self.config.predict_batch_size
        for k in range(0, len(jobs), bs):
            batch = jobs[k : k + bs]
            seqs = [[cls, *pieces[d].ids[slice(*pieces[d].windows[w])], sep] for d, w in batch]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            # bf16 autocast keeps LayerNorm and softmax in fp32: dev F1 as fp32, about half the time
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._precision == "bf16"):
                states = model.encode(ids, mask)
            for row, (d, w) in enumerate(batch):
                start = pieces[d].windows[w][0]
                lo, hi = pieces[d].owned[w]
                out[d][lo:hi] = states[row, 1 + lo - start : 1 + hi - start]
        return out

    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        model = self._inference_model()
        pieces = self.encode([d.text for d in docs])
        states = self.hidden_states(pieces, model)
        with torch.inference_mode():
            return [
                self._decode(doc, p, h, model, entities_given)
                for doc, p, h in zip(docs, pieces, states, strict=True)
            ]

    def _spans(
        self, logits: torch.Tensor, temp: float, names: list[str], p: Pieces, kind: str
    ) -> tuple[list[_Found], list[Choice]]:
        """The spans of one BIO head and, for active learning, each word's tag distribution."""
        logp = torch.log_softmax(logits.float() / temp, dim=-1).numpy()
        words = [i for i, first in enumerate(p.word_start) if first]
        tags, probs = [0] * len(p.ids), [1.0] * len(p.ids)
        path = bio_viterbi(logp[words], names)
        for i, t in zip(words, path, strict=True):
            tags[i], probs[i] = t, float(np.exp(logp[i, t]))
        tag_list, prob_list = word_tags(tags, probs, p.word_start, names)
        found = [
            _Found(label, p.offsets[a][0], p.offsets[b - 1][1], (a, b), conf)
            for label, a, b, conf in decode_bio(tag_list, prob_list, names)
        ]
        return found, word_choices(kind, logp, words, path, p)

    def _entity_tag_ids(self, ents: list[_Found], n: int) -> torch.Tensor:
        """Piece-level BIO ids of the entity head's tag set for the entities found or given."""
        tags = self.labels.ent_tags
        ids = [0] * n
        for e in ents:
            if e.pieces is None or f"B-{e.label}" not in tags:
                continue
            a, b = e.pieces
            ids[a] = tags.index(f"B-{e.label}")
            ids[a + 1 : b] = [tags.index(f"I-{e.label}")] * (b - a - 1)
        return torch.tensor(ids, dtype=torch.long)

    def _decode(
        self, doc: Document, p: Pieces, h: torch.Tensor, model: nn.Module, entities_given: bool
    ) -> Document:
        temps = self.labels.temperatures
        out = Document(
            id=doc.id,
            text=doc.text,
            sentences=list(doc.sentences),
            tokens=list(doc.tokens),
            meta=copy.deepcopy(doc.meta),
        )
        if entities_given:
            given = [s for s in doc.spans if self.schema.is_entity(s.label)]
            ents = [_Found(s.label, s.begin, s.end, p.piece_range(s.begin, s.end), 1.0, s) for s in given]
        else:
            ents, out.choices = self._spans(
                model.ent_head(h), temps.get("ent", 1.0), self.labels.ent_tags, p, "entity"
            )
        mod_logits = model.mod_logits(h, self._entity_tag_ids(ents, len(p.ids)))
        mods, mod_choices = self._spans(
            mod_logits, temps.get("mod", 1.0), self.labels.mod_tags, p, "modifier"
        )
        out.choices += mod_choices

        # Candidate pairs: allowed by the schema, close enough and in one window, as in training
        # (99.6% of gold pairs share a sentence).
        cands = [
            (i, j, self._pair_index[(e.label, m.label)], distance_feature(e.pieces, m.pieces))
            for i, e in enumerate(ents)
            if e.pieces is not None
            for j, m in enumerate(mods)
            if (e.label, m.label) in self._pair_index
            and m.pieces is not None
            and span_gap(e.pieces, m.pieces) <= self.config.max_pair_gap
            and p.share_window(e.pieces, m.pieces)
        ]
        rel_probs: list[float] = []
        if cands:
            cumsum = torch.cat([h.new_zeros(1, h.shape[1]), h.cumsum(0)])
            e_rep = pool(cumsum, torch.tensor([ents[i].pieces for i, _, _, _ in cands]))
            m_rep = pool(cumsum, torch.tensor([mods[j].pieces for _, j, _, _ in cands]))
            logits = model.pair_logits(
                e_rep, m_rep, torch.tensor([c[2] for c in cands]), torch.tensor([c[3] for c in cands])
            )
            rel_probs = torch.sigmoid(logits / temps.get("rel", 1.0)).tolist()

        source = self.version
        ent_spans: list[Span] = []
        for e in ents:
            if e.given is not None:
                span = replace(e.given)
                out.spans.append(span)
            else:
                span = out.add_span(e.label, e.begin, e.end, score=round(e.score, 4), source=source)
            ent_spans.append(span)
        mod_spans = [
            out.add_span(m.label, m.begin, m.end, score=round(m.score, 4), source=source) for m in mods
        ]
        for (i, j, _, _), prob in zip(cands, rel_probs, strict=True):
            e, m = ents[i], mods[j]
            out.choices.append(
                binary_choice(
                    "link", min(e.begin, m.begin), max(e.end, m.end), prob, self.config.rel_threshold
                )
            )
            if prob >= self.config.rel_threshold:
                out.add_relation(ent_spans[i], mod_spans[j], score=round(prob, 4), source=source)

        # Active learning: 1 - mean confidence of every decision made (spans kept, pairs judged).
        decisions = [m.score for m in mods] + [max(q, 1 - q) for q in rel_probs]
        decisions += [] if entities_given else [e.score for e in ents]
        if decisions:
            out.uncertainty = least_confidence(decisions)
        else:
            top = (
                torch.softmax(model.ent_head(h) / temps.get("ent", 1.0), -1).max(-1).values
                if len(h)
                else None
            )
            out.uncertainty = round(1 - float(top.mean()), 4) if top is not None else 0.0
        return out.sort()

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(folder / WEIGHTS_FILE))
        self.model.encoder.config.save_pretrained(folder / ENCODER_DIR)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        (folder / LABELS_FILE).write_text(
            json.dumps(self.labels.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        self.info.config = self.config.to_dict()
        self.info.save(folder)
        encoder = self.model.encoder.config
        write_card(
            folder, self.info, self.config, self.labels, encoder.num_hidden_layers, encoder.hidden_size
        )

    @classmethod
    def load(cls, folder: Path) -> EncoderExtractor:
        from safetensors import SafetensorError
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError("no such model folder", source=folder)
        info = ModelInfo.load(folder)
        if info.extractor != NAME:
            raise ModelError(f"model folder is for extractor [{info.extractor}], not [{NAME}]", source=folder)
        config = EncoderConfig.from_dict({**BEFORE_SETTINGS, **info.config})
        for part in (WEIGHTS_FILE, LABELS_FILE, ENCODER_DIR, TOKENIZER_DIR):
            if not (folder / part).exists():
                raise ModelError(f"incomplete model folder: [{part}] is missing", source=folder)
        if info.schema_version != load_schema().version:
            log.warning(
                "model %s was trained on schema %s, this is %s",
                info.version,
                info.schema_version,
                load_schema().version,
            )
        try:
            labels = LabelMaps.from_dict(json.loads((folder / LABELS_FILE).read_text(encoding="utf-8")))
            tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder / ENCODER_DIR))
            model = build_model(encoder, labels, config)
            load_model(model, str(folder / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise ModelError(
                f"cannot load the model ({type(e).__name__}: {str(e)[:200]})", source=folder
            ) from None
        return cls(model.eval(), tokenizer, config, labels, info)
