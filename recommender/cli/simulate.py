"""``kiwi simulate``: replayed annotation on a gold corpus, every strategy against random."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from recommender import corpora
from recommender.active.strategies import STRATEGIES
from recommender.cli.common import _print_line, console
from recommender.cli.models import _set_threads
from recommender.errors import ConfigError
from recommender.extractors import family as get_family
from recommender.extractors.base import ExtractorConfig
from recommender.formats import read_documents


def parse_settings(family: str, sets: list[str]) -> ExtractorConfig:
    """The family's config with ``KEY=VALUE`` overrides, each value read as JSON (else as a string)."""
    cls = get_family(family).config_class()
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"[{item}] is not KEY=VALUE of a {family} setting ({', '.join(sorted(names))})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        values[key] = float(value) if hints[key] in (float, "float") and isinstance(value, int) else value
    return cls.from_dict(values)


commands = typer.Typer()  # this module's commands, loaded by the root on first use


@commands.command()
def simulate(
    corpus: Annotated[Path, typer.Argument(help="annotated notes: the pool (any format kiwi reads)")],
    out: Annotated[Path, typer.Option(help="folder for the state of every run, results.json, report.html")],
    eval_corpus: Annotated[
        Path | None,
        typer.Option("--eval", help="evaluation notes; default: the corpus's development split"),
    ] = None,
    extractor: Annotated[str, typer.Option(help="learner family")] = "kiwi.lexicon.v1",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="learner setting KEY=VALUE (repeatable)")
    ] = None,
    warm_start: Annotated[
        bool, typer.Option(help="fine-tune the previous round's model instead of training from scratch")
    ] = False,
    strategy: Annotated[
        list[str] | None,
        typer.Option(help=f"strategy (repeatable; default all): {', '.join(STRATEGIES)}"),
    ] = None,
    committee: Annotated[
        str, typer.Option(help="second family of the query-by-committee (qbc) strategy")
    ] = "kiwi.lexicon.v1",
    committee_set: Annotated[
        list[str] | None,
        typer.Option(help="committee setting KEY=VALUE (repeatable); it must differ from the learner"),
    ] = None,
    seeds: Annotated[int, typer.Option(help="seeds per strategy")] = 3,
    seed_notes: Annotated[int, typer.Option(help="notes annotated before the first selection")] = 4,
    batch_notes: Annotated[int, typer.Option(help="notes selected per round")] = 4,
    budget_notes: Annotated[int | None, typer.Option(help="stop at this many annotated notes")] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="stop at this many annotated tokens")] = None,
    target: Annotated[
        float, typer.Option(help="target: this fraction of the score of the learner trained on the pool")
    ] = 0.95,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Replay annotation on CORPUS: from a seed set, each strategy picks the next notes, their gold is
    revealed, the learner retrains and is scored on the evaluation notes, until the budget is spent.
    Interrupted runs resume from their last round (run the same command again)."""
    from recommender.active.simulate import Learner, Plan
    from recommender.active.simulate import simulate as run_all
    from recommender.active.simulation_report import write

    _set_threads(threads)
    docs = read_documents(corpus)
    if eval_corpus is not None:
        eval_docs = read_documents(eval_corpus)
        held = {d.text for d in eval_docs}
        pool = [d for d in docs if d.text not in held]
    else:
        pool, eval_docs = corpora.development_split(docs, corpus)
    if not eval_docs:
        raise ConfigError(
            "no evaluation notes: pass --eval DIR (the corpus is too small to split)", source=corpus
        )
    names = strategy or list(STRATEGIES)
    learner = Learner(extractor, parse_settings(extractor, set_ or []), warm_start)
    plan = Plan(seed_notes, batch_notes, budget_notes, budget_tokens)
    results, runs = run_all(
        pool,
        eval_docs,
        learner,
        names,
        list(range(seeds)),
        plan,
        out,
        committee=[Learner(committee, parse_settings(committee, committee_set or []))],
        target_fraction=target,
        say=_print_line,
    )
    page = write(results, runs, out)
    for name, row in results["summary"].items():
        tok = row["tokens_to_target"]
        reached = f"{tok['mean']:.0f} ± {tok['sd']:.0f} tokens" if tok["mean"] is not None else "not reached"
        console.print(
            f"{name:18} target: {reached:24} AUC (tokens) {row['auc_tokens']['mean']:.3f}",
            markup=False,
            highlight=False,
        )
    console.print(f"wrote {out / 'results.json'} and {page}", markup=False, highlight=False)
