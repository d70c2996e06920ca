"""Model commands: ``kiwi train bert`` and ``kiwi predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recommender import corpora
from recommender.cli import app
from recommender.cli.common import err_console, progress
from recommender.errors import ConfigError, NotFoundError
from recommender.extractors.encoder.config import DEFAULT_BASE_MODEL, EncoderConfig
from recommender.formats import FORMATS, detect_format, get_format, read_documents, write_documents

train_app = typer.Typer(help="Train an extractor on an annotated corpus.", no_args_is_help=True)
app.add_typer(train_app, name="train")

_HELP = EncoderConfig.help()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@train_app.command("bert")
def train_bert(
    corpus: Annotated[Path, typer.Option(help="annotated notes (any format kiwi reads)")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    dev: Annotated[
        Path | None,
        typer.Option(help="development notes; default: the fixed split of MTSamples, else 1 note in 6"),
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help=f"corpus format: {', '.join(FORMATS)}")] = None,
    base_model: Annotated[str, typer.Option(help=_HELP["base_model"][1])] = DEFAULT_BASE_MODEL,
    init_from: Annotated[Path | None, typer.Option(help=_HELP["init_from"][1])] = None,
    epochs: Annotated[int, typer.Option(help=_HELP["epochs"][1])] = EncoderConfig.epochs,
    patience: Annotated[int, typer.Option(help=_HELP["patience"][1])] = EncoderConfig.patience,
    lr: Annotated[float, typer.Option(help=_HELP["lr"][1])] = EncoderConfig.lr,
    head_lr: Annotated[float, typer.Option(help=_HELP["head_lr"][1])] = EncoderConfig.head_lr,
    weight_decay: Annotated[float, typer.Option(help=_HELP["weight_decay"][1])] = EncoderConfig.weight_decay,
    batch_size: Annotated[int, typer.Option(help=_HELP["batch_size"][1])] = EncoderConfig.batch_size,
    encoder_layers: Annotated[int | None, typer.Option(help=_HELP["encoder_layers"][1])] = None,
    max_length: Annotated[int, typer.Option(help=_HELP["max_length"][1])] = EncoderConfig.max_length,
    window_cuts: Annotated[str, typer.Option(help=_HELP["window_cuts"][1])] = EncoderConfig.window_cuts,
    window_overlap: Annotated[
        int, typer.Option(help=_HELP["window_overlap"][1])
    ] = EncoderConfig.window_overlap,
    seed: Annotated[int, typer.Option(help=_HELP["seed"][1])] = EncoderConfig.seed,
    precision: Annotated[str, typer.Option(help=_HELP["precision"][1])] = EncoderConfig.precision,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Fine-tune a BERT-style encoder (entities, modifiers, relations) with early stopping on dev."""
    from recommender.extractors.encoder.training import train_encoder

    _set_threads(threads)
    config = EncoderConfig(
        base_model=base_model,
        init_from=str(init_from) if init_from else None,
        epochs=epochs,
        patience=patience,
        lr=lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        encoder_layers=encoder_layers,
        max_length=max_length,
        window_cuts=window_cuts,
        window_overlap=window_overlap,
        seed=seed,
        precision=precision,
    )
    docs = read_documents(corpus, from_)
    if dev is not None:
        train_docs, dev_docs = docs, read_documents(dev)
    elif corpus.resolve() == corpora.SHARED_MTSAMPLES.resolve():
        train_docs, dev_docs = corpora.split_documents(docs)
    else:
        ordered = sorted(docs, key=lambda d: d.id)  # deterministic: every sixth note by id
        train_docs = [d for i, d in enumerate(ordered) if i % 6 != 5]
        dev_docs = [d for i, d in enumerate(ordered) if i % 6 == 5]
    if not train_docs:
        raise ConfigError("no training notes", source=corpus)
    err_console.print(f"training on {len(train_docs)} notes, {len(dev_docs)} for development")
    ex = train_encoder(train_docs, dev_docs, config, out, progress=progress)
    dev_scores = ex.info.metrics.get("dev", {})
    summary = ", ".join(
        f"{task.upper()} exact F1 {dev_scores[task]['exact']['f1']:.3f}"
        for task in ("ner", "re", "spans")
        if task in dev_scores
    )
    err_console.print(
        f"saved {ex.version} to {out} (best epoch {ex.info.metrics['best_epoch']}; dev {summary})"
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="model folder (kiwi_model.json)")],
    src: Annotated[Path, typer.Argument(help="notes: a folder of .txt (brat), or any format kiwi reads")],
    dst: Annotated[Path, typer.Argument(help="output folder or file")],
    to: Annotated[str, typer.Option("--to", help=f"output format: {', '.join(FORMATS)}")] = "brat",
    from_: Annotated[str | None, typer.Option("--from", help="input format (default: detected)")] = None,
    batch_size: Annotated[int, typer.Option(help="notes per batch")] = 16,
    entities_given: Annotated[
        bool, typer.Option(help="keep the input's main entities; predict modifiers and relations")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Pre-annotate notes with a trained model; deterministic."""
    from recommender.extractors import load_extractor

    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got [{batch_size}]")
    get_format(to)
    if not src.exists():
        raise NotFoundError("no such file or folder", source=src)
    _set_threads(threads)
    extractor = load_extractor(model)
    docs = read_documents(src, from_ or detect_format(src))
    inputs = docs if entities_given else [d.without_annotations() for d in docs]
    batches = [inputs[k : k + batch_size] for k in range(0, len(inputs), batch_size)]
    out = [
        d
        for batch in progress(batches, "predicting", total=len(batches))
        for d in extractor.predict(batch, entities_given=entities_given)
    ]
    write_documents(out, dst, to)
    n_spans = sum(len(d.spans) for d in out)
    n_rels = sum(len(d.relations) for d in out)
    err_console.print(f"{len(out)} notes, {n_spans} spans, {n_rels} relations by {extractor.version}: {dst}")
