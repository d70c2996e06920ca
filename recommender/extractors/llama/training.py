"""QLoRA fine-tuning of the LLaMA extractor on Kiwi's instruction examples, early stopping on dev.

The paper's recipe: 4-bit NF4 base weights (bitsandbytes), LoRA on every linear layer (peft), NER and
RE examples mixed in one shuffled set, loss on the target tokens only, AdamW with a cosine schedule
after a linear warm-up, gradient clipping, 2 epochs of batch 4 x accumulation 4. The paper used paged
AdamW 32-bit, a CUDA memory feature; plain AdamW keeps the same 32-bit state on a CPU. Checkpoints in
``out_dir/checkpoint`` (adapter, optimizer, schedule, position, best so far) let an interrupted run
resume where it stopped; the folder is removed when training succeeds.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from recommender.document import Document
from recommender.errors import ConfigError, ModelError
from recommender.extractors.base import ModelInfo, fingerprint
from recommender.extractors.checkpoint import CHECKPOINT_DIR, RunClock, load_checkpoint, save_checkpoint
from recommender.extractors.llama.base_model import base_cache, load_base, load_base_for, resolve_dtype
from recommender.extractors.llama.config import NOT_LEARNT, LlamaConfig
from recommender.extractors.llama.extractor import LlamaExtractor, trained_on
from recommender.extractors.llama.layout import ADAPTER_DIR, NAME, SNAPSHOT_DIR
from recommender.extractors.llama.task import NER, Example, Templates, training_examples
from recommender.progress import Progress
from recommender.splits import validation_split

log = logging.getLogger(__name__)

SNAPSHOT_STEPS = 100  # an adapter kept every this many steps, for the learning curve
IGNORE = -100  # cross-entropy's ignore_index: prompt tokens and padding carry no loss


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]  # IGNORE over the prompt, the target's token ids after it
    kind: str = ""
    shared: int = 0  # leading tokens that are the prompt type's instruction prefix (0: none)


def encode_example(tokenizer: Any, example: Example, prefix: Sequence[int] = ()) -> Encoded:
    """Token ids of ``prompt + " " + target``, tokenized as generation sees them: the prompt as the
    engine encodes it, then the continuation the model writes (which starts with the space).
    ``prefix``: the token ids of the prompt type's instruction, when the prompt starts with them."""
    prompt: list[int] = tokenizer(example.prompt).input_ids
    target: list[int] = tokenizer(" " + example.target, add_special_tokens=False).input_ids
    shared = (
        len(prefix) if prefix and prompt[: len(prefix)] == list(prefix) and len(prompt) > len(prefix) else 0
    )
    return Encoded(prompt + target, [IGNORE] * len(prompt) + target, example.kind, shared)


def _batch(items: Sequence[Encoded], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(x.ids) for x in items)
    ids = torch.tensor([x.ids + [pad] * (width - len(x.ids)) for x in items], device=device)
    labels = torch.tensor([x.labels + [IGNORE] * (width - len(x.ids)) for x in items], device=device)
    mask = torch.tensor([[1] * len(x.ids) + [0] * (width - len(x.ids)) for x in items], device=device)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy of the target tokens. The output layer (a 49k x 576 matmul per position for
    SmolLM2, about a third of the forward pass) runs only where the next token is a target."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum")


