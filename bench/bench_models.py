"""The paper's trade-off (Tables 2-4 in miniature): every model family on the fixed MTSamples split.

Run: ``python bench/bench_models.py [--families bert llama] [--reuse] [--set llama.max_examples=800]``.
Each family is trained on the 80 training notes (``kiwi train FAMILY`` defaults, plus ``--set``
overrides) with one selection protocol for all: where it selects anything (early stopping,
calibration), on the 12 documented validation notes carved from those 80 (``splits.validation_split``);
the 16 development notes choose nothing. Each is then run on the development notes as ``kiwi evaluate
--model`` runs it: NER and all spans from raw text, RE with the gold main entities given. ``--reuse``
keeps a model only if its saved config, training-data fingerprint and validation notes are what this
run would train; otherwise it refuses, naming what differs. Training and evaluation each run in a
process of their own, so peak memory and CPU time are per step. Printed, and written to
``bench/results/models.json``: NER exact and relaxed F1, RE F1, end-to-end F1 (all 20 span types), each
with a 95% bootstrap interval; per-type NER F1; the paper's one-sided Wilcoxon test between every two
families; training time; seconds per note; peak memory; energy and CO2.

Energy: from the CPU's RAPL counters (``/sys/class/powercap``) where they are readable; otherwise
estimated as CPU-seconds x ``--watts-per-core`` (default 5 W: the TDP of current 64-96-core server CPUs
divided by their cores), which the output says. CO2 at the paper's 0.39 kg per kWh.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recommender.extractors.llama.config import NOT_LEARNT

RESULTS = Path(__file__).resolve().parent / "results"
KG_CO2_PER_KWH = 0.39  # the paper's carbon factor
POWERCAP = Path("/sys/class/powercap")
# What the paper measured on an A100 (MTSamples test split, trained on all training notes).
PAPER = {
    "bert": {"model": "BiomedBERT", "ner": 0.833, "re": 0.670, "s_per_note": 0.4, "train_h": 4.1},
    "llama": {"model": "LLaMA-3-8B", "ner": 0.869, "re": 0.787, "s_per_note": 4.6, "train_h": 1.6},
}


class EnergyMeter:
    """Joules used by the CPU packages between start and stop (RAPL), else an estimate from CPU time."""

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core
        self.domains = sorted(POWERCAP.glob("intel-rapl:[0-9]*/energy_uj")) if POWERCAP.is_dir() else []
        readable = []
        for d in self.domains:
            try:
                int(d.read_text())
                readable.append(d)
            except (OSError, ValueError):
                pass
        self.domains = readable

    def _read(self) -> int:
        return sum(int(d.read_text()) for d in self.domains)

    def measure(self, started_uj: int | None, cpu_seconds: float) -> dict[str, Any]:
        if self.domains and started_uj is not None:
            joules = (self._read() - started_uj) / 1e6
            method = "RAPL package counters"
        else:
            joules = cpu_seconds * self.watts_per_core
            method = f"estimate: {cpu_seconds:.0f} CPU-seconds x {self.watts_per_core:g} W per busy core"
        kwh = joules / 3.6e6
        return {"kwh": kwh, "kg_co2": kwh * KG_CO2_PER_KWH, "method": method}

    def start(self) -> int | None:
        return self._read() if self.domains else None


def _overrides(family: str, sets: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in sets:
        key, _, value = item.partition("=")
        fam, _, field = key.partition(".")
        if fam == family:
            out[field] = value
    return out


def _config(family: str, overrides: dict[str, str]) -> Any:
    """The family's config with ``overrides`` parsed by the field's type (as the CLI would)."""
    from dataclasses import fields
    from typing import get_type_hints

    from recommender.extractors import family as get_family

    cls = get_family(family).config_class()
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in names:
            raise SystemExit(f"error: {family} has no setting [{key}]; known: {', '.join(sorted(names))}")
        kind = hints[key]
        if raw.lower() == "none":
            values[key] = None
        elif kind in (bool,):
            values[key] = raw.lower() in ("1", "true", "yes")
        elif int in getattr(kind, "__args__", (kind,)):
            values[key] = int(raw)
        elif float in getattr(kind, "__args__", (kind,)):
            values[key] = float(raw)
        else:
            values[key] = raw
    return cls(**values)


def _split(dev_notes: int | None = None) -> tuple[list[Any], list[Any]]:
    """(train, dev) of the fixed split; ``dev_notes``: only the first N dev notes by id are scored."""
    from recommender.corpora import SHARED_MTSAMPLES, split_documents
    from recommender.formats import brat

    if not SHARED_MTSAMPLES.is_dir():
        raise SystemExit(
            f"error: {SHARED_MTSAMPLES} is absent: the benchmark needs the shared MTSamples notes"
        )
    train, dev = split_documents(brat.read(SHARED_MTSAMPLES))
    return train, sorted(dev, key=lambda d: d.id)[:dev_notes]


def selection(train: list[Any]) -> dict[str, Any]:
    """What this run's trainers fit on and select on: the same for every family."""
    from recommender.extractors.base import fingerprint
    from recommender.splits import validation_split

    fit, val = validation_split(train)
    return {
        "data_fingerprint": fingerprint(train),
        "fit_notes": len(fit),
        "validation_notes": len(val),
        "validation_fingerprint": fingerprint(val) if val else "",
    }


