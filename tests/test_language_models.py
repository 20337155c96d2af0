"""causal_lm and generation: the KV cache, left padding and batching change nothing; sampling settings do what they
say; log-probabilities of generated completions agree with the model's own."""

import pytest
import torch

from rmlab.errors import ConfigError
from rmlab.generation import GenerationConfig, decode, generate
from rmlab.language_models import CausalLM
from rmlab.policy import GRPO, completion_logprobs, policy_step
from rmlab.sequence import Tokenizer
from rmlab.tokenizer import BOS, EOS, PAD, ByteTokenizer


def model(positions="rotary", **kwargs):
    torch.manual_seed(0)
    settings = {"width": 32, "depth": 2, "heads": 4, "max_length": 48, "positions": positions, **kwargs}
    return CausalLM(**settings).eval()


def left_pad(rows, pad=PAD):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = True
    return ids, mask


PROMPTS = [[BOS, 104, 105, 61], [BOS, 120, 61], [BOS, 97, 98, 99, 100, 101, 61]]


def test_byte_tokenizer_is_a_tokenizer_and_round_trips():
    tokenizer = ByteTokenizer()
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (260, 0, 1, 3)
    ids = tokenizer.encode("héllo ✓")
    assert len(ids) == len("héllo ✓".encode()) and min(ids) >= 4  # bytes, no special tokens
    assert tokenizer.decode([BOS, *ids, EOS, PAD]) == "héllo ✓"


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_cached_steps_equal_one_full_forward(positions):
    lm = model(positions)
    ids = torch.randint(4, 260, (3, 12))
    full = lm(ids)
    cache = lm.new_cache(3, 12)
    pieces = [lm(ids[:, :5], torch.ones(3, 5, dtype=torch.bool), cache=cache)]
    for t in range(5, 12):
        pieces.append(lm(ids[:, t:t + 1], torch.ones(3, t + 1, dtype=torch.bool), cache=cache))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_left_padded_row_computes_what_it_would_alone(positions):
    lm = model(positions)
    ids, mask = left_pad(PROMPTS)
    batched = lm(ids, mask)
    for i, row in enumerate(PROMPTS):
        alone = lm(torch.tensor([row]))
        torch.testing.assert_close(batched[i, -len(row):], alone[0], atol=1e-5, rtol=1e-5)


def test_positions_matter_and_rotary_differs_from_learned():
    ids = torch.tensor([[BOS, 97, 98, 99]])
    assert not torch.allclose(model("rotary")(ids), model("learned")(ids))
    for positions in ("rotary", "learned"):
        # Attention alone is order-blind: the last token of "abc" and "bac" sees the same set of tokens.
        out = model(positions)(torch.tensor([[97, 98, 99], [98, 97, 99]]))
        assert not torch.allclose(out[0, -1], out[1, -1]), positions


def test_embeddings_are_tied():
    lm = model()
    logits = lm(torch.tensor([[BOS, 97]]))
    with torch.no_grad():
        lm.embed.weight[97] += 1.0  # the output layer is the embedding: changing one changes the other
    assert not torch.allclose(lm(torch.tensor([[BOS, 97]]))[0, :, 97], logits[0, :, 97])
    assert sum(p.numel() for p in lm.parameters() if p.shape == lm.embed.weight.shape) == lm.embed.weight.numel()


@pytest.mark.parametrize("bad,message", [
    ({"width": 30, "heads": 4}, "divisible by model.heads"),
    ({"width": 12, "heads": 4}, "even head size"),
    ({"positions": "alibi"}, "model.positions must be one of rotary, learned"),
    ({"depth": 0}, "model.depth must be an integer >= 1"),
    ({"max_length": 1.5}, "model.max_length must be an integer"),
    ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\)"),
])
def test_bad_model_settings_are_named(bad, message):
    with pytest.raises(ConfigError, match=message):
        CausalLM(**{"width": 32, "heads": 4, **bad})


