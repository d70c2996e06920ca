"""Model commands: ``kiwi train FAMILY`` (one per extractor family) and ``kiwi predict``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from recommender import corpora
from recommender.cli import ray_run
from recommender.cli.common import drops_line, err_console, progress
from recommender.document import total_drops
from recommender.errors import ConfigError, NotFoundError
from recommender.extractors import FAMILIES, Family
from recommender.extractors.base import ExtractorConfig
from recommender.formats import FORMATS, detect_format, get_format, read_documents, write_documents

commands = typer.Typer()  # this module's commands, loaded by the root on first use

train_app = typer.Typer(help="Train an extractor on an annotated corpus.", no_args_is_help=True)
commands.add_typer(train_app, name="train")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def train_family(
    fam: Family,
    config: ExtractorConfig,
    corpus: Path,
    out: Path,
    dev: Path | None = None,
    corpus_format: str | None = None,
    threads: int | None = None,
) -> None:
    """``kiwi train FAMILY``: read the notes, choose the dev split, train, save, say what came out."""
    from recommender.extractors import get_extractor_class

    _set_threads(threads)
    docs = read_documents(corpus, corpus_format)
    if dev is not None:
        dev_docs = read_documents(dev)
        dev_texts = {d.text for d in dev_docs}  # a card never scores notes the model trained on
        train_docs = [d for d in docs if d.text not in dev_texts]
    else:
        train_docs, dev_docs = corpora.development_split(docs, corpus)
    if not train_docs:
        raise ConfigError("no training notes", source=corpus)
    err_console.print(f"training on {len(train_docs)} notes, {len(dev_docs)} for development")
    ex = get_extractor_class(fam.name).train(train_docs, dev_docs, config, out, progress=progress)
    metrics = ex.info.metrics
    dev_scores = metrics.get("dev", {})
    summary = ", ".join(
        f"{task.upper()} exact F1 {dev_scores[task]['exact']['f1']:.3f}"
        for task in ("ner", "re", "spans")
        if task in dev_scores
    )
    best = f"best epoch {metrics['best_epoch']}; " if "best_epoch" in metrics else ""
    err_console.print(f"saved {ex.version} to {out} ({best}dev {summary or 'not measured'})")


def _option_name(f: Field[Any]) -> str:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if f.type in (bool, "bool", "bool | None") else flag


def _train_command(fam: Family) -> Callable[..., None]:
    """A ``kiwi train`` command whose options are the family config's fields, with their help texts."""
    config_class = fam.config_class()
    hints = get_type_hints(config_class)
    params = [
        inspect.Parameter(
            "corpus",
            KW,
            annotation=Annotated[Path, typer.Option(help="annotated notes (any format kiwi reads)")],
        ),
        inspect.Parameter("out", KW, annotation=Annotated[Path, typer.Option(help="model folder to write")]),
        inspect.Parameter(
            "dev",
            KW,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(
                    help="development notes; default: corpora.development_split (see corpora/README.md)"
                ),
            ],
        ),
        inspect.Parameter(
            "corpus_format",
            KW,
            default=None,
            annotation=Annotated[
                str | None, typer.Option("--from", help=f"corpus format: {', '.join(FORMATS)}")
            ],
        ),
        inspect.Parameter(
            "threads",
            KW,
            default=None,
            annotation=Annotated[int | None, typer.Option(help="torch CPU threads")],
        ),
    ]
    for f in fields(config_class):  # type: ignore[arg-type]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        option = typer.Option(_option_name(f), help=f.metadata.get("help", ""))
        params.append(
            inspect.Parameter(f.name, KW, default=default, annotation=Annotated[hints[f.name], option])
        )

    def command(**kwargs: Any) -> None:
        common = {k: kwargs.pop(k) for k in ("corpus", "out", "dev", "corpus_format", "threads")}
        train_family(fam, config_class(**kwargs), **common)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = fam.summary[0].upper() + fam.summary[1:] + "."
    command.__name__ = f"train_{fam.command}"
    return command


KW = inspect.Parameter.KEYWORD_ONLY
for _family in FAMILIES:
    train_app.command(_family.command)(_train_command(_family))


@commands.command()
def predict(
    model: Annotated[Path, typer.Option(help="model folder (kiwi_model.json)")],
    src: Annotated[
        Path | None, typer.Argument(help="notes: a folder of .txt (brat), or any format kiwi reads")
    ] = None,
    dst: Annotated[Path | None, typer.Argument(help="output folder or file")] = None,
    to: Annotated[
        str, typer.Option("--to", help=f"output format: {', '.join(FORMATS)}; with --ray also parquet")
    ] = "brat",
    from_: Annotated[str | None, typer.Option("--from", help="input format (default: detected)")] = None,
    batch_size: Annotated[int, typer.Option(help="notes per batch")] = 16,
    entities_given: Annotated[
        bool, typer.Option(help="keep the input's main entities; predict modifiers and relations")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    ray: ray_run.RayFlag = False,
    ray_address: ray_run.RayAddress = None,
    ray_actors: ray_run.RayActors = None,
    ray_actor_cpus: ray_run.RayActorCpus = 1.0,
    engine_url: ray_run.EngineUrls = None,
    label_studio: ray_run.LabelStudioProject = None,
    label_studio_writers: ray_run.LabelStudioWriters = ray_run.WRITERS,
) -> None:
    """Pre-annotate notes with a trained model; deterministic.

    With --ray: through the prediction cache (resumable; also --to parquet); with --ray --label-studio
    PROJECT: the project's tasks, and their predictions pushed back to it (no SRC, DST)."""
    from recommender.extractors import load_extractor
    from recommender.settings import load_settings

    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got [{batch_size}]")
    if label_studio is not None:
        if not (ray or ray_address):
            raise ConfigError("--label-studio needs --ray (one process: kiwi precompute --label-studio)")
        if src is not None or dst is not None:
            raise ConfigError("--label-studio reads the project and writes back to it: give no SRC or DST")
    elif src is None or dst is None:
        raise ConfigError("give SRC and DST (or --ray --label-studio PROJECT)")
    if ray or ray_address:
        if entities_given:
            raise ConfigError("--entities-given is not supported with --ray")
        ray_run.run(
            model, src, from_, address=ray_address, actors=ray_actors, actor_cpus=ray_actor_cpus,
            batch_size=batch_size, engine_urls=engine_url, dst=dst, to=to, label_studio=label_studio,
            writers=label_studio_writers,
        )  # fmt: skip
        return
    assert src is not None and dst is not None
    get_format(to)
    if not src.exists():
        raise NotFoundError("no such file or folder", source=src)
    _set_threads(threads)
    extractor = load_extractor(model, load_settings().extractor_overrides())  # KIWI_LLAMA_ENGINE
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
    drops = total_drops(out)
    if drops:
        err_console.print(drops_line(drops), highlight=False)
