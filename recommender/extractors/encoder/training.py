"""Fine-tuning of the encoder extractor: window examples, a plain AdamW loop, early stopping on the
validation notes. With an output folder, a checkpoint at each epoch's end (weights, optimizer, schedule,
random states, best so far) lets an interrupted run resume where it stopped and end where an
uninterrupted one would; the folder is removed when training succeeds."""

from __future__ import annotations

import copy
import logging
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recommender.document import Document
from recommender.errors import ConfigError, ModelError
from recommender.extractors.base import ModelInfo, fingerprint
from recommender.extractors.checkpoint import CHECKPOINT_DIR, RunClock, load_checkpoint, save_checkpoint
from recommender.extractors.encoder.config import EncoderConfig, resolve_base_model
from recommender.extractors.encoder.extractor import NAME, EncoderExtractor
from recommender.extractors.encoder.model import (
    KiwiEncoderModel,
    LabelMaps,
    bio_tags,
    build_model,
    distance_feature,
    encode_text,
    load_pretrained,
    span_gap,
)
from recommender.progress import Progress
from recommender.schema import load_schema
from recommender.splits import validation_split

log = logging.getLogger(__name__)

IGNORE = -100  # cross_entropy's ignore_index: padding, [CLS]/[SEP] and word-continuation pieces


@dataclass
class WindowExample:
    """One training window: word-piece ids, BIO targets of both heads, and labelled candidate pairs."""

    ids: list[int]
    ent_tags: list[int]
    mod_tags: list[int]
    ent_context: list[int]  # gold entity tag of every piece (the modifier head's input)
    # (entity piece range, modifier piece range, pair type, distance feature, label), window coordinates
    pairs: list[tuple[tuple[int, int], tuple[int, int], int, int, float]] = field(default_factory=list)


def build_examples(
    docs: Sequence[Document], tokenizer: Any, labels: LabelMaps, config: EncoderConfig
) -> tuple[list[WindowExample], dict[str, int]]:
    """Window examples of ``docs`` and counts of gold relations the candidate pairs cover (recall check)."""
    schema = load_schema()
    ent_ix = {t: i for i, t in enumerate(labels.ent_tags)}
    mod_ix = {t: i for i, t in enumerate(labels.mod_tags)}
    pair_ix = {p: i for i, p in enumerate(labels.pairs)}
    stats = {"relations": 0, "covered": 0}
    out: list[WindowExample] = []
    for doc in docs:
        p = encode_text(tokenizer, doc.text, config.max_length, config.window_overlap, config.window_cuts)
        n = len(p.ids)
        tags = {"ent": [0] * n, "mod": [0] * n}
        ranges: dict[str, tuple[int, int]] = {}
        for s in sorted(doc.spans, key=lambda s: (s.begin, -s.end)):
            r = p.piece_range(s.begin, s.end)
            if r is None:
                continue
            ranges[s.id] = r
            layer, ix = ("ent", ent_ix) if schema.is_entity(s.label) else ("mod", mod_ix)
            if f"B-{s.label}" not in ix:
                continue
            seq = tags[layer]
            if any(seq[i] for i in range(*r)):  # same-layer overlap (absent in MTSamples): keep the first
                continue
            seq[r[0]] = ix[f"B-{s.label}"]
            for i in range(r[0] + 1, r[1]):
                seq[i] = ix[f"I-{s.label}"]
        context = list(tags["ent"])
        for seq in tags.values():  # only word-initial pieces are tagged (see Pieces.word_start)
            for i, first in enumerate(p.word_start):
                if not first:
                    seq[i] = IGNORE
        gold = {(r.head, r.tail) for r in doc.relations}
        cands = [
            (e, m)
            for e in doc.spans
            if e.id in ranges and schema.is_entity(e.label)
            for m in doc.spans
            if m.id in ranges
            and (e.label, m.label) in pair_ix
            and span_gap(ranges[e.id], ranges[m.id]) <= config.max_pair_gap
        ]
        stats["relations"] += len(gold)
        stats["covered"] += len(gold & {(e.id, m.id) for e, m in cands})
        for s, e in p.windows:
            ex = WindowExample(p.ids[s:e], tags["ent"][s:e], tags["mod"][s:e], context[s:e])
            for a, b in cands:
                ra, rb = ranges[a.id], ranges[b.id]
                if ra[0] >= s and rb[0] >= s and ra[1] <= e and rb[1] <= e:
                    ex.pairs.append(
                        (
                            (ra[0] - s, ra[1] - s),
                            (rb[0] - s, rb[1] - s),
                            pair_ix[(a.label, b.label)],
                            distance_feature(ra, rb),
                            1.0 if (a.id, b.id) in gold else 0.0,
                        )
                    )
            out.append(ex)
    return out, stats