def test_longer_than_max_length_is_refused():
    with pytest.raises(ValueError, match="exceeds model.max_length=48"):
        model()(torch.zeros(1, 49, dtype=torch.long))


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_generation_with_cache_equals_without(positions):
    lm = model(positions)
    ids, mask = left_pad(PROMPTS)
    cached = generate(lm, ids, mask, max_new_tokens=20)
    plain = generate(lm, ids, mask, max_new_tokens=20, use_cache=False)
    assert torch.equal(cached.ids, plain.ids) and torch.equal(cached.mask, plain.mask)
    torch.testing.assert_close(cached.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)
    gen = torch.Generator().manual_seed(3)
    sampled = generate(lm, ids, mask, max_new_tokens=20, do_sample=True, generator=gen)
    gen = torch.Generator().manual_seed(3)
    sampled_plain = generate(lm, ids, mask, max_new_tokens=20, do_sample=True, generator=gen, use_cache=False)
    assert torch.equal(sampled.ids, sampled_plain.ids)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    lm = model()
    ids, mask = left_pad(PROMPTS)
    batched = generate(lm, ids, mask, max_new_tokens=16)
    for i, row in enumerate(PROMPTS):
        alone = generate(lm, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool), max_new_tokens=16)
        n = alone.ids.shape[1]
        assert torch.equal(batched.ids[i, :n], alone.ids[0])
        assert not batched.mask[i, n:].any()
        torch.testing.assert_close(batched.logprobs[i, :n], alone.logprobs[0], atol=1e-5, rtol=1e-5)


class Scripted(torch.nn.Module):
    """A stand-in model that writes a fixed script per row (then EOS), whatever the input: tests stopping and masks."""

    def __init__(self, scripts, max_length=64):
        super().__init__()
        self.tokenizer = ByteTokenizer()
        self.max_length = max_length
        self.scripts = scripts
        self.calls = 0

    def new_cache(self, batch, length):
        return {"length": 0}

    def forward(self, ids, attention_mask=None, cache=None):
        self.calls += 1
        step = self.calls - 1
        logits = torch.full((ids.shape[0], ids.shape[1], 260), -10.0)
        for row, script in enumerate(self.scripts):
            token = script[step] if step < len(script) else EOS
            logits[row, -1, token] = 10.0
        return logits


def test_generation_stops_at_eos_and_masks_what_follows():
    a, b, c, d, e = ByteTokenizer().encode("abcde")
    scripts = [[a, b], [a, b, c, d, e], [EOS]]
    ids, mask = left_pad(PROMPTS)
    out = generate(Scripted(scripts), ids, mask, max_new_tokens=10)
    assert out.ids.shape == (3, 6)  # stops once every row has ended: the longest is 5 tokens + EOS
    assert out.ids[0].tolist() == [a, b, EOS, PAD, PAD, PAD]
    assert out.mask.sum(1).tolist() == [3, 6, 1]  # up to and including EOS
    assert decode(ByteTokenizer(), out) == ["ab", "abcde", ""]
    assert (out.logprobs[~out.mask] == 0).all()
    capped = generate(Scripted(scripts), ids, mask, max_new_tokens=2)
    assert capped.ids.shape == (3, 2) and decode(ByteTokenizer(), capped) == ["ab", "ab", ""]


def test_generation_never_runs_past_max_length():
    ids, mask = left_pad(PROMPTS)  # 7 tokens wide
    out = generate(Scripted([[97] * 50] * 3, max_length=10), ids, mask, max_new_tokens=64)
    assert out.ids.shape[1] == 3
    with pytest.raises(ValueError, match="no room to generate"):
        generate(Scripted([[97]], max_length=7), ids, mask, max_new_tokens=4)


