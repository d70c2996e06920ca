"""Replayed annotation: how much annotation a selection strategy saves, measured on a gold corpus.

A run starts from ``seed_notes`` notes drawn by its seed (the same for every strategy), trains the
learner on them, scores it on the fixed evaluation notes, lets the strategy pick the next
``batch_notes`` from the rest of the pool, "annotates" them by revealing their gold, and repeats
until the budget (notes or tokens) is spent. What each selected note cost is counted three ways:
notes, tokens and the edits that turn the model's pre-annotation of it into its gold
(``recommender.evaluation.edits``; the seed notes are annotated from scratch).

Every round is written to the run's state file before the next begins, so an interrupted run resumes
at the round it was in (a warm-started learner restarts from the last saved model).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recommender.active.strategies import Candidate, get_strategy
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.evaluation import entities_only, evaluate
from recommender.evaluation.edits import Edits, edits
from recommender.extractors import get_extractor_class, load_extractor
from recommender.extractors.base import Extractor, ExtractorConfig
from recommender.text import segment

Say = Callable[[str], None]


@dataclass
class Learner:
    """A family and its training config; ``warm_start`` fine-tunes the previous round's model (families
    whose config has ``init_from``) instead of training from scratch, for ``warm_epochs`` epochs where
    set (that model has already seen the earlier notes)."""

    family: str
    config: ExtractorConfig | None = None
    warm_start: bool = False
    warm_epochs: int | None = None

    def train(self, docs: Sequence[Document], folder: Path, previous: Path | None) -> Extractor:
        cls = get_extractor_class(self.family)
        config = cls.training_config(self.config)
        if self.warm_start and previous is not None and (previous / "kiwi_model.json").is_file():
            warm: dict[str, Any] = {"init_from": str(previous)}
            if self.warm_epochs is not None:
                warm["epochs"] = self.warm_epochs
            config = type(config).from_dict({**config.to_dict(), **warm})
        return cls.train(docs, (), config, folder)

    def describe(self) -> dict[str, Any]:
        cls = get_extractor_class(self.family)
        return {
            "family": self.family,
            "config": cls.training_config(self.config).to_dict(),
            "warm_start": self.warm_start,
            "warm_epochs": self.warm_epochs,
        }


@dataclass
class Plan:
    """The replay's sizes; a run stops at whichever budget it reaches first (or an empty pool)."""

    seed_notes: int = 4
    batch_notes: int = 4
    budget_notes: int | None = None
    budget_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("seed_notes", "batch_notes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got [{getattr(self, name)}]")
        for name in ("budget_notes", "budget_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be positive, got [{value}]")


@dataclass
class Round:
    notes: int
    tokens: int
    edits: dict[str, int]  # spent to annotate the notes so far
    scores: dict[str, float]
    labelled: list[str]
    selected: list[str] = field(default_factory=list)  # the next batch
    selected_edits: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def note_tokens(doc: Document) -> int:
    """Tokens in a note (the project's tokenizer), the unit annotation cost is counted in."""
    return len(doc.tokens) if doc.tokens else len(segment(Document(doc.id, doc.text)).tokens)


def score(extractor: Extractor, gold: Sequence[Document]) -> dict[str, float]:
    """Exact F1 on ``gold``: NER from raw text, RE with the gold entities given, all spans; ``score`` is
    their mean of NER and RE, the promotion gate's figure."""
    pred = extractor.predict([d.without_annotations() for d in gold])
    re_pred = extractor.predict([entities_only(d) for d in gold], entities_given=True)
    ev = evaluate(gold, pred, re_pred=re_pred, resamples=1)
    out = {t: round(ev.task(t).exact.f1, 4) for t in ("ner", "re", "spans")}
    return {**out, "score": round((out["ner"] + out["re"]) / 2, 4)}


def seed_set(pool: Sequence[Document], n: int, seed: int) -> list[str]:
    return sorted(random.Random(seed).sample(sorted(d.id for d in pool), min(n, len(pool))))


