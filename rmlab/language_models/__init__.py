"""Language models (output kind ``sequence``): ``causal_lm`` (``causal_lm.CausalLM``, written here, byte-level
tokenizer) and ``hf_causal_lm`` (``hf.HFCausalLM``, transformers; imported only when configured).

``base`` holds the interface both implement (``forward(ids, attention_mask, cache) -> logits``, ``new_cache``,
``tokenizer``, ``max_length``) and the helpers built on it: ``token_logprobs`` (per-token log-probabilities of given
completions) and ``completion_batch`` (prompts + generated completions as one batch for it).
"""

from rmlab.language_models.base import LanguageModel, completion_batch, positions_from_mask, token_logprobs
from rmlab.language_models.causal_lm import CausalLM

__all__ = ["CausalLM", "LanguageModel", "completion_batch", "positions_from_mask", "token_logprobs"]