def bf16_matmul_tflops(n: int = 2048, seconds: float = 3.0) -> float:
    """The machine's bf16 matrix-multiply rate at this process's torch threads (best of repeated
    n x n products for about ``seconds``): what the training's rate is held against."""
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    torch.matmul(a, b)  # warm-up: the first call picks its kernel
    best, until = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < until:
        started = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best / 1e12


def llama_throughput(
    folder: Path, train: list[Any], train_seconds: float, matmul_seconds: float = 3.0
) -> dict[str, Any]:
    """The LLaMA run's training tokens per second against this machine's bf16 matmul rate.

    Tokens are those of every example of every step the run took (prompt and target), from the run's
    own order; seconds are its training wall time over all sessions, validation passes included, so
    the rate is a lower bound. Model FLOPs: 6 x the base's non-embedding parameters per token (forward,
    its recomputation under gradient checkpointing, backward through the frozen weights; the LoRA
    weights and the output layer left out), so the utilisation is a lower bound too."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from recommender.extractors.llama.base_model import base_cache, load_tokenizer, pretrained_path, resolve
    from recommender.extractors.llama.extractor import LlamaExtractor
    from recommender.extractors.llama.training import tokens_seen, training_set
    from recommender.splits import validation_split

    read = LlamaExtractor.read_folder(folder)
    if read.base is None:
        raise SystemExit(f"error: [{folder}] names no base model")
    config = read.config
    cache_dir = base_cache(folder, config.cache_dir)
    base_path = pretrained_path(resolve(read.base.name), cache_dir)
    fit, _ = validation_split(train)
    encoded, _ = training_set(fit, config, load_tokenizer(base_path), read.templates)
    steps = read.info.metrics["steps"]
    tokens = tokens_seen(encoded, config, steps)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_path))
    embedding = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters()) - embedding
    per_second = tokens / train_seconds
    peak = bf16_matmul_tflops(seconds=matmul_seconds)
    return {
        "steps": steps,
        "tokens": tokens,
        "tokens_per_second": round(per_second, 1),
        "non_embedding_params": params,
        "model_tflops": 6 * params * per_second / 1e12,
        "bf16_matmul_tflops": peak,
        "utilisation": 6 * params * per_second / 1e12 / peak,
    }


# Families with nothing to select (a dictionary fits every training note at once).
SELECTS_NOTHING = {"lexicon"}


def reuse_mismatches(
    folder: Path, config: dict[str, Any], train: list[Any], selects: bool = True
) -> list[str]:
    """Why the model in ``folder`` is not what this run would train with ``config`` on ``train`` (the
    config's fields, the training data and, where the family ``selects``, the validation notes it
    selected on); empty when it may be reused."""
    from recommender.extractors.base import ModelInfo

    info = ModelInfo.load(folder)
    wanted = json.loads(json.dumps(config))  # as saved: tuples become lists
    out = [
        f"[{key}] is {info.config.get(key, 'unset')!r}, this run asks for {value!r}"
        for key, value in wanted.items()
        if info.config.get(key, "unset") != value and key not in NOT_LEARNT
    ]
    chosen = selection(train)
    if info.data_fingerprint != chosen["data_fingerprint"]:
        out.append(
            f"training data fingerprint [{info.data_fingerprint}], this run's {len(train)} notes are "
            f"[{chosen['data_fingerprint']}]"
        )
    saved = info.metrics.get("validation_fingerprint", "unrecorded")
    if selects and saved != chosen["validation_fingerprint"]:
        out.append(f"validation notes [{saved}], this run selects on [{chosen['validation_fingerprint']}]")
    return out


def phase_train(family: str, folder: Path, sets: list[str], meter: EnergyMeter) -> dict[str, Any]:
    """Train on the 80 notes; the trainer selects on their validation notes, the dev notes are not
    shown to it (the evaluation step scores them)."""
    import torch

    from recommender.cli.common import progress
    from recommender.extractors import get_extractor_class
    from recommender.extractors.checkpoint import cpu_seconds, peak_rss_mb

    torch.set_num_threads(2)
    train, _ = _split()
    config = _config(family, _overrides(family, sets))
    started, cpu0, t0 = meter.start(), cpu_seconds(), time.perf_counter()
    ex = get_extractor_class(family).train(train, [], config, folder, progress=progress)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    peak = peak_rss_mb()
    # a run resumed across sessions (the LLaMA's hours) reports all of its sessions: use those
    metrics = ex.info.metrics
    resumed = "train_cpu_seconds" in metrics and metrics["train_seconds"] > seconds + 1
    if resumed:
        seconds, cpu = metrics["train_seconds"], metrics["train_cpu_seconds"]
        peak = max(peak, metrics["train_peak_rss_mb"])
    return {
        "version": ex.version,
        "train_notes": len(train),
        "selection": selection(train),
        "config": config.to_dict(),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu, 1),
        "train_peak_rss_mb": peak,
        "train_energy": meter.measure(None if resumed else started, cpu),
        "train_sessions_resumed": resumed,
    }


def phase_eval(folder: Path, meter: EnergyMeter, batch_size: int, dev_notes: int | None) -> dict[str, Any]:
    import torch

    from recommender.cli.common import progress
    from recommender.evaluation.scorer import evaluate, predict_for_scoring
    from recommender.extractors import load_extractor
    from recommender.extractors.checkpoint import cpu_seconds, peak_rss_mb
    from recommender.formats import jsonl

    torch.set_num_threads(2)
    _, dev = _split(dev_notes)
    ex = load_extractor(folder)
    started, cpu0 = meter.start(), cpu_seconds()
    pred, re_pred, speed = predict_for_scoring(ex, dev, batch_size=batch_size, track=progress)
    cpu = cpu_seconds() - cpu0
    jsonl.write(pred, folder.parent / f"{folder.name}.pred.jsonl")
    jsonl.write(re_pred, folder.parent / f"{folder.name}.re_pred.jsonl")
    ev = evaluate(dev, pred, re_pred=re_pred, resamples=1000, speed=speed).to_dict()
    return {
        "version": ex.version,
        "dev_notes": len(dev),
        "scores": {t: {m: _slim(ev[t][m]) for m in ("exact", "relaxed")} for t in ("ner", "re", "spans")},
        # NER by entity type, RE by modifier type: exact F1 with its interval, relaxed F1, gold count
        "per_type": {task: _per_type(ev[task]["per_type"]) for task in ("ner", "re")},
        "drops": ev["drops"],
        "seconds_per_note": round(speed["seconds_per_note"], 3),
        "re_seconds_per_note": round(speed["re_seconds_per_note"], 3),
        "eval_cpu_seconds": round(cpu, 1),
        "eval_peak_rss_mb": peak_rss_mb(),
        "eval_energy": meter.measure(started, cpu),
        "eval_notes_energy_scope": "both passes over the 16 notes (from text, then entities given)",
    }


def _per_type(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        t: {
            "exact": round(s["exact"]["f1"], 3),
            "ci": [round(x, 3) for x in s["exact"]["ci"]["f1"]],
            "relaxed": round(s["relaxed"]["f1"], 3),
            "gold": s["exact"]["tp"] + s["exact"]["fn"],
        }
        for t, s in scores.items()
    }


def _slim(score: dict[str, Any]) -> dict[str, Any]:
    lo, hi = score["ci"]["f1"]
    return {
        "f1": round(score["f1"], 4),
        "ci": [round(lo, 4), round(hi, 4)],
        **{k: score[k] for k in ("tp", "fp", "fn")},
    }


def _child(*args: str) -> dict[str, Any]:
    out = RESULTS / f".phase-{os.getpid()}.json"
    cmd = [sys.executable, __file__, "--phase-out", str(out), *args]
    subprocess.run(cmd, check=True)
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return data


def significance(families: list[str], models: Path, dev_notes: int | None) -> dict[str, Any]:
    """One-sided Wilcoxon rank-sum over 1,000 paired bootstrap resamples, every ordered pair."""
    from recommender.evaluation.scorer import count
    from recommender.evaluation.stats import SEED, compare
    from recommender.formats import jsonl

    _, dev = _split(dev_notes)
    counts = {
        f: count(
            dev, jsonl.read(models / f"{f}.pred.jsonl"), re_pred=jsonl.read(models / f"{f}.re_pred.jsonl")
        )
        for f in families
    }
    out: dict[str, Any] = {}
    for a in families:
        for b in families:
            if a != b:
                out[f"{a} > {b}"] = {
                    task: compare(
                        counts[a][task].micro("exact"), counts[b][task].micro("exact"), 1000, SEED
                    ).to_dict()
                    for task in ("ner", "re", "spans")
                }
    return out


def print_table(report: dict[str, Any]) -> None:
    rows = report["models"]
    cols = [
        "NER exact",
        "NER relaxed",
        "RE exact",
        "end-to-end",
        "train min",
        "s/note",
        "peak GB",
        "kWh",
        "g CO2",
    ]
    print(f"\n{'model':<34}" + "".join(f"{c:>13}" for c in cols))

    def f1(s: dict[str, Any]) -> str:
        return f"{s['f1']:.3f}"

    for name, r in rows.items():
        e = r["eval"]
        kwh = r["train"]["train_energy"]["kwh"] + e["eval_energy"]["kwh"]
        cells = [
            f1(e["scores"]["ner"]["exact"]),
            f1(e["scores"]["ner"]["relaxed"]),
            f1(e["scores"]["re"]["exact"]),
            f1(e["scores"]["spans"]["exact"]),
            f"{r['train']['train_seconds'] / 60:.1f}",
            f"{e['seconds_per_note']:.2f}",
            f"{max(r['train']['train_peak_rss_mb'], e['eval_peak_rss_mb']) / 1024:.1f}",
            f"{kwh:.4f}",
            f"{kwh * KG_CO2_PER_KWH * 1000:.1f}",
        ]
        label = f"{name} ({r['eval']['version']})"[:33]
        print(f"{label:<34}" + "".join(f"{c:>13}" for c in cells))
        cis = "  ".join(
            f"{t} {e['scores'][t]['exact']['ci'][0]:.3f}-{e['scores'][t]['exact']['ci'][1]:.3f}"
            for t in ("ner", "re", "spans")
        )
        print(f"{'':<34}95% CI (exact): {cis}")
        for task, name in (("ner", "NER per entity type"), ("re", "RE per entity-modifier pair")):
            cells = "; ".join(
                f"{t} {s['exact']:.2f} [{s['ci'][0]:.2f}-{s['ci'][1]:.2f}] {s['relaxed']:.2f} (n={s['gold']})"
                for t, s in e["per_type"][task].items()
            )
            print(f"{'':<34}{name} (exact [95% CI] relaxed): {cells}")
        if e["drops"]:
            print(f"{'':<34}dropped model output: {e['drops']}")
        print(f"{'':<34}energy, evaluation: {e['eval_energy']['method']}")
    if t := report.get("llama_throughput"):
        millions = t["non_embedding_params"] / 1e6
        print(
            f"LLaMA training: {t['tokens']:,} tokens in {t['steps']} steps, "
            f"{t['tokens_per_second']:.0f} tokens/s = {t['model_tflops']:.3f} TFLOP/s "
            f"(6 x {millions:.0f}M parameters per token) against {t['bf16_matmul_tflops']:.2f} TFLOP/s "
            f"of bf16 matmul here: {100 * t['utilisation']:.1f}% (lower bounds: the time includes the "
            "validation passes)"
        )
    for pair, tasks in report["significance"].items():
        ps = ", ".join(f"{t} p={c['p_value']:.3g}" for t, c in tasks.items())
        print(f"Wilcoxon one-sided, {pair}: {ps}")
    chosen = report["selection"]
    print(
        f"selection (early stopping, calibration): on the {chosen['validation_notes']} validation notes of "
        f"the 80 training notes, fitting on the other {chosen['fit_notes']} (splits.validation_split; "
        f"the lexicon selects nothing and fits all 80); the {report['dev_notes_scored']} development "
        "notes scored chose nothing"
    )
    print("paper (A100, MTSamples test):", json.dumps(PAPER))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["bert", "llama"], help="kiwi train commands")
    ap.add_argument(
        "--set", action="append", default=[], help="FAMILY.SETTING=VALUE (e.g. llama.max_steps=50)"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep a family's model and evaluation from an earlier run when its config, training data "
        "and validation notes are this run's (else stop, naming what differs)",
    )
    ap.add_argument("--models", type=Path, default=RESULTS / "models")
    ap.add_argument("--out", type=Path, default=RESULTS / "models.json")
    ap.add_argument("--batch-size", type=int, default=16, help="notes per prediction call")
    ap.add_argument("--watts-per-core", type=float, default=5.0)
    ap.add_argument(
        "--dev-notes", type=int, default=None, help="score only the first N dev notes by id (all families)"
    )
    ap.add_argument("--phase", nargs=2, metavar=("STEP", "FAMILY"), help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    meter = EnergyMeter(args.watts_per_core)

    if args.phase:  # a child: one step of one family
        step, fam = args.phase
        folder = args.models / fam
        data = (
            phase_train(fam, folder, args.set, meter)
            if step == "train"
            else phase_eval(folder, meter, args.batch_size, args.dev_notes)
        )
        args.phase_out.write_text(json.dumps(data), encoding="utf-8")
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    args.models.mkdir(parents=True, exist_ok=True)
    common = ["--models", str(args.models), "--watts-per-core", str(args.watts_per_core)]
    common += [f"--set={s}" for s in args.set] + ["--batch-size", str(args.batch_size)]
    common += ["--dev-notes", str(args.dev_notes)] if args.dev_notes else []
    report: dict[str, Any] = {"models": {}, "paper": PAPER}
    for fam in args.families:
        folder = args.models / fam
        saved = folder.with_suffix(".train.json")
        if args.reuse and saved.is_file() and (folder / "kiwi_model.json").is_file():
            config = _config(fam, _overrides(fam, args.set)).to_dict()
            if differs := reuse_mismatches(folder, config, _split()[0], fam not in SELECTS_NOTHING):
                raise SystemExit(
                    f"error: --reuse refuses the {fam} model in {folder}: "
                    + "; ".join(differs)
                    + " (run without --reuse to train it again)"
                )
            train = json.loads(saved.read_text(encoding="utf-8"))
        else:
            print(f"== training {fam} ({_overrides(fam, args.set) or 'defaults'})", flush=True)
            train = _child("--phase", "train", fam, *common)
            saved.write_text(json.dumps(train, indent=2), encoding="utf-8")
        evaluated = folder.with_suffix(".eval.json")
        result = json.loads(evaluated.read_text(encoding="utf-8")) if evaluated.is_file() else {}
        fresh = evaluated.is_file() and evaluated.stat().st_mtime >= saved.stat().st_mtime
        current = "per_type" in result  # evaluated by this version of the benchmark
        if not (args.reuse and fresh and current and result.get("dev_notes") == (args.dev_notes or 16)):
            print(f"== evaluating {fam} on the development notes", flush=True)
            result = _child("--phase", "eval", fam, *common)
            evaluated.write_text(json.dumps(result, indent=2), encoding="utf-8")
        report["models"][fam] = {"train": train, "eval": result}
    report["selection"] = selection(_split()[0])
    pairs = len(args.families) > 1
    report["significance"] = significance(args.families, args.models, args.dev_notes) if pairs else {}
    if "llama" in report["models"]:
        seconds = report["models"]["llama"]["train"]["train_seconds"]
        report["llama_throughput"] = llama_throughput(args.models / "llama", _split()[0], seconds)
    report["dev_notes_scored"] = args.dev_notes or 16
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(report)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