class Run:
    """One strategy with one seed, its state in ``folder / state.json``."""

    def __init__(
        self,
        pool: Sequence[Document],
        eval_docs: Sequence[Document],
        learner: Learner,
        strategy: str,
        seed: int,
        plan: Plan,
        folder: Path,
        committee: Sequence[Learner] = (),
        cache: Path | None = None,
    ) -> None:
        # Segmented once: a family that tokenises (the lexicon) would otherwise redo it every round.
        self.pool = {d.id: _segmented(d) for d in pool}
        self.eval_docs = [_segmented(d) for d in eval_docs]
        self.learner = learner
        self.strategy = get_strategy(strategy)
        self.seed = seed
        self.plan = plan
        self.folder = Path(folder)
        self.committee = list(committee)
        if self.strategy.needs_committee and not self.committee:
            raise ConfigError(f"strategy [{strategy}] needs a committee: name a second extractor family")
        self.cache = cache  # where the seed round's model and scores are shared by every strategy
        self.tokens = {d.id: note_tokens(d) for d in pool}

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    def rounds(self) -> list[Round]:
        if not self.state_file.is_file():
            return []
        data = json.loads(self.state_file.read_text(encoding="utf-8"))
        return [Round(**r) for r in data["rounds"]]

    def _save(self, rounds: list[Round]) -> None:
        data = {
            "strategy": self.strategy.name,
            "seed": self.seed,
            "plan": asdict(self.plan),
            "learner": self.learner.describe(),
            "committee": [c.family for c in self.committee],
            "rounds": [asdict(r) for r in rounds],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)  # a run killed mid-write keeps its last whole round

    def done(self, rounds: list[Round]) -> bool:
        return bool(rounds) and not rounds[-1].selected

    def _over_budget(self, labelled: Sequence[str]) -> bool:
        p = self.plan
        if len(labelled) >= len(self.pool):
            return True
        if p.budget_notes is not None and len(labelled) >= p.budget_notes:
            return True
        return p.budget_tokens is not None and sum(self.tokens[i] for i in labelled) >= p.budget_tokens

    def run(self, say: Say | None = None) -> list[Round]:
        self.folder.mkdir(parents=True, exist_ok=True)
        rounds = self.rounds()
        while not self.done(rounds):
            # One generator per round, so a resumed run draws what an uninterrupted one would.
            rng = random.Random(self.seed * 1000 + len(rounds))
            started = time.perf_counter()
            if rounds:
                last = rounds[-1]
                labelled = [*last.labelled, *last.selected]
                spent = Edits(**_counts(last.edits)) + Edits(**_counts(last.selected_edits))
            else:
                labelled = seed_set(list(self.pool.values()), self.plan.seed_notes, self.seed)
                spent = sum((edits(Document(i, self.pool[i].text), self.pool[i]) for i in labelled), Edits())
            model, scores = self._train_and_score(labelled, len(rounds))
            r = Round(
                notes=len(labelled),
                tokens=sum(self.tokens[i] for i in labelled),
                edits=spent.to_dict(),
                scores=scores,
                labelled=labelled,
            )
            if not self._over_budget(labelled):
                r.selected, cost = self._select(model, labelled, rng)
                r.selected_edits = cost.to_dict()
            r.seconds = round(time.perf_counter() - started, 1)
            rounds.append(r)
            self._save(rounds)
            if say is not None:
                say(
                    f"{self.strategy.name} seed {self.seed} round {len(rounds)}: {r.notes} notes, "
                    f"{r.tokens} tokens, {r.edits['total']} edits, score {scores['score']:.3f} "
                    f"(NER {scores['ner']:.3f}, RE {scores['re']:.3f}) in {r.seconds:.0f} s"
                )
        return rounds

    def _train_and_score(self, labelled: list[str], index: int) -> tuple[Extractor, dict[str, float]]:
        models = self.folder / "models"
        current, previous = models / f"round-{index}", models / f"round-{index - 1}"
        docs = [self.pool[i] for i in labelled]
        shared = self.cache / f"seed-{self.seed}" if self.cache is not None and index == 0 else None
        if shared is not None and (shared / "scores.json").is_file():
            model = load_extractor(shared / "model")
            scores = json.loads((shared / "scores.json").read_text(encoding="utf-8"))
            if index == 0 and self.learner.warm_start:
                shutil.copytree(shared / "model", current, dirs_exist_ok=True)
            return model, scores
        model = self.learner.train(docs, current, previous if index else None)
        scores = score(model, self.eval_docs)
        if shared is not None:
            shutil.copytree(current, shared / "model", dirs_exist_ok=True)
            (shared / "scores.json").write_text(json.dumps(scores) + "\n", encoding="utf-8")
        if previous.is_dir():
            shutil.rmtree(previous)  # only the newest model is kept (the next warm start)
        return model, scores

    def _select(self, model: Extractor, labelled: list[str], rng: random.Random) -> tuple[list[str], Edits]:
        rest = [self.pool[i] for i in sorted(self.pool) if i not in set(labelled)]
        k = self.plan.batch_notes
        if self.plan.budget_notes is not None:
            k = min(k, self.plan.budget_notes - len(labelled))
        if self.strategy.needs_predictions:
            predicted = model.predict([d.without_annotations() for d in rest])
            others: list[list[Document]] = []
            if self.committee:
                members = [
                    c.train([self.pool[i] for i in labelled], self.folder / "committee", None)
                    for c in self.committee
                ]
                others = [m.predict([d.without_annotations() for d in rest]) for m in members]
            cands = [
                Candidate(d.id, d.text, p, tuple(o[n] for o in others))
                for n, (d, p) in enumerate(zip(rest, predicted, strict=True))
            ]
            chosen = self.strategy.select(cands, k, rng)
            by_id = {c.id: c.predicted for c in cands}
            pre = [by_id[i] for i in chosen]
        else:
            chosen = self.strategy.select([Candidate(d.id, d.text, d) for d in rest], k, rng)
            pre = model.predict([self.pool[i].without_annotations() for i in chosen])
        cost = sum((edits(p, self.pool[i]) for p, i in zip(pre, chosen, strict=True)), Edits())
        return chosen, cost


