"""What a LLaMA model folder holds, by name: read by the extractor, the trainer and the engines."""

from __future__ import annotations

NAME = "kiwi.llama.v1"  # the family's registry name, saved in kiwi_model.json
ADAPTER_DIR = "adapter"  # the LoRA adapter (peft)
TOKENIZER_DIR = "tokenizer"
MERGED_DIR = "merged"  # base and adapter merged, for engines that cannot load an adapter (vLLM)
SNAPSHOT_DIR = "snapshots"  # step-NNNNN/: the adapter at every SNAPSHOT_STEPS of training (peft layout)

__all__ = ["ADAPTER_DIR", "MERGED_DIR", "NAME", "SNAPSHOT_DIR", "TOKENIZER_DIR"]
