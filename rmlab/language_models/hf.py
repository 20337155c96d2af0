"""``model=hf_causal_lm``: a Hugging Face causal LM behind rmlab's language-model interface (optional extra
``pip install 'rmlab[hf]'``, transformers 5).

Two ways to get one, both without network access (transformers is told ``local_files_only`` and the hub is set
offline before it is imported):
- ``path``: a local directory holding a model and its tokenizer (``save_pretrained`` output, or a hub snapshot fetched
  once with ``hf download <repo> --local-dir <dir>``);
- ``config``: a transformers model type (``gpt2``, ``llama``, ``qwen2``, ...) built with random weights, sized by
  ``width``, ``depth``, ``heads``, ``max_length`` (the config's ``hidden_size``, ``num_hidden_layers``,
  ``num_attention_heads``, ``max_position_embeddings``) and any other config attribute in ``overrides``. It has no
  tokenizer of its own, so it reads rmlab's byte-level tokenizer and its vocabulary is sized to it (260 ids).

``HFTokenizer`` adapts a transformers tokenizer to ``rmlab.sequence.Tokenizer``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rmlab.errors import ConfigError, check
from rmlab.language_models.base import LanguageModel, positions_from_mask
from rmlab.tokenizer import ByteTokenizer

# rmlab's size keys -> the standard transformers config names (each config maps them to its own, e.g. gpt2's n_embd).
SIZE_KEYS = {"width": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
             "max_length": "max_position_embeddings"}
TOKENIZER_KEYS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
INSTALL = "model=hf_causal_lm needs transformers: pip install 'rmlab[hf]'"


def _transformers():
    """Import transformers with the hub offline (nothing rmlab does may download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"{INSTALL} ({err})") from err
    transformers.logging.set_verbosity_error()
    return transformers


class HFTokenizer:
    """A transformers tokenizer as a ``rmlab.sequence.Tokenizer``.

    ``pad_id`` is the tokenizer's pad token, else its EOS (masks, not pad ids, tell rmlab which tokens are real).
    ``bos_id`` is set only when the tokenizer itself starts every text with BOS (Llama does, GPT-2 does not).
    """

    def __init__(self, tokenizer: Any) -> None:
        check(tokenizer.eos_token_id is not None,
              "model.path: the tokenizer has no EOS token, so generation could not stop; use a causal LM tokenizer")
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        starts = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos_id = int(bos) if bos is not None and starts and starts[0] == bos else None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.tokenizer.decode(values, skip_special_tokens=True)