def _segmented(doc: Document) -> Document:
    return doc if doc.sentences and doc.tokens else segment(replace(doc, sentences=[], tokens=[]))


def _counts(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if k != "total"}


# --- summaries ---------------------------------------------------------------------------------
def reach(rounds: Sequence[Round], target: float, unit: str) -> float | None:
    """The ``unit`` (notes, tokens or edits) spent when the score first reached ``target``, linearly
    interpolated between rounds; None if it never did."""
    prev: tuple[float, float] | None = None
    for r in rounds:
        x = float(r.edits["total"] if unit == "edits" else getattr(r, unit))
        y = r.scores["score"]
        if y >= target:
            if prev is None or y == prev[1]:
                return x
            return prev[0] + (x - prev[0]) * (target - prev[1]) / (y - prev[1])
        prev = (x, y)
    return None


def area(rounds: Sequence[Round], unit: str, upto: float) -> float:
    """Mean score over [first round, ``upto``] of ``unit``, the curve held flat past its last round
    (trapezoids; a common ``upto`` makes runs comparable)."""
    pts = [(float(getattr(r, unit)), r.scores["score"]) for r in rounds]
    pts = [p for p in pts if p[0] <= upto] or pts[:1]
    if pts[-1][0] < upto:
        pts.append((upto, pts[-1][1]))
    width = pts[-1][0] - pts[0][0]
    if width <= 0:
        return pts[0][1]
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(pts)) / width