def shared_prefix_loss(model: Any, items: Sequence[Encoded], pad: int, device: torch.device) -> torch.Tensor:
    """:func:`target_loss` of examples that start with the same instruction prefix, which is encoded
    once for all of them: its keys and values are shared by every row, and the gradients of all rows
    flow back into that one pass. The same loss and gradients as encoding each example whole (the
    prefix does not see what follows it), at a fraction of the cost: the instruction is most of a
    Kiwi prompt."""
    from transformers import DynamicCache

    from recommender.extractors.llama.generation import cache_argument

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()
    n, rows = items[0].shared, len(items)
    prefix = torch.tensor([items[0].ids[:n]], device=device)
    arg = cache_argument(decoder)
    cache = DynamicCache(config=inner.config)
    decoder(input_ids=prefix, use_cache=True, **{arg: cache})
    shared = DynamicCache(config=inner.config)
    for layer, c in enumerate(cache.layers):
        shared.update(c.keys.expand(rows, -1, -1, -1), c.values.expand(rows, -1, -1, -1), layer)
    width = max(len(x.ids) - n for x in items)
    ids = torch.tensor([x.ids[n:] + [pad] * (width - len(x.ids) + n) for x in items], device=device)
    labels = torch.tensor([x.labels[n:] + [IGNORE] * (width - len(x.ids) + n) for x in items], device=device)
    real = torch.tensor(
        [[1] * (len(x.ids) - n) + [0] * (width - len(x.ids) + n) for x in items], device=device
    )
    mask = torch.cat([torch.ones(rows, n, dtype=real.dtype, device=device), real], dim=1)
    pos = torch.arange(n, n + width, device=device).expand(rows, -1)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, **{arg: shared})[0]
    # the first token after the prefix is a prompt token (no loss), so predictions come from the suffix
    keep = labels[:, 1:] != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep], reduction="sum")


def select_examples(examples: Sequence[Example], config: LlamaConfig) -> list[Example]:
    """The examples a run trains on, NER and RE mixed in one shuffled order: all of them, or
    ``max_examples`` of them, of which ``ner_fraction`` are NER prompts where it is set (as many as
    there are, the rest RE). A capped run takes the examples of corrected notes first and fills the
    rest from the seed notes: a capped retraining job learns every correction it was started for."""
    shuffled = list(examples)
    random.Random(config.seed).shuffle(shuffled)
    cap = config.max_examples
    if not cap:
        return shuffled
    ranked = sorted(shuffled, key=lambda e: not e.corrected)  # stable: shuffled within each group
    if config.ner_fraction is None:
        chosen = set(map(id, ranked[:cap]))
    else:
        ner = [e for e in ranked if e.kind == NER]
        rel = [e for e in ranked if e.kind != NER]
        n_ner = min(len(ner), round(cap * config.ner_fraction))
        n_rel = min(len(rel), cap - n_ner)
        n_ner = min(len(ner), cap - n_rel)  # fill a short RE side with NER
        chosen = set(map(id, ner[:n_ner] + rel[:n_rel]))
    return [e for e in shuffled if id(e) in chosen]


def training_set(
    fit_docs: Sequence[Document], config: LlamaConfig, tokenizer: Any, templates: Templates
) -> tuple[list[Encoded], int]:
    """The encoded examples a run trains on, in their selection order, and how many were left out as
    longer than ``config.max_length`` tokens."""
    examples = select_examples(training_examples(fit_docs, templates), config)
    prefixes = {kind: tokenizer(templates.split(kind, "")[0]).input_ids for kind in templates.texts}
    encoded = [encode_example(tokenizer, e, prefixes[e.kind]) for e in examples]
    kept = [e for e in encoded if len(e.ids) <= config.max_length]
    return kept, len(encoded) - len(kept)


