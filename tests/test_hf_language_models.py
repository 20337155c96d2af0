"""model=hf_causal_lm: a transformers model behind rmlab's language-model interface, random-init from a config or
loaded from a local directory, never from the network."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mlflow.tracking import MlflowClient  # noqa: E402

from rmlab.errors import ConfigError  # noqa: E402
from rmlab.generation import generate  # noqa: E402
from rmlab.policy import completion_logprobs  # noqa: E402
from rmlab.language_models.hf import HFCausalLM  # noqa: E402
from rmlab.run import train  # noqa: E402
from rmlab.tokenizer import BOS, ByteTokenizer  # noqa: E402
from tests.conftest import compose_config  # noqa: E402
from tests.test_language_models import PROMPTS, left_pad  # noqa: E402
from tests.test_sequence_training import TINY, tiny  # noqa: E402

GPT2 = ["model=hf_causal_lm", "model.config=gpt2", "model.width=32", "model.depth=2", "model.heads=4",
        "model.max_length=32"]


def tiny_gpt2(**overrides):
    torch.manual_seed(0)
    return HFCausalLM(config="gpt2", width=32, depth=2, heads=4, max_length=48, **overrides).eval()


def test_random_init_gpt2_is_sized_by_the_config_keys_and_reads_bytes():
    lm = tiny_gpt2(overrides={"n_inner": 40})
    config = lm.net.config
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions, config.n_inner) == (32, 2, 4, 48, 40)
    assert config.vocab_size == 260 and isinstance(lm.tokenizer, ByteTokenizer) and lm.max_length == 48
    assert lm(torch.tensor([[BOS, 100, 101]])).shape == (1, 3, 260)


def test_hf_generation_with_cache_equals_without_and_batched_equals_alone():
    lm = tiny_gpt2()
    ids, mask = left_pad(PROMPTS)
    cached = generate(lm, ids, mask, max_new_tokens=12)
    plain = generate(lm, ids, mask, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached.ids, plain.ids)
    torch.testing.assert_close(cached.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)
    for i, row in enumerate(PROMPTS):
        alone = generate(lm, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool), max_new_tokens=12)
        assert torch.equal(cached.ids[i, :alone.ids.shape[1]], alone.ids[0])
    logits = lm(torch.cat([cached.prompt_ids, cached.ids], 1), torch.cat([cached.prompt_mask, cached.mask], 1))
    logps, _ = completion_logprobs(logits, ids.shape[1], cached.ids, cached.mask, temperature=1.0)
    torch.testing.assert_close(logps, cached.logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_random_init_gpt2_trains_through_the_run_and_is_tracked(workdir):
    results = train(compose_config(*tiny(*GPT2), "trainer.max_epochs=4", "optimizer.lr=3e-3"))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.config"] == "gpt2"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    for name in ("test/reward", "test/perplexity", "val/best_reward", "test/completion_length"):
        assert math.isfinite(run.data.metrics[name]), name
    assert "samples/test.json" in {a.path for a in client.list_artifacts(run.info.run_id, "samples")}


def save_local_model(folder):
    """A tiny gpt2 and a byte-level BPE tokenizer trained here, saved as a model directory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["abcd=dcba", "ab=ba", "cab=bac"] * 20, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=len(tokenizer),
                                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_local_directory_loads_with_its_own_tokenizer_and_trains(workdir):
    folder = workdir / "tiny-gpt2"
    saved = save_local_model(folder)
    lm = HFCausalLM(path=str(folder))
    assert lm.training and lm.net.training  # as every model starts; from_pretrained alone would leave eval mode
    tokenizer = lm.tokenizer
    assert tokenizer.eos_id == saved.eos_token_id and tokenizer.pad_id == tokenizer.eos_id  # no pad: EOS stands in
    assert tokenizer.bos_id is None  # a gpt2-style tokenizer does not start texts with BOS
    assert tokenizer.encode("abcd=dcba") == saved.encode("abcd=dcba") and tokenizer.vocab_size == len(saved)
    assert tokenizer.decode(tokenizer.encode("cab=bac") + [tokenizer.eos_id]) == "cab=bac"
    assert lm.max_length == 64
    assert HFCausalLM(path=str(folder), max_length=20).max_length == 20
    cfg = compose_config(*tiny("model=hf_causal_lm", f"model.path={folder}"), "trainer.max_epochs=1",
                         "logger=none")
    results = train(cfg)
    assert math.isfinite(results["test/perplexity"]) and math.isfinite(results["test/reward"])


@pytest.mark.parametrize("settings,message", [
    ({}, "needs exactly one of model.path"),
    ({"path": "/no/such/model"}, r"model.path=/no/such/model: no such directory; get one once, e.g. `hf download"),
    ({"config": "vit"}, "model.config must be a transformers causal LM type such as gpt2"),
    ({"config": "gpt2", "overrides": {"n_layers": 2}}, "model.overrides: gpt2 configs have no attribute n_layers"),
    ({"config": "gpt2", "depth": 2, "overrides": {"n_layer": 3}}, "model.overrides sets n_layer, which model.width"),
    ({"config": "gpt2", "overrides": {"vocab_size": 500}}, "model.overrides cannot set vocab_size"),
    ({"config": "gpt2", "width": 30, "heads": 4}, "model.config=gpt2 with"),
    ({"config": "gpt2", "depth": 0}, "model.depth must be null or an integer >= 1"),
])
def test_bad_hf_settings_are_start_up_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        HFCausalLM(**settings)


def test_path_rejects_size_keys_and_a_longer_context(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json there"):
        HFCausalLM(path=str(tmp_path / "empty"))
    save_local_model(tmp_path / "m")
    with pytest.raises(ConfigError, match="model.width only apply with model.config"):
        HFCausalLM(path=str(tmp_path / "m"), width=64)
    with pytest.raises(ConfigError, match="model.max_length=100 exceeds the model's 64 positions"):
        HFCausalLM(path=str(tmp_path / "m"), max_length=100)


def test_hf_model_from_the_config_group_is_validated_before_the_run(workdir):
    with pytest.raises(ConfigError, match="needs exactly one of model.path"):
        train(compose_config(*[o for o in TINY if not o.startswith("model")], "model=hf_causal_lm"))
    assert not (workdir / "mlflow.db").exists()
