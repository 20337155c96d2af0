"""Language models (output kind ``sequence``): ``causal_lm`` (``causal_lm.CausalLM``, written here, byte-level
tokenizer) and ``hf_causal_lm`` (``hf.HFCausalLM``, transformers; imported only when configured).

``base`` holds the interface both implement (``forward(ids, attention_mask, cache) -> logits``, ``new_cache``,
``tokenizer``, ``max_length``); ``rmlab.generation`` generates with it and ``rmlab.policy.logprobs`` reads
log-probabilities of given completions off its logits.
"""

from rmlab.language_models.base import LanguageModel, positions_from_mask
from rmlab.language_models.causal_lm import CausalLM

__all__ = ["CausalLM", "LanguageModel", "positions_from_mask"]