def step_groups(n: int, config: LlamaConfig, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of ``epoch`` (0-based): a fresh shuffle per epoch,
    fixed by the seed, so that a resumed run and a learning curve see the steps the run saw."""
    per_step = config.batch_size * config.grad_accum
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
    return [order[k : k + per_step].tolist() for k in range(0, n, per_step)]


def _trained_on(encoded: Sequence[Encoded], config: LlamaConfig, steps: int) -> Iterator[Encoded]:
    """The examples of the first ``steps`` optimizer steps, once per time they were trained on."""
    per_epoch = math.ceil(len(encoded) / (config.batch_size * config.grad_accum))
    for epoch in range(math.ceil(steps / per_epoch)):
        for group in step_groups(len(encoded), config, epoch)[: steps - epoch * per_epoch]:
            yield from (encoded[i] for i in group)


def examples_seen(encoded: Sequence[Encoded], config: LlamaConfig, steps: int) -> dict[str, int]:
    """NER and RE examples trained on in the first ``steps`` optimizer steps."""
    seen = {NER: 0, "re": 0}
    for e in _trained_on(encoded, config, steps):
        seen[NER if e.kind == NER else "re"] += 1
    return seen


def tokens_seen(encoded: Sequence[Encoded], config: LlamaConfig, steps: int) -> int:
    """Tokens (prompt and target) of the examples trained on in the first ``steps`` optimizer steps."""
    return sum(len(e.ids) for e in _trained_on(encoded, config, steps))


def micro_batches(group: Sequence[int], encoded: Sequence[Encoded], size: int) -> list[list[int]]:
    """A step's examples as micro-batches of at most ``size``: by prompt type (one type's rows share its
    prefix pass), then by length, so that a long sentence does not pad the short ones to its width.
    The summed gradient of the step does not depend on this."""
    by_kind: dict[str, list[int]] = {}
    for i in group:
        by_kind.setdefault(encoded[i].kind if encoded[i].shared else "", []).append(i)
    out = []
    for members in by_kind.values():
        members.sort(key=lambda i: len(encoded[i].ids))
        out += [members[k : k + size] for k in range(0, len(members), size)]
    return out


def _inference_copy(extractor: LlamaExtractor, cache_dir: Path, weights: str) -> LlamaExtractor:
    """The training adapter merged into a 16-bit copy of the weights it trains on (``weights``: the
    quantization used), as ``load`` serves it: generating through 4-bit layers (dequantized at every
    step) or unmerged LoRA is several times slower on a CPU, and dev evaluation generates thousands of
    tokens."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    assert extractor.base is not None
    dtype = resolve_dtype(extractor.config.dtype)
    base, _ = load_base_for(extractor.base, cache_dir, dtype=dtype, trained_on=weights)
    trained = extractor.model
    copy = PeftModel(base, trained.peft_config["default"])
    set_peft_model_state_dict(copy, get_peft_model_state_dict(trained))
    return LlamaExtractor(
        copy.merge_and_unload().eval(),
        extractor.tokenizer,
        extractor.config,
        extractor.templates,
        extractor.info,
        extractor.base,
    )


def predict_dev(extractor: LlamaExtractor, gold: Sequence[Document]) -> tuple[list[Document], list[Document]]:
    """Predictions on ``gold`` as the paper scores them: from raw text, and with the gold main entities
    given (RE mode)."""
    from recommender.evaluation import entities_only

    pred = extractor.predict([d.without_annotations() for d in gold])
    return pred, extractor.predict([entities_only(d) for d in gold], entities_given=True)


def dev_metrics(
    gold: Sequence[Document], pred: Sequence[Document], re_pred: Sequence[Document], resamples: int = 1
) -> dict[str, Any]:
    """The project scorer (NER, RE with entities given, all spans), and the drops summed by kind."""
    from recommender.evaluation import evaluate

    metrics = evaluate(gold, pred, re_pred=re_pred, resamples=resamples).to_dict()
    drops: dict[str, int] = {}
    for d in (*pred, *re_pred):
        for kind, n in d.drops.items():
            drops[kind] = drops.get(kind, 0) + n
    metrics["drops"] = drops
    return metrics


def _exact_f1(metrics: dict[str, Any], task: str) -> float:
    return float(metrics[task]["exact"]["f1"])


def _adapter_state(model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}