class _Cache:
    """Holds the transformers cache object between calls (transformers creates it on the first call)."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.length = 0


class HFCausalLM(LanguageModel):
    """A transformers ``AutoModelForCausalLM`` from ``path`` or built from ``config`` (see the module docstring)."""

    def __init__(self, path: str | None = None, config: str | None = None, width: int | None = None,
                 depth: int | None = None, heads: int | None = None, max_length: int | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        check((path is None) != (config is None),
              "model=hf_causal_lm needs exactly one of model.path (a local model directory) or model.config "
              f"(a transformers model type such as gpt2, built with random weights); got path={path!r}, "
              f"config={config!r}")
        sizes = {"width": width, "depth": depth, "heads": heads, "max_length": max_length}
        for key, value in sizes.items():
            check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                  f"model.{key} must be null or an integer >= 1, got {value!r}")
        overrides = dict(overrides or {})
        transformers = _transformers()
        if path is not None:
            given = [f"model.{k}" for k in ("width", "depth", "heads") if sizes[k] is not None]
            if overrides:
                given.append("model.overrides")
            check(not given, f"{', '.join(given)} only apply with model.config (a pretrained model's sizes are "
                             "fixed); leave them null with model.path")
            self.net, self.tokenizer = _from_path(transformers, path)
            self.net.train()  # from_pretrained returns it in eval mode; every other model starts in train mode
        else:
            self.net = _from_config(transformers, config, sizes, overrides)
            self.tokenizer = ByteTokenizer()
        model_length = _context_length(self.net.config)
        check(model_length is not None or max_length is not None,
              "model.max_length must be set: the model's config gives no maximum length")
        if path is not None and max_length is not None and model_length is not None:
            check(max_length <= model_length,
                  f"model.max_length={max_length} exceeds the model's {model_length} positions")
        self.max_length = max_length if max_length is not None else model_length
        self._cache_keyword = _cache_keyword(self.net)

    def new_cache(self, batch_size: int, max_length: int) -> _Cache:
        return _Cache()

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, cache: _Cache | None = None) -> Tensor:
        length = ids.shape[1]
        past = cache.length if cache is not None else 0
        if past + length > self.max_length:
            raise ValueError(f"sequence of {past + length} tokens exceeds model.max_length={self.max_length}")
        kwargs: dict[str, Any] = {"input_ids": ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.long()
            kwargs["position_ids"] = positions_from_mask(attention_mask, length)
        if cache is not None:
            kwargs[self._cache_keyword] = cache.inner
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        out = self.net(**kwargs)
        if cache is not None:
            cache.inner = out[self._cache_keyword]
            cache.length = past + length
        return out.logits


def _cache_keyword(net: Any) -> str:
    """The name transformers gives the KV cache, as an argument and as an output: ``cache`` since 5.x's later
    releases, ``past_key_values`` before (still accepted there, with a deprecation warning)."""
    params = inspect.signature(net.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ConfigError(f"{type(net).__name__}.forward takes neither cache nor past_key_values: this transformers "
                      "version is not supported by model=hf_causal_lm")


def _context_length(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def _from_path(transformers: Any, path: str) -> tuple[Any, HFTokenizer]:
    folder = Path(path).expanduser()
    how = ("get one once, e.g. `hf download <repo id> --local-dir DIR` (huggingface_hub) or a model's "
           "save_pretrained(DIR), then pass model.path=DIR")
    check(folder.is_dir(), f"model.path={path}: no such directory; {how}")
    check((folder / "config.json").is_file(), f"model.path={path}: no config.json there, not a model directory; {how}")
    try:
        net = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise ConfigError(f"model.path={path}: cannot load a causal LM from it: {type(err).__name__}: {err}") from err
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise ConfigError(f"model.path={path}: cannot load its tokenizer (the directory must hold one): "
                          f"{type(err).__name__}: {err}") from err
    return net, HFTokenizer(tokenizer)


def _from_config(transformers: Any, model_type: str, sizes: dict[str, int | None],
                 overrides: dict[str, Any]) -> Any:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check(isinstance(model_type, str) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
          f"model.config must be a transformers causal LM type such as gpt2, llama, qwen2, mistral, got "
          f"{model_type!r}")
    base = transformers.AutoConfig.for_model(model_type)
    valid = set(base.to_dict()) | set(getattr(base, "attribute_map", {}))
    unknown = sorted(k for k in overrides if k not in valid)
    check(not unknown, f"model.overrides: {model_type} configs have no attribute {', '.join(unknown)}; "
                       f"valid ones: {', '.join(sorted(valid))}")
    def canonical(key: str) -> str:  # gpt2 stores hidden_size as n_embd, ...
        return base.attribute_map.get(key, key)

    taken = {canonical(SIZE_KEYS[k]) for k, v in sizes.items() if v is not None}
    clash = sorted(k for k in overrides if canonical(k) in taken)
    check(not clash, f"model.overrides sets {', '.join(clash)}, which model.width/depth/heads/max_length already set")
    fixed = sorted(k for k in overrides if canonical(k) in {canonical(n) for n in TOKENIZER_KEYS})
    check(not fixed, f"model.overrides cannot set {', '.join(fixed)}: a model built from a config reads rmlab's "
                     "byte-level tokenizer, which fixes the vocabulary and the special token ids")
    byte = ByteTokenizer()
    settings = {SIZE_KEYS[k]: v for k, v in sizes.items() if v is not None}
    settings.update(overrides)
    settings.update(vocab_size=byte.vocab_size, pad_token_id=byte.pad_id, bos_token_id=byte.bos_id,
                    eos_token_id=byte.eos_id)
    try:
        config = transformers.AutoConfig.for_model(model_type, **settings)
        return transformers.AutoModelForCausalLM.from_config(config)
    except Exception as err:  # e.g. hidden_size not divisible by num_attention_heads
        raise ConfigError(f"model.config={model_type} with {settings}: {type(err).__name__}: {err}") from err