def summarise(runs: dict[str, dict[int, list[Round]]], target: float | None) -> dict[str, Any]:
    """Per strategy, over its seeds: units to reach ``target`` and area under the curve."""
    from statistics import mean, pstdev

    upto_t = min(max(r.tokens for r in rs) for seeds in runs.values() for rs in seeds.values())
    upto_n = min(max(r.notes for r in rs) for seeds in runs.values() for rs in seeds.values())
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        row: dict[str, Any] = {"seeds": sorted(seeds)}
        for unit in ("notes", "tokens", "edits"):
            vals = [reach(rs, target, unit) for rs in seeds.values()] if target is not None else []
            got = [v for v in vals if v is not None]
            row[f"{unit}_to_target"] = {
                "per_seed": vals,
                "mean": round(mean(got), 1) if got and len(got) == len(vals) else None,
                "sd": round(pstdev(got), 1) if got and len(got) == len(vals) else None,
                "reached": len(got),
            }
        for unit, upto in (("tokens", upto_t), ("notes", upto_n)):
            aucs = [area(rs, unit, upto) for rs in seeds.values()]
            row[f"auc_{unit}"] = {"mean": round(mean(aucs), 4), "sd": round(pstdev(aucs), 4), "upto": upto}
        out[name] = row
    return out


def simulate(
    pool: Sequence[Document],
    eval_docs: Sequence[Document],
    learner: Learner,
    strategies: Sequence[str],
    seeds: Sequence[int],
    plan: Plan,
    folder: Path,
    *,
    committee: Sequence[Learner] = (),
    target_fraction: float | None = 0.95,
    say: Say | None = None,
) -> tuple[dict[str, Any], dict[str, dict[int, list[Round]]]]:
    """Every strategy with every seed (resuming what ``folder`` holds), and the results: the learner
    trained on the whole pool as the reference, the target (``target_fraction`` of its score), and per
    strategy the units spent to reach it and the areas under the curves."""
    if not pool or not eval_docs:
        raise ConfigError("the simulation needs pool notes and evaluation notes")
    for name in strategies:
        get_strategy(name)  # an unknown name fails before any training
    folder = Path(folder)
    pool = [_segmented(d) for d in pool]  # once for every run
    eval_docs = [_segmented(d) for d in eval_docs]
    reference: dict[str, float] | None = None
    if target_fraction is not None:
        ref_file = folder / "reference.json"
        if ref_file.is_file():
            reference = json.loads(ref_file.read_text(encoding="utf-8"))
        else:
            if say is not None:
                say(f"reference: training on all {len(pool)} pool notes")
            reference = score(learner.train(pool, folder / "reference", None), eval_docs)
            folder.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(json.dumps(reference) + "\n", encoding="utf-8")
            shutil.rmtree(folder / "reference", ignore_errors=True)
            if say is not None:
                say(f"reference: score {reference['score']:.3f} on all {len(pool)} notes")
    runs: dict[str, dict[int, list[Round]]] = {}
    for name in strategies:
        runs[name] = {}
        for seed in seeds:
            run = Run(
                pool,
                eval_docs,
                learner,
                name,
                seed,
                plan,
                folder / "runs" / f"{name}-seed{seed}",
                committee=committee if get_strategy(name).needs_committee else (),
                cache=folder / "seed-rounds",
            )
            runs[name][seed] = run.run(say)
            shutil.rmtree(run.folder / "models", ignore_errors=True)  # finished: no warm start needed
    target = None if reference is None or target_fraction is None else reference["score"] * target_fraction
    results = {
        "learner": learner.describe(),
        "committee": [c.family for c in committee],
        "plan": asdict(plan),
        "pool_notes": len(pool),
        "eval_notes": len(eval_docs),
        "pool_tokens": sum(note_tokens(d) for d in pool),
        "seeds": list(seeds),
        "reference": reference,
        "target": None if target is None else round(target, 4),
        "target_reason": f"{target_fraction:.0%} of the score of the learner trained on the whole pool"
        if target is not None
        else "",
        "summary": summarise(runs, target),
        "runs": {n: {str(k): [asdict(r) for r in rs] for k, rs in v.items()} for n, v in runs.items()},
    }
    return results, runs


__all__ = [
    "Learner",
    "Plan",
    "Round",
    "Run",
    "area",
    "note_tokens",
    "reach",
    "score",
    "simulate",
    "summarise",
]
