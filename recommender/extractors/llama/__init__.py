"""``kiwi.llama.v1``: Kiwi's instruction-tuned LLaMA extractor (prompts, QLoRA training, fast generation)."""