def _batch_forward(
    model: KiwiEncoderModel, batch: Sequence[WindowExample], cls: int, sep: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ent logits, ent tags, mod logits, mod tags, pair logits, pair labels) of a batch."""
    width = max(len(x.ids) for x in batch) + 2
    ids = torch.tensor([[cls, *x.ids, sep] + [pad] * (width - len(x.ids) - 2) for x in batch])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(x.ids) + 2 for x in batch])[:, None]).long()

    def targets(attr: str) -> torch.Tensor:
        return torch.tensor(
            [[IGNORE, *getattr(x, attr)] + [IGNORE] * (width - len(x.ids) - 1) for x in batch]
        )

    h = model.encode(ids, mask)
    context = torch.tensor([[0, *x.ent_context] + [0] * (width - len(x.ids) - 1) for x in batch])
    ent_logits, mod_logits = model.ent_head(h), model.mod_logits(h, context)
    rows = [(b, *pair) for b, x in enumerate(batch) for pair in x.pairs]
    if rows:
        bsz, t, hid = h.shape
        cumsum = torch.cat([h.new_zeros(bsz, 1, hid), h.cumsum(1)], dim=1).reshape(bsz * (t + 1), hid)

        def pooled(which: int) -> torch.Tensor:
            # +1 skips [CLS]; ranges index the cumulative sum, whose row 0 is the zero row
            lo = torch.tensor([b * (t + 1) + r[which][0] + 1 for b, *r in rows])
            hi = torch.tensor([b * (t + 1) + r[which][1] + 1 for b, *r in rows])
            return (cumsum[hi] - cumsum[lo]) / (hi - lo).unsqueeze(-1).to(h.dtype)

        pair_logits = model.pair_logits(
            pooled(0), pooled(1), torch.tensor([r[3] for r in rows]), torch.tensor([r[4] for r in rows])
        )
        pair_labels = torch.tensor([r[5] for r in rows])
    else:
        pair_logits, pair_labels = h.new_zeros(0), h.new_zeros(0)
    return ent_logits, targets("ent_tags"), mod_logits, targets("mod_tags"), pair_logits, pair_labels


def _loss(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
    ent_logits, ent_t, mod_logits, mod_t, pair_logits, pair_y = out
    ce = nn.functional.cross_entropy
    loss = ce(ent_logits.flatten(0, 1), ent_t.flatten()) + ce(mod_logits.flatten(0, 1), mod_t.flatten())
    if len(pair_y):
        loss = loss + nn.functional.binary_cross_entropy_with_logits(pair_logits, pair_y)
    return loss


def fit_temperatures(
    model: KiwiEncoderModel, examples: Sequence[WindowExample], tokenizer: Any, batch_size: int
) -> dict[str, float]:
    """Temperature scaling (Guo et al. 2017) of each head, fit by NLL on held-out windows."""
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    collected: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("ent", "ent_y", "mod", "mod_y", "rel", "rel_y")
    }
    model.eval()
    with torch.inference_mode():
        for k in range(0, len(examples), batch_size):
            el, et, ml, mt, pl, py = _batch_forward(model, examples[k : k + batch_size], cls, sep, pad)
            keep_e, keep_m = et.flatten() != IGNORE, mt.flatten() != IGNORE
            collected["ent"].append(el.flatten(0, 1)[keep_e])
            collected["ent_y"].append(et.flatten()[keep_e])
            collected["mod"].append(ml.flatten(0, 1)[keep_m])
            collected["mod_y"].append(mt.flatten()[keep_m])
            collected["rel"].append(pl)
            collected["rel_y"].append(py)
    temps: dict[str, float] = {}
    for head in ("ent", "mod", "rel"):
        logits, y = torch.cat(collected[head]), torch.cat(collected[f"{head}_y"])
        if len(y) == 0:
            temps[head] = 1.0
            continue
        temps[head] = _fit_temperature(logits, y, binary=head == "rel")
    return temps


def _fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, binary: bool) -> float:
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)
    loss_fn = nn.functional.binary_cross_entropy_with_logits if binary else nn.functional.cross_entropy

    def nll() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(nll)
    return round(float(log_t.detach().exp().clamp(0.05, 20.0)), 4)


def evaluate_dev(extractor: EncoderExtractor, gold: Sequence[Document], resamples: int = 1) -> dict[str, Any]:
    """The project scorer on ``gold``: NER and spans from raw text, RE with the gold main entities given.
    One bootstrap resample by default: early stopping reads only the point estimates."""
    from recommender.evaluation import entities_only, evaluate

    pred = extractor.predict([d.without_annotations() for d in gold])
    re_pred = extractor.predict([entities_only(d) for d in gold], entities_given=True)
    return evaluate(gold, pred, re_pred=re_pred, resamples=resamples).to_dict()


def _exact_f1(metrics: dict[str, Any], task: str) -> float:
    return float(metrics[task]["exact"]["f1"])


# --- training ------------------------------------------------------------------------------------
def _new_extractor(config: EncoderConfig) -> EncoderExtractor:
    schema = load_schema()
    labels = LabelMaps(bio_tags(schema.entity_names), bio_tags(schema.modifier_names), list(schema.pairs), {})
    if config.init_from:
        base = EncoderExtractor.load(Path(config.init_from))
        if base.labels.pairs != labels.pairs or base.labels.ent_tags != labels.ent_tags:
            raise ModelError(
                "the model to fine-tune was trained on a different schema", source=config.init_from
            )
        base.config = replace_training(base.config, config)
        return base
    tokenizer, encoder = load_pretrained(resolve_base_model(config.base_model))
    limit = getattr(encoder.config, "max_position_embeddings", config.max_length)
    if config.max_length > limit:
        raise ConfigError(
            f"max_length [{config.max_length}] exceeds the encoder's limit of {limit} positions"
        )
    if config.encoder_layers is not None:
        keep_first_layers(encoder, config.encoder_layers)
    model = build_model(encoder, labels, config)
    return EncoderExtractor(model, tokenizer, config, labels, ModelInfo(extractor=NAME, version=""))


def keep_first_layers(encoder: nn.Module, n: int) -> None:
    """Drop all but the first ``n`` transformer layers (BERT-style stacks): less work per note."""
    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise ConfigError(f"encoder_layers needs a BERT-style encoder, not [{type(encoder).__name__}]")
    if n > len(stack):
        raise ConfigError(f"encoder_layers [{n}] exceeds the encoder's {len(stack)} layers")
    encoder.encoder.layer = stack[:n]
    encoder.config.num_hidden_layers = n  # saved with the model, so loading builds n layers


def replace_training(old: EncoderConfig, new: EncoderConfig) -> EncoderConfig:
    """When fine-tuning a model, its architecture settings win; the training settings come from ``new``."""
    arch = (
        "base_model",
        "encoder_layers",
        "max_length",
        "window_cuts",
        "window_overlap",
        "condition_modifiers",
        "rel_hidden",
        "dropout",
    )
    return EncoderConfig.from_dict({**new.to_dict(), **{k: getattr(old, k) for k in arch}})


def train_encoder(
    train_docs: Sequence[Document],
    dev_docs: Sequence[Document],
    config: EncoderConfig,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> EncoderExtractor:
    """Fine-tune an encoder extractor (from ``config.base_model`` or ``config.init_from``) on ``train_docs``
    less their validation notes (``splits.validation_split``), keep the epoch with the best validation
    score (mean of NER and RE exact F1), calibrate on the validation notes, report the chosen model on
    ``dev_docs`` (which choose nothing) and save it to ``out_dir``."""
    if not train_docs:
        raise ConfigError("no training documents")
    fit_docs, val_docs = validation_split(train_docs)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    clock = RunClock()
    ex = _new_extractor(config)
    config = ex.config
    model, tok = ex.model, ex.tokenizer
    train, stats = build_examples(fit_docs, tok, ex.labels, config)
    val, _ = build_examples(val_docs, tok, ex.labels, config)
    log.info(
        "%d training windows; candidate pairs cover %d of %d gold relations",
        len(train),
        stats["covered"],
        stats["relations"],
    )

    head_params = {id(p) for m in model.heads() for p in m.parameters()}
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    groups: list[dict[str, Any]] = [
        {"params": [], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": [], "lr": config.lr, "weight_decay": 0.0},
        {"params": [], "lr": config.head_lr, "weight_decay": config.weight_decay},
    ]
    for name, p in model.named_parameters():
        g = 2 if id(p) in head_params else (1 if name.endswith(no_decay) else 0)
        groups[g]["params"].append(p)
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(groups)
    steps = config.epochs * -(-len(train) // config.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    gen = torch.Generator().manual_seed(config.seed)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id or 0

    best: tuple[float, int, dict[str, torch.Tensor], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    checkpoint = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    run = {"config": config.to_dict(), "data": fingerprint(train_docs)}
    saved = load_checkpoint(checkpoint, run) if checkpoint is not None else None
    done = 0  # epochs finished, by this session or the ones before it
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])  # dropout
        done, history, best = saved["epoch"], saved["history"], saved["best"]
        clock.resume(saved)
        log.info("resuming from the checkpoint after epoch %d", done)
    for epoch in range(done + 1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        batches = [order[k : k + config.batch_size] for k in range(0, len(order), config.batch_size)]
        it: Iterable[list[int]] = batches
        if progress is not None:
            it = progress(batches, f"epoch {epoch}/{config.epochs}", len(batches))
        total = 0.0
        for idx in it:
            loss = _loss(_batch_forward(model, [train[i] for i in idx], cls, sep, pad))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.item()
        model.eval()
        ex.invalidate()
        metrics = evaluate_dev(ex, val_docs) if val_docs else {}
        ner, re_ = (_exact_f1(metrics, "ner"), _exact_f1(metrics, "re")) if metrics else (0.0, 0.0)
        score = (ner + re_) / 2 if metrics else -float(total)
        mean_loss = total / max(len(batches), 1)
        measured = {
            "validation_ner": round(ner, 4) if metrics else None,
            "validation_re": round(re_, 4) if metrics else None,
        }
        history.append({"epoch": epoch, "loss": round(mean_loss, 4), **measured})
        log.info(
            "epoch %d/%d loss %.4f, %s",
            epoch,
            config.epochs,
            mean_loss,
            f"validation NER {ner:.4f} RE {re_:.4f}" if metrics else "no validation notes: kept by loss",
        )
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()), metrics)
        elif epoch - best[1] >= config.patience:
            break
        if checkpoint is not None and epoch < config.epochs:
            state = {
                "run": run,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(),
                "rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                **clock.state(),
            }
            save_checkpoint(checkpoint, state)
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    if val:
        ex.labels.temperatures = fit_temperatures(model, val, tok, config.predict_batch_size)
    ex.invalidate()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    fp = fingerprint(train_docs)
    ex.info = ModelInfo(
        extractor=NAME,
        version=f"encoder-{stamp}-{fp[:6]}",
        data_fingerprint=fp,
        config=config.to_dict(),
        metrics={
            "dev": evaluate_dev(ex, dev_docs, resamples=1000) if dev_docs else {},
            "best_epoch": best[1],
            "history": history,
            "train_notes": len(train_docs),
            "validation_notes": len(val_docs),  # of train_notes: chose the epoch and the temperatures
            "validation_fingerprint": fingerprint(val_docs) if val_docs else "",
            "dev_notes": len(dev_docs),
            "dev_fingerprint": fingerprint(dev_docs) if dev_docs else "",
            "candidate_pair_recall": round(stats["covered"] / max(stats["relations"], 1), 4),
            "temperatures": ex.labels.temperatures,
            **clock.metrics(),  # all sessions of the run
        },
    )
    if out_dir is not None:
        ex.save(Path(out_dir))
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return ex
