"""Reward feedback on sequence tasks (``feedback=reinforce|rloo|grpo``) through the real training step: one step against
a hand-written GRPO update, and SFT then GRPO from its run id (``init_from``) through the whole run and MLflow."""

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import rmlab.sequence_policy
from rmlab.build import build_components
from rmlab.run import train
from rmlab.sequence_module import SequenceDataModule, SequenceModule
from rmlab.tokenizer import BOS, EOS, ByteTokenizer
from tests.conftest import compose_config
from tests.test_sequence_training import TINY

K, BATCH, LR, BETA, ENTROPY, LOSS_WEIGHT, EPSILON, TEMPERATURE = 2, 4, 0.5, 0.1, 0.01, 0.5, 0.05, 2.0
POLICY_METRICS = ("sampled_reward", "reward_std", "kl", "kl_sequence", "entropy", "completion_length",
                  "zero_std_groups", "clip_fraction", "pg_loss", "advantage_std", "loss_step")


def hand_grpo_loss(lm, reference, rows, rewards, old_logps=None):
    """GRPO written out, one unpadded row at a time, log-probs at the sampling temperature: group-normalised
    advantages, per-token clipped ratio, k3 KL to the reference in the loss, entropy bonus, terms summed over every
    completion token and divided by their count (loss_type dapo)."""
    groups = rewards.view(-1, K)
    advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).reshape(-1)
    terms, entropies, logps_out = [], [], []
    for row, (prompt, completion) in enumerate(rows):
        ids = torch.tensor([prompt + completion])
        log_p = torch.log_softmax(lm(ids)[0, len(prompt) - 1:-1].float() / TEMPERATURE, -1)
        with torch.no_grad():
            ref = torch.log_softmax(reference(ids)[0, len(prompt) - 1:-1].float() / TEMPERATURE, -1)
        token = torch.tensor(completion)
        logp = log_p[torch.arange(len(completion)), token]
        ref_logp = ref[torch.arange(len(completion)), token]
        old = logp.detach() if old_logps is None else old_logps[row]
        ratio = torch.exp(logp - old)
        surrogate = -torch.min(ratio * advantages[row], ratio.clamp(1 - EPSILON, 1 + EPSILON) * advantages[row])
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        terms.append(surrogate + BETA * kl)
        entropies.append(-(log_p.exp() * log_p).sum(-1))
        logps_out.append(logp.detach())
    count = sum(len(t) for t in terms)
    policy = torch.cat(terms).sum() / count - ENTROPY * torch.cat(entropies).sum() / count
    return policy, logps_out


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def neg_edit_distance(completion: str, reference: str) -> float:
    completion, reference = completion.strip(), reference.strip()
    return -levenshtein(completion, reference) / max(len(completion), len(reference), 1)


def hand_cross_entropy(lm, examples, tokenizer):
    nll, count = 0.0, 0
    for example in examples:
        prompt = [BOS, *tokenizer.encode(example.prompt)]
        target = tokenizer.encode(example.completion) + [EOS]
        logits = lm(torch.tensor([prompt + target]))[0, len(prompt) - 1:-1]
        nll = nll + F.cross_entropy(logits, torch.tensor(target), reduction="sum")
        count += len(target)
    return nll / count


def test_one_grpo_batch_through_the_module_equals_a_hand_written_update(workdir, monkeypatch):
    """Two clipped updates (num_iterations=2) on one batch of prompts through SequenceModule.training_step under a
    Lightning Trainer: the weights it ends with are those of the same two SGD steps on GRPO written out by hand, on
    the completions it sampled (rewards, prompt/completion alignment, left padding, the reference, KL, entropy,
    clipping and the cross entropy mix all enter)."""
    cfg = compose_config(*TINY, "feedback=grpo", f"feedback.num_samples={K}", "feedback.num_iterations=2",
                         f"feedback.beta={BETA}", f"feedback.entropy_coef={ENTROPY}", f"feedback.epsilon={EPSILON}",
                         f"feedback.loss_weight={LOSS_WEIGHT}", "feedback.max_new_tokens=5",
                         f"feedback.temperature={TEMPERATURE}", "reward=neg_edit_distance", "optimizer=sgd",
                         f"optimizer.lr={LR}", "optimizer.momentum=0.0", f"task.batch_size={BATCH}")
    torch.manual_seed(0)
    parts = build_components(cfg)
    tokenizer = ByteTokenizer()
    module = SequenceModule(parts.model, parts.loss, parts.reward, parts.info, generation=parts.generation,
                            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
                            max_epochs=1, log_every_n_steps=1, batch_size=BATCH, feedback=parts.feedback)
    data = SequenceDataModule(parts.splits, BATCH, 8, seed=0, limit_train_batches=1, prompts=True)
    start = copy.deepcopy(parts.model)
    sampled = []
    real_generate = rmlab.sequence_policy.generate

    def recording(model, ids, mask, **kwargs):
        out = real_generate(model, ids, mask, **kwargs)
        sampled.append((ids.clone(), mask.clone(), out.ids.clone(), out.mask.clone()))
        return out

    monkeypatch.setattr(rmlab.sequence_policy, "generate", recording)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=data)
    assert len(sampled) == 1 and trainer.global_step == 2

    prompt_ids, prompt_mask, completion_ids, completion_mask = sampled[0]
    assert prompt_ids.shape[0] == BATCH * K
    by_prompt = {e.prompt: e for e in parts.splits["train"].examples}
    rows, rewards, examples = [], [], []
    for r in range(BATCH * K):
        prompt = prompt_ids[r][prompt_mask[r]].tolist()
        completion = completion_ids[r][completion_mask[r]].tolist()
        example = by_prompt[tokenizer.decode(prompt[1:])]  # each row continues a training prompt
        text = tokenizer.decode(completion[:-1] if completion[-1] == EOS else completion)
        rows.append((prompt, completion))
        rewards.append(neg_edit_distance(text, example.completion))
        if r % K == 0:
            examples.append(example)
    rewards = torch.tensor(rewards)
    assert rewards.view(-1, K).std(1).gt(0).any()  # some group has a signal: the surrogate term counts

    lm = copy.deepcopy(start)
    reference = copy.deepcopy(start).eval()
    old = None
    for _ in range(2):
        policy, logps = hand_grpo_loss(lm, reference, rows, rewards, old)
        old = old if old is not None else logps
        total = LOSS_WEIGHT * hand_cross_entropy(lm, examples, tokenizer) + policy
        lm.zero_grad()
        total.backward()
        with torch.no_grad():
            for p in lm.parameters():
                p -= LR * p.grad
    for (name, ours), theirs, first in zip(module.model.named_parameters(), lm.parameters(), start.parameters()):
        torch.testing.assert_close(ours.detach() - first, theirs.detach() - first, rtol=2e-3, atol=2e-6, msg=name)
    moved = sum((p.detach() - q).abs().sum() for p, q in zip(lm.parameters(), start.parameters()))
    assert moved > 1e-3  # the comparison can fail: the updates moved the weights
    # The frozen reference is neither saved nor trained.
    assert module.reference_policy is not None
    assert not any(m is module.reference_policy for m in module.modules())
    assert not any(k.startswith("reference") for k in module.state_dict())