def test_top_k_1_and_a_tiny_top_p_are_greedy_and_sampling_is_seeded():
    lm = model()
    ids, mask = left_pad(PROMPTS)
    greedy = generate(lm, ids, mask, max_new_tokens=12)
    for settings in ({"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 5.0}):
        out = generate(lm, ids, mask, max_new_tokens=12, do_sample=True, generator=torch.Generator().manual_seed(0),
                       **settings)
        assert torch.equal(out.ids, greedy.ids), settings
    draws = [generate(lm, ids, mask, max_new_tokens=12, do_sample=True, temperature=2.0,
                      generator=torch.Generator().manual_seed(seed)).ids for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], greedy.ids[:, :draws[0].shape[1]])


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    from rmlab.generation import _pick

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    top2, _ = _pick(logits, True, 1.0, 2, 1.0, gen)
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = _pick(logits, True, 1.0, 0, 0.75, gen)  # 0.5 + 0.3 reach 0.75: tokens 0 and 1 only
    assert set(nucleus.tolist()) == {0, 1}
    share = (nucleus == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03  # renormalised over the kept tokens
    everything, logprob = _pick(logits, True, 1.0, 0, 1.0, gen)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(logprob, logits[0].log_softmax(-1)[everything])


def test_generation_logprobs_are_the_policys_logprobs_of_the_completion():
    """What policy optimisation needs: the sampling log-probs equal those rmlab.policy reads off a teacher-forced
    pass over prompt + completion, at the sampling temperature."""
    lm = model()
    ids, mask = left_pad(PROMPTS)
    out = generate(lm, ids, mask, max_new_tokens=10, do_sample=True, temperature=1.5, num_return_sequences=2,
                   generator=torch.Generator().manual_seed(0))
    assert out.ids.shape[0] == 6 and torch.equal(out.prompt_ids[0], out.prompt_ids[1])
    logits = lm(torch.cat([out.prompt_ids, out.ids], 1), torch.cat([out.prompt_mask, out.mask], 1))
    logps, _ = completion_logprobs(logits, ids.shape[1], out.ids, out.mask, temperature=1.5)
    torch.testing.assert_close(logps, out.logprobs, atol=1e-5, rtol=1e-5)


def test_policy_step_trains_causal_lm_through_rmlab_generation():
    """rmlab.policy's shared step on this model and this generation: completions rewarded for ASCII bytes get more of
    them (the integration the policy-optimisation feedbacks build on)."""
    lm = model()
    lm.train()
    algorithm = GRPO(num_samples=4, num_iterations=1, max_new_tokens=6, temperature=1.0)
    optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    def sample(prompt_ids, prompt_mask, greedy):
        out = generate(lm, prompt_ids, prompt_mask, do_sample=not greedy, generator=generator, **algorithm.sampling)
        return out.ids, out.mask

    def update(loss):
        optimizer.zero_grad()
        algorithm.combine(None, loss).backward()
        optimizer.step()

    ids, mask = left_pad(PROMPTS)
    rewards = []
    for _ in range(25):
        metrics = policy_step(algorithm, ids, mask, generate=sample, policy=lm, update=update,
                              score=lambda c, m, index: ((c < 4 + 128) & m).float().sum(1) / 6)
        rewards.append(metrics["sampled_reward"].item())
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2


def test_generation_config_is_validated():
    assert GenerationConfig.from_config({"name": "greedy", "max_new_tokens": 5}).sampling()["max_new_tokens"] == 5
    with pytest.raises(ConfigError, match="generation has no option top_n; its options are: max_new_tokens"):
        GenerationConfig.from_config({"top_n": 3})
    with pytest.raises(ConfigError, match="generation.temperature=0.5 only apply when sampling"):
        GenerationConfig(temperature=0.5)
    for bad, message in (({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
                         ({"do_sample": True, "temperature": 0.0}, "temperature must be a number > 0"),
                         ({"do_sample": True, "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
                         ({"do_sample": True, "top_k": -1}, "top_k must be an integer >= 0"),
                         ({"do_sample": "yes"}, "do_sample must be true or false"),
                         ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                         ({"log_samples": -1}, "log_samples must be an integer >= 0")):
        with pytest.raises(ConfigError, match=message):
            GenerationConfig(**bad)
