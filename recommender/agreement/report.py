"""Inter-annotator agreement over the same notes annotated by several raters (people or a model).

Every F1 figure comes from the evaluation package's matcher and scorer: for a pair of raters (A, B)
A plays gold and B prediction, so precision and recall swap with the order but F1 does not.
Token-level measures label each token with the category of the longest span of a layer covering it
(``none`` if no span does): entities and modifiers are separate layers because modifiers nest inside
entities. Unitizing alpha works on character spans (see ``measures``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recommender.agreement import measures
from recommender.document import Document, Span
from recommender.errors import ConfigError, DocumentError
from recommender.evaluation.matching import align, relation_mentions, span_mention, span_mentions
from recommender.evaluation.scorer import TaskCounts, count_task, relation_type
from recommender.evaluation.stats import LEVEL, RESAMPLES, SEED, interval, prf, resample_weights
from recommender.schema import Schema, load_schema
from recommender.text import tokenize

NONE = "none"
MODEL_RATER = "model:"  # how add_model_rater names a model added as a rater
TASKS = ("ner", "modifiers", "re", "spans")
LAYERS = ("entities", "modifiers")


@dataclass
class AgreementReport:
    """Everything the HTML, Markdown and JSON outputs show. ``to_dict(with_text=False)`` leaves out
    the note text of the disagreement list (for stdout); the report files keep it."""

    raters: list[str]
    documents: list[str]
    pairs: list[dict[str, Any]]
    pooled: dict[str, Any]
    fleiss_kappa: dict[str, Any] | None
    krippendorff_alpha: dict[str, Any]
    unitizing_alpha: dict[str, Any]
    confusion: dict[str, Any]
    per_document: list[dict[str, Any]]
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    model_vs_annotators: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, *, with_text: bool = True) -> dict[str, Any]:
        disagreements = self.disagreements if with_text else [_without_text(d) for d in self.disagreements]
        return {
            "raters": self.raters,
            "documents": len(self.documents),
            "pairs": self.pairs,
            "pooled": self.pooled,
            "fleiss_kappa": self.fleiss_kappa,
            "krippendorff_alpha": self.krippendorff_alpha,
            "unitizing_alpha": self.unitizing_alpha,
            "confusion": self.confusion,
            "per_document": self.per_document,
            "disagreements": disagreements,
            "model_vs_annotators": self.model_vs_annotators,
        }


def agreement_report(
    raters: dict[str, Sequence[Document]],
    *,
    models: Mapping[str, Sequence[Document]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    context: int = 60,
    schema: Schema | None = None,
    track: Callable[[Iterable[Any], str, int | None], Iterable[Any]] | None = None,
) -> AgreementReport:
    """Compare every rater with every other on the documents they share.

    ``raters`` maps a rater name (annotator, ``curation``, a model version) to its documents; the
    same document id must carry the same text for every rater. The service's correction store
    feeds this function directly. ``models`` (a model version's suggestions, say) are compared with
    every annotator in the "model vs annotators" table only; raters named ``model:...`` (``--model``)
    are raters and are in that table too. ``track`` wraps the long loops (a progress bar or log lines).

    Raises:
        ConfigError: fewer than two raters.
        DocumentError: one document id with different texts, or a rater with duplicate ids.
    """
    schema = schema or load_schema()
    if len(raters) < 2:
        raise ConfigError(f"agreement needs at least two raters, got [{', '.join(raters)}]")
    names = list(raters)
    by_rater = {r: _by_id(r, docs) for r, docs in raters.items()}
    doc_ids = sorted(set().union(*(d.keys() for d in by_rater.values())))
    texts = _texts(by_rater, doc_ids)
    layers = {"entities": schema.entity_names, "modifiers": schema.modifier_names}
    weights_cache: dict[int, NDArray] = {}

    def weights(n: int) -> NDArray:
        if n not in weights_cache:
            weights_cache[n] = resample_weights(n, resamples, seed)
        return weights_cache[n]

    # --- token labels: (raters, tokens) per document and layer, MISSING where a rater lacks the note
    track = track or (lambda items, _description, _total: items)
    tokens = {
        i: _tokens(next(by_rater[r][i] for r in names if i in by_rater[r]))
        for i in track(doc_ids, "tokenizing notes", len(doc_ids))
    }
    token_labels = {
        layer: {
            i: np.stack(
                [
                    _token_labels(by_rater[r][i], tokens[i], labels)
                    if i in by_rater[r]
                    else np.full(len(tokens[i][0]), measures.MISSING)
                    for r in names
                ]
            )
            for i in doc_ids
        }
        for layer, labels in layers.items()
    }

    # --- pairwise F1 and Cohen's kappa
    pairs: list[dict[str, Any]] = []
    pair_counts: list[dict[str, TaskCounts]] = []
    confusion = {layer: np.zeros((len(labels) + 1,) * 2, dtype=np.int64) for layer, labels in layers.items()}
    disagreements: list[dict[str, Any]] = []
    rater_pairs = list(itertools.combinations(range(len(names)), 2))
    for ia, ib in track(rater_pairs, "comparing rater pairs", len(rater_pairs)):
        a, b = names[ia], names[ib]
        shared = [i for i in doc_ids if i in by_rater[a] and i in by_rater[b]]
        docs = [(by_rater[a][i], by_rater[b][i]) for i in shared]
        counts = _count(docs, schema)
        pair_counts.append(counts)
        entry: dict[str, Any] = {"a": a, "b": b, "documents": len(shared)}
        for task, c in counts.items():
            entry[task] = c.score(resamples, seed, level).to_dict()
        entry["cohen_kappa"] = {}
        for layer, labels in layers.items():
            k = len(labels) + 1
            per_doc = np.zeros((len(shared), k * k), dtype=np.int64)
            for row, i in enumerate(shared):
                per_doc[row] = measures.confusion(
                    token_labels[layer][i][ia], token_labels[layer][i][ib], k
                ).ravel()
            entry["cohen_kappa"][layer] = _estimate(
                per_doc, weights(len(shared)), level, _on_matrices(measures.kappa_from_confusion, k)
            )
        pairs.append(entry)
        for ga, gb in docs:
            for layer, labels in layers.items():
                _confuse(ga, gb, labels, confusion[layer])
            disagreements.extend(_disagreements(ga, gb, a, b, texts[ga.id], context, schema))

    pooled = {
        task: _pool([c[task] for c in pair_counts]).score(resamples, seed, level).to_dict() for task in TASKS
    }

    # --- multi-rater chance-corrected measures
    fleiss: dict[str, Any] | None = None
    if len(names) > 2:
        fleiss = {}
        for layer, labels in layers.items():
            stats = np.stack(
                [measures.fleiss_stats(token_labels[layer][i], len(labels) + 1) for i in doc_ids]
            )
            fleiss[layer] = _estimate(stats, weights(len(doc_ids)), level, measures.fleiss_from_stats)
    alpha: dict[str, Any] = {}
    for layer, labels in layers.items():
        co = np.stack([measures.coincidence(token_labels[layer][i], len(labels) + 1) for i in doc_ids])
        alpha[layer] = _estimate(
            co.reshape(len(doc_ids), -1),
            weights(len(doc_ids)),
            level,
            _on_matrices(measures.alpha_from_coincidence, len(labels) + 1),
        )

    complete = [i for i in doc_ids if all(i in by_rater[r] for r in names)]
    unitizing = _unitizing(by_rater, names, complete, texts, schema)

    per_document = _per_document(
        doc_ids, names, by_rater, pair_counts, texts, disagreements, unitizing["per_document"]
    )
    labels_out = {layer: [NONE, *labels] for layer, labels in layers.items()}
    versus = dict(models or {}) | {r: raters[r] for r in names if r.startswith(MODEL_RATER)}
    annotators = {r: by_rater[r] for r in names if not r.startswith(MODEL_RATER)}
    versus_table = [
        _versus(m, _by_id(m, docs), annotators, texts, schema, resamples, seed, level)
        for m, docs in versus.items()
    ]
    return AgreementReport(
        raters=names,
        documents=doc_ids,
        pairs=pairs,
        pooled=pooled,
        fleiss_kappa=fleiss,
        krippendorff_alpha=alpha,
        unitizing_alpha=unitizing,
        confusion={
            layer: {"labels": labels_out[layer], "matrix": confusion[layer].tolist()} for layer in layers
        },
        per_document=per_document,
        disagreements=disagreements,
        model_vs_annotators=versus_table,
    )


def _versus(
    model: str,
    predicted: dict[str, Document],
    annotators: dict[str, dict[str, Document]],
    texts: dict[str, str],
    schema: Schema,
    resamples: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """A model against every annotator on the notes they share, the annotator as gold: pooled over
    annotators the way annotator pairs are pooled, and per annotator."""
    counts = []
    per_annotator = {}
    for annotator, docs in annotators.items():
        shared = [i for i in docs if i in predicted]
        if not shared:
            continue
        for i in shared:
            if predicted[i].text != texts.get(i, docs[i].text):
                raise DocumentError(f"document [{i}] has a different text for [{model}]")
        c = _count([(docs[i], predicted[i]) for i in shared], schema)
        counts.append(c)
        spans = c["spans"].score(resamples, seed, level)
        per_annotator[annotator] = {"documents": len(shared), "spans_exact_f1": spans.exact.f1}
    entry: dict[str, Any] = {
        "model": model,
        "documents": len({i for docs in annotators.values() for i in docs if i in predicted}),
        "per_annotator": per_annotator,
    }
    for task in TASKS if counts else ():
        entry[task] = _pool([c[task] for c in counts]).score(resamples, seed, level).to_dict()
    return entry


# --- helpers ---------------------------------------------------------------------------------------


def _without_text(item: dict[str, Any]) -> dict[str, Any]:
    """A disagreement with offsets and labels only: no covered text, no context (PHI)."""
    out = {k: v for k, v in item.items() if k not in ("text", "context")}
    if "modifier" in out:
        out["modifier"] = {k: v for k, v in out["modifier"].items() if k != "text"}
    return out


def _by_id(rater: str, docs: Sequence[Document]) -> dict[str, Document]:
    out: dict[str, Document] = {}
    for d in docs:
        if d.id in out:
            raise DocumentError(f"rater [{rater}] has two versions of document [{d.id}]")
        out[d.id] = d
    return out


def _texts(by_rater: dict[str, dict[str, Document]], doc_ids: list[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for i in doc_ids:
        versions = {r: docs[i].text for r, docs in by_rater.items() if i in docs}
        first = next(iter(versions.values()))
        odd = [r for r, t in versions.items() if t != first]
        if odd:
            raise DocumentError(f"document [{i}] has a different text for rater(s) [{', '.join(odd)}]")
        texts[i] = first
    return texts


def _count(docs: list[tuple[Document, Document]], schema: Schema) -> dict[str, TaskCounts]:
    pairs_types = [relation_type(h, t) for h, t in schema.pairs]
    return {
        "ner": count_task(docs, lambda d: span_mentions(d, schema.entity_names), schema.entity_names),
        "modifiers": count_task(
            docs, lambda d: span_mentions(d, schema.modifier_names), schema.modifier_names
        ),
        "re": count_task(docs, relation_mentions, pairs_types),
        "spans": count_task(docs, lambda d: span_mentions(d, schema.label_names), schema.label_names),
    }


def _pool(counts: list[TaskCounts]) -> TaskCounts:
    """The counts of all pairs side by side (each pair's documents are separate resampling units)."""
    types = list(counts[0].types)
    for c in counts[1:]:
        types += [t for t in c.types if t not in types]
    column = {t: k for k, t in enumerate(types)}
    merged: dict[Any, NDArray] = {}
    for mode in ("exact", "relaxed"):
        blocks = []
        for c in counts:
            block = np.zeros((3, len(c.doc_ids), len(types)), dtype=np.int64)
            block[:, :, [column[t] for t in c.types]] = c.counts[mode]
            blocks.append(block)
        merged[mode] = np.concatenate(blocks, axis=1)
    return TaskCounts(tuple(i for c in counts for i in c.doc_ids), tuple(types), merged)


def _on_matrices(fn: Any, k: int) -> Any:
    """``fn`` of square matrices applied to flattened (..., k*k) statistics."""
    return lambda flat: fn(flat.reshape(*flat.shape[:-1], k, k))


def _estimate(stats: NDArray, weights: NDArray, level: float, fn: Any) -> dict[str, Any]:
    """A point value from the summed per-document ``stats`` and a bootstrap interval over documents."""
    if len(stats) == 0:
        return {"value": None, "ci": None}
    value = float(fn(stats.sum(axis=0)))
    samples = fn(weights @ stats)
    samples = samples[~np.isnan(samples)]
    ci = list(interval(samples, level)) if len(samples) else None
    return {"value": None if np.isnan(value) else value, "ci": ci}


def _tokens(doc: Document) -> tuple[NDArray, NDArray]:
    segs = doc.tokens or tokenize(doc.text)
    return (
        np.array([t.begin for t in segs], dtype=np.int64),
        np.array([t.end for t in segs], dtype=np.int64),
    )


def _token_labels(doc: Document, tokens: tuple[NDArray, NDArray], labels: Sequence[str]) -> NDArray:
    """Category index per token: 0 = none, else 1 + the label of the longest covering span."""
    begins, ends = tokens
    out = np.zeros(len(begins), dtype=np.int64)
    index = {label: k + 1 for k, label in enumerate(labels)}
    for s in sorted((s for s in doc.spans if s.label in index), key=lambda s: s.end - s.begin):
        out[(begins < s.end) & (s.begin < ends)] = index[s.label]  # longer spans overwrite nested ones
    return out


def _confuse(a: Document, b: Document, labels: Sequence[str], matrix: NDArray) -> None:
    """Add the pair's label-blind relaxed alignment of one layer to ``matrix`` (row: A, column: B)."""
    index = {label: k + 1 for k, label in enumerate(labels)}
    ma, mb = span_mentions(a, labels), span_mentions(b, labels)
    al = align(ma, mb, "relaxed", same_label=False)
    for i, j in al.pairs:
        matrix[index[ma[i].label], index[mb[j].label]] += 1
    for i in al.missed:
        matrix[index[ma[i].label], 0] += 1
    for j in al.spurious:
        matrix[0, index[mb[j].label]] += 1


def _snippet(text: str, begin: int, end: int, context: int) -> dict[str, str]:
    return {
        "left": text[max(0, begin - context) : begin],
        "mention": text[begin:end],
        "right": text[end : end + context],
    }


def _disagreements(
    a: Document, b: Document, name_a: str, name_b: str, text: str, context: int, schema: Schema
) -> list[dict[str, Any]]:
    """Span disagreements (per layer: type, boundary, only in A, only in B) and relation ones."""
    out: list[dict[str, Any]] = []

    def item(kind: str, sa: Span | None, sb: Span | None) -> dict[str, Any]:
        ref = sa or sb
        assert ref is not None
        begin = min(s.begin for s in (sa, sb) if s is not None)
        end = max(s.end for s in (sa, sb) if s is not None)
        return {
            "document": a.id,
            "a": name_a,
            "b": name_b,
            "kind": kind,
            "label_a": sa.label if sa else None,
            "label_b": sb.label if sb else None,
            "span_a": [sa.begin, sa.end] if sa else None,
            "span_b": [sb.begin, sb.end] if sb else None,
            "text": text[begin:end],
            "context": _snippet(text, begin, end, context),
        }

    for labels in (schema.entity_names, schema.modifier_names):
        sa = [s for s in a.spans if s.label in labels]
        sb = [s for s in b.spans if s.label in labels]
        al = align([span_mention(s) for s in sa], [span_mention(s) for s in sb], "relaxed", same_label=False)
        for i, j in al.pairs:
            x, y = sa[i], sb[j]
            if x.label != y.label:
                out.append(item("type", x, y))
            elif (x.begin, x.end) != (y.begin, y.end):
                out.append(item("boundary", x, y))
        out.extend(item("only_a", sa[i], None) for i in al.missed)
        out.extend(item("only_b", None, sb[j]) for j in al.spurious)

    ra, rb = relation_mentions(a), relation_mentions(b)
    al = align(ra, rb, "relaxed")
    idx_a, idx_b = a.span_index(), b.span_index()
    for side, missing, mentions, index, doc in (
        ("relation_only_a", al.missed, ra, idx_a, a),
        ("relation_only_b", al.spurious, rb, idx_b, b),
    ):
        for k in missing:
            rel = next(r for r in doc.relations if r.id == mentions[k].ref)
            head, tail = index[rel.head], index[rel.tail]
            entry = item(side, head if side.endswith("a") else None, head if side.endswith("b") else None)
            entry["modifier"] = {
                "label": tail.label,
                "span": [tail.begin, tail.end],
                "text": doc.covered(tail),
            }
            out.append(entry)
    out.sort(
        key=lambda d: (d["document"], min((d["span_a"] or d["span_b"])[0], (d["span_b"] or d["span_a"])[0]))
    )
    return out


def _unitizing(
    by_rater: dict[str, dict[str, Document]],
    names: list[str],
    complete: list[str],
    texts: dict[str, str],
    schema: Schema,
) -> dict[str, Any]:
    """alpha_U over the documents every rater annotated: pooled and per document."""

    def parts(ids: list[str]) -> dict[str, list[measures.Part]]:
        out: dict[str, list[measures.Part]] = {label: [] for label in schema.label_names}
        for i in ids:
            for label in schema.label_names:
                units = [
                    measures.drop_overlaps(
                        [(s.begin, s.end) for s in by_rater[r][i].spans if s.label == label]
                    )
                    for r in names
                ]
                out[label].append((units, len(texts[i])))
        return out

    pooled = parts(complete)
    result: dict[str, Any] = {"documents": len(complete)}
    for key, cats in (
        ("all", schema.label_names),
        ("entities", schema.entity_names),
        ("modifiers", schema.modifier_names),
    ):
        value, per = measures.unitizing_alpha(pooled, cats) if complete else (float("nan"), {})
        result[key] = None if np.isnan(value) else value
        if key == "all":
            result["per_type"] = per
    result["per_document"] = {}
    for i in complete:
        value, _ = measures.unitizing_alpha(parts([i]), schema.label_names)
        result["per_document"][i] = None if np.isnan(value) else value
    return result


def _per_document(
    doc_ids: list[str],
    names: list[str],
    by_rater: dict[str, dict[str, Document]],
    pair_counts: list[dict[str, TaskCounts]],
    texts: dict[str, str],
    disagreements: list[dict[str, Any]],
    unitizing: dict[str, float | None],
) -> list[dict[str, Any]]:
    """Per note: raters present, mean pairwise F1 over the pairs that share it, alpha_U, disagreements."""
    rows = []
    n_dis: dict[str, int] = {}
    for d in disagreements:
        n_dis[d["document"]] = n_dis.get(d["document"], 0) + 1
    for i in doc_ids:
        row: dict[str, Any] = {
            "id": i,
            "raters": [r for r in names if i in by_rater[r]],
            "characters": len(texts[i]),
            "disagreements": n_dis.get(i, 0),
            "unitizing_alpha": unitizing.get(i),
        }
        for task in ("ner", "re", "spans"):
            for mode in ("exact", "relaxed"):
                f1s = []
                for counts in pair_counts:
                    c = counts[task]
                    if i in c.doc_ids:
                        d = c.doc_ids.index(i)
                        tp, fp, fn = c.counts[mode][:, d, :].sum(axis=1)
                        f1s.append(float(prf(tp, fp, fn)[2]))
                row[f"{task}_{mode}_f1"] = float(np.mean(f1s)) if f1s else None
        rows.append(row)
    return rows