def test_sft_then_grpo_from_its_run_id_runs_end_to_end_and_mlflow_holds_the_policy_metrics(workdir):
    """An SFT run keeps its best checkpoint as an artifact; GRPO starts from it by run id: the first update's KL to
    the reference is 0 (the reference is the loaded model), the run carries its source, and every policy metric is
    stored per step."""
    graded = "reward=neg_edit_distance"  # a graded reward: groups differ even before the model is any good
    sft = train(compose_config(*TINY, graded, "trainer.max_epochs=2", "logger.log_checkpoint=true"))
    rl = train(compose_config(*TINY, graded, f"init_from={sft['run_id']}", "feedback=grpo", "feedback.num_samples=2",
                              "feedback.max_new_tokens=5", "feedback.beta=0.05", "trainer.max_epochs=1",
                              "trainer.limit_train_batches=3", "trainer.log_every_n_steps=1"))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(rl["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["rmlab.init_from"] == f"run {sft['run_id']}"
    assert run.data.params["init_from"] == sft["run_id"]
    for name in POLICY_METRICS:
        history = client.get_metric_history(run.info.run_id, f"train/{name}")
        assert [m.step for m in history] == [1, 2, 3], name
        assert all(math.isfinite(m.value) for m in history), name
    kl = [m.value for m in client.get_metric_history(run.info.run_id, "train/kl")]
    assert kl[0] == 0.0 and kl[-1] > 0.0  # the reference is the SFT model the policy starts from
    # The loaded weights: the reference completions' cross entropy starts where the SFT run ended, not at ln(260).
    first_loss = client.get_metric_history(run.info.run_id, "train/loss_step")[0].value
    assert first_loss < client.get_run(sft["run_id"]).data.metrics["train/loss"] + 0.05 < math.log(260)
    assert math.isfinite(run.data.metrics["train/reward"]) and math.isfinite(run.data.metrics["val/reward"])


@pytest.mark.slow
def test_grpo_from_an_sft_start_raises_the_reward(workdir):
    """A briefly trained SFT model (reward about one half) leaves headroom; three epochs of GRPO from it raise the
    reward of its sampled completions and its greedy validation reward (about 30 s on one core)."""
    sft = train(compose_config(*TINY, "trainer.max_epochs=8", "logger.log_checkpoint=true"))
    assert sft["val/selected_reward"] < 0.75  # headroom
    rl = train(compose_config(*TINY, f"init_from={sft['run_id']}", "feedback=grpo", "feedback.num_samples=4",
                              "feedback.max_new_tokens=6", "feedback.beta=0.05", "optimizer.lr=1e-3",
                              "trainer.max_epochs=3"))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    epochs = [m.value for m in client.get_metric_history(rl["run_id"], "train/reward")]
    assert len(epochs) == 3 and epochs[-1] > epochs[0] + 0.1
    assert rl["val/selected_reward"] > sft["val/selected_reward"]


@pytest.mark.parametrize("feedback", [["feedback=reinforce", "feedback.num_samples=2", "feedback.baseline=greedy"],
                                      ["feedback=rloo", "feedback.num_samples=2", "feedback.num_iterations=2"],
                                      ["feedback=reinforce", "feedback.baseline=moving_average",
                                       "trainer.accumulate_grad_batches=2"],
                                      ["feedback=grpo", "feedback.num_samples=2", "feedback.beta=0.1",
                                       "trainer.precision=bf16-mixed", "trainer.steps_per_chunk=2"]],
                         ids=lambda o: " ".join(o))
def test_every_policy_feedback_trains_through_the_run(workdir, feedback):
    results = train(compose_config(*TINY, *feedback, "feedback.max_new_tokens=4", "trainer.max_epochs=1",
                                   "trainer.limit_train_batches=4", "logger=none"))
    for name in ("test/reward", "val/selected_reward", "test/loss"):
        assert math.isfinite(results[name]), name