def _set_adapter_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def _trainable_model(config: LlamaConfig, cache_dir: Path) -> tuple[Any, Any, Any, str, Templates | None]:
    """(peft model, tokenizer, base identity, quantization used, templates of init_from)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    dtype = resolve_dtype(config.dtype)
    templates = None
    if config.init_from:
        previous = LlamaExtractor.read_folder(Path(config.init_from))
        ref, templates = previous.base, previous.templates
        if ref is None:
            raise ModelError("the model to fine-tune names no base model", source=config.init_from)
        # continued on the weights the adapter learnt against, as they are served (a QLoRA adapter's
        # NF4 weights, dequantized: 16-bit speed and memory), and recorded so, to be served on them too
        used = trained_on(previous.info)
        base, tokenizer = load_base_for(ref, cache_dir, dtype=dtype, trained_on=used)
        model = PeftModel.from_pretrained(base, str(Path(config.init_from) / ADAPTER_DIR), is_trainable=True)
        return model, tokenizer, ref, used, templates
    base, tokenizer, ref, used = load_base(
        config.base, cache_dir, dtype=dtype, quantization=config.quantization
    )
    if used == "nf4":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every linear layer but the output head, as QLoRA does
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    return model, tokenizer, ref, used, templates


def train_llama(
    train_docs: Sequence[Document],
    dev_docs: Sequence[Document],
    config: LlamaConfig,
    out_dir: Path | None,
    progress: Progress[Any] | None = None,
) -> LlamaExtractor:
    """LoRA-tune a base instruct model (``config.base``, or continue ``config.init_from``) on the Kiwi
    instruction examples of ``train_docs`` less their validation notes (``splits.validation_split``);
    keep the adapter with the best validation score (mean of NER and RE exact F1), report it on
    ``dev_docs`` (which choose nothing) and save the model folder to ``out_dir``."""
    if out_dir is None:
        raise ModelError("the LLaMA extractor needs an output folder to train into")
    if not train_docs:
        raise ConfigError("no training documents")
    fit_docs, val_docs = validation_split(train_docs)
    out_dir = Path(out_dir)
    clock = RunClock()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    cache_dir = base_cache(out_dir, config.cache_dir)
    model, tokenizer, ref, used, templates = _trainable_model(config, cache_dir)
    templates = templates or Templates.packaged()
    device = next(model.parameters()).device

    encoded, too_long = training_set(fit_docs, config, tokenizer, templates)
    if not encoded:
        raise ConfigError(f"no training example fits max_length [{config.max_length}] tokens")
    if too_long:
        log.warning("%d examples longer than max_length %d tokens left out", too_long, config.max_length)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(encoded) / per_step)
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)
    log.info("%d examples (%d left out as too long), %d optimizer steps", len(encoded), too_long, total)

    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total), total)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    extractor = LlamaExtractor(
        model, tokenizer, config, templates, ModelInfo(extractor=NAME, version=""), ref
    )
    checkpoint = out_dir / CHECKPOINT_DIR
    run_key = {"config": config.to_dict(), "data": fingerprint(train_docs), "base": ref.to_dict()}
    step, history = 0, []
    best: dict[str, Any] | None = None  # score, step, adapter state, validation metrics
    since_best = 0
    saved = load_checkpoint(checkpoint, run_key, NOT_LEARNT)
    if saved is not None:
        _set_adapter_state(model, saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, history, best, since_best = saved["step"], saved["history"], saved["best"], saved["since_best"]
        torch.set_rng_state(saved["rng"])
        clock.resume(saved)
        log.info("resuming from the checkpoint at step %d", step)

    def evaluate_now() -> bool:
        """Evaluate on the validation notes, keep the best adapter; True when patience is exhausted."""
        nonlocal best, since_best
        model.eval()
        preds = predict_dev(_inference_copy(extractor, cache_dir, used), val_docs) if val_docs else ([], [])
        metrics = dev_metrics(val_docs, *preds) if val_docs else {}
        ner, re_ = (_exact_f1(metrics, "ner"), _exact_f1(metrics, "re")) if metrics else (0.0, 0.0)
        recent = [h["loss"] for h in history[-steps_per_epoch:] if "loss" in h]
        score = (ner + re_) / 2 if metrics else -sum(recent) / max(len(recent), 1)
        history.append({"step": step, "validation_ner": round(ner, 4), "validation_re": round(re_, 4)})
        log.info("step %d validation NER %.4f RE %.4f", step, ner, re_)
        model.train()
        if best is None or score > best["score"]:
            best = {"score": score, "step": step, "adapter": _adapter_state(model)}
            since_best = 0
            return False
        since_best += 1
        return since_best >= config.patience

    def checkpoint_now() -> None:
        state = {
            "run": run_key,
            "adapter": _adapter_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "history": history,
            "best": best,
            "since_best": since_best,
            "rng": torch.get_rng_state(),
            **clock.state(),
        }
        save_checkpoint(checkpoint, state)

    model.train()
    stop = step >= total
    while not stop:
        epoch = step // steps_per_epoch
        groups = step_groups(len(encoded), config, epoch)
        first = step - epoch * steps_per_epoch  # steps of this epoch done before a resume
        todo = groups[first : first + total - step]
        it: Iterable[list[int]] = todo
        if progress is not None:
            resumed = f", resumed at step {first} of {steps_per_epoch}" if first else ""
            it = progress(todo, f"epoch {epoch + 1}/{config.epochs}{resumed}", len(todo))
        for group in it:
            loss_sum = 0.0
            n_target = sum(sum(t != IGNORE for t in encoded[i].labels) for i in group)
            for idx in micro_batches(group, encoded, config.batch_size):
                items = [encoded[i] for i in idx]
                if items[0].shared:
                    loss = shared_prefix_loss(model, items, pad, device)
                else:
                    loss = target_loss(model, _batch(items, pad, device))
                # summed over target tokens and divided by the step's target tokens: every token
                # weighs the same however the examples fall into micro-batches
                loss = loss / max(n_target, 1)
                loss.backward()
                loss_sum += loss.item()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            history.append({"step": step, "loss": round(loss_sum, 4)})
            if step % SNAPSHOT_STEPS == 0:
                # the adapter as peft saves it (config + weights): a vLLM server or a copy of the
                # model folder can load it, so the learning curve is measured after the run
                model.save_pretrained(str(out_dir / SNAPSHOT_DIR / f"step-{step:05d}"))
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            due = config.eval_steps is not None and step % config.eval_steps == 0
            if (due or end_of_epoch) and evaluate_now():
                stop = True
            if step == total:
                stop = True
            if stop:
                break
            if step % config.checkpoint_steps == 0 or end_of_epoch:
                checkpoint_now()
    if best is None:  # resumed from a checkpoint written after the last step
        evaluate_now()
    assert best is not None
    _set_adapter_state(model, best["adapter"])
    model.eval()
    extractor.invalidate()
    # the chosen adapter on the development notes, once, with bootstrap intervals
    metrics = {}
    if dev_docs:
        predicted = predict_dev(_inference_copy(extractor, cache_dir, used), dev_docs)
        metrics = dev_metrics(dev_docs, *predicted, resamples=1000)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    fp = fingerprint(train_docs)
    extractor.info = ModelInfo(
        extractor=NAME,
        version=f"llama-{stamp}-{fp[:6]}",
        data_fingerprint=fp,
        config=config.to_dict(),
        base_model=ref.to_dict(),
        metrics={
            "dev": metrics,
            "best_step": best["step"],
            "steps": step,
            "history": history,
            "train_notes": len(train_docs),
            "validation_notes": len(val_docs),  # of train_notes: chose the adapter
            "validation_fingerprint": fingerprint(val_docs) if val_docs else "",
            "dev_notes": len(dev_docs),
            "dev_fingerprint": fingerprint(dev_docs) if dev_docs else "",
            "train_examples": len(encoded),
            "examples_too_long": too_long,
            "quantization": used,
            **clock.metrics(),  # all sessions of the run
        },
    )
    extractor.save(out_dir)
    if config.merge:
        extractor.save_merged(out_dir, cache_dir)
    shutil.rmtree(checkpoint, ignore_errors=True)
    log.info("saved %s (%s)", out_dir, json.dumps({"best_step": best["step"], "steps": step}))
    return extractor
