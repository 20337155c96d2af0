"""Preference optimisation of a language model on pairs of completions (output kind ``sequence_pair``): the tasks
(generated and the user's file), the module's DPO loss against a hand-written computation and TRL's with the cached
reference, the reference computed once, short real runs through ``rmlab.run.train`` checked through MLflow and an
independent recomputation, and the start-up errors of bad files and incompatible combinations."""

import json
import math
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from rmlab.build import accepted_parameters, build_components
from rmlab.errors import ConfigError, DataError, IncompatibleError
from rmlab.generation_config import GenerationConfig
from rmlab.kinds import SEQUENCE_PAIR, TEXT
from rmlab.language_models import CausalLM
from rmlab.losses import DPO, ORPO, SimPO
from rmlab.pair_module import PreferenceModule
from rmlab.rewards import ExactMatch
from rmlab.run import train
from rmlab.sequence_pairs import PairEvalBatches, PairExample, tokenize_pairs
from rmlab.tasks.sequence_preference import AdditionPreference, PreferenceCompletionFile, ReversePreference
from tests.conftest import PYTHON, REPO, cli_env, compose_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
PAIR_TASKS = ("reverse_preference", "addition_preference", "preference_completion_file")
TINY = ["task=reverse_preference", "task.n_examples=160", "task.max_length=4", "model=causal_lm", "model.width=32",
        "model.depth=1", "model.heads=2", "model.max_length=24", "reward=verifier", "generation.max_new_tokens=6",
        "trainer.enable_progress_bar=false", "trainer.num_threads=1", "optimizer.lr=3e-3"]


def write_pairs(path: Path, n: int = 60) -> Path:
    """A TRL-style preference JSONL file whose prompts repeat (three pairs per prompt)."""
    rows = [{"prompt": f"q{i % (n // 3)}=", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- tasks -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIR_TASKS)
def test_yaml_keys_are_the_parameters_with_their_defaults(name):
    import inspect

    from hydra.utils import get_class

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cls = get_class(cfg._target_)
    params = accepted_parameters(cls)
    defaults = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            defaults.update({p.name: p.default for p in inspect.signature(klass.__init__).parameters.values()})
    for key in cfg:
        if key in ("_target_", "name"):
            continue
        assert key in params, f"{name}.yaml: {key} is not a parameter"
        if key != "split_seed" and defaults[key] is not inspect.Parameter.empty:
            assert cfg[key] == defaults[key], f"{name}.yaml: {key}"
    # Every parameter is documented in the YAML but completion_noise, which pair tasks refuse (pair_flip instead).
    assert set(params) - set(cfg) == {"completion_noise"}


def test_generated_pairs_have_the_answer_as_chosen_and_a_wrong_one_as_rejected():
    task = ReversePreference(n_examples=300)
    info = task.info
    assert info.output_kind == SEQUENCE_PAIR and info.input_type == TEXT and info.verifier is not None
    pairs = [p for split in task.load().values() for p in split]
    assert len(pairs) == 300 and len({p.prompt for p in pairs}) == 300
    for p in pairs:
        assert p.chosen == p.prompt[:-1][::-1] == p.meta["answer"]
        assert len(p.rejected) == len(p.chosen)
        assert sum(a != b for a, b in zip(p.chosen, p.rejected)) == 1 and set(p.rejected) <= set("abcdefghij")
        assert info.verifier(p.chosen, p.chosen_example()) == 1.0
        assert info.verifier(p.rejected, p.rejected_example()) == 0.0
    three = ReversePreference(n_examples=50, edits=3, min_length=5).load()["train"]
    assert all(sum(a != b for a, b in zip(p.chosen, p.rejected)) == 3 for p in three)


def test_addition_pairs_reject_a_different_number():
    task = AdditionPreference(n_examples=300, max_digits=2)
    for p in (p for split in task.load().values() for p in split):
        assert int(p.chosen) == p.meta["answer"] and int(p.rejected) != p.meta["answer"]
        assert len(p.rejected) == 1 or p.rejected[0] != "0"  # no leading zero
        assert task.verify(p.rejected, p.rejected_example()) == 0.0


def test_splits_are_seeded_and_grouped_by_prompt(tmp_path):
    path = write_pairs(tmp_path / "pairs.jsonl")
    for seed in range(3):
        splits = PreferenceCompletionFile(path=str(path), split_seed=seed).load()
        prompts = {k: {p.prompt for p in v} for k, v in splits.items()}
        assert not prompts["train"] & prompts["val"] and not prompts["train"] & prompts["test"]
        assert not prompts["val"] & prompts["test"]
        assert Counter(p.prompt for v in splits.values() for p in v) == Counter({f"q{i}=": 3 for i in range(20)})
    same = PreferenceCompletionFile(path=str(path), split_seed=1).load()
    assert same == PreferenceCompletionFile(path=str(path), split_seed=1).load()
    assert same != PreferenceCompletionFile(path=str(path), split_seed=2).load()


def test_pair_flip_swaps_train_and_val_pairs_only():
    clean = ReversePreference(n_examples=1000).load()
    noisy = ReversePreference(n_examples=1000, pair_flip=0.3).load()
    for split in ("train", "val", "test"):
        assert [p.prompt for p in clean[split]] == [p.prompt for p in noisy[split]]
        flipped = [n.chosen == c.rejected and n.rejected == c.chosen and n.meta.get("flipped", False)
                   for c, n in zip(clean[split], noisy[split])]
        kept = [n == c for c, n in zip(clean[split], noisy[split])]
        assert all(f or k for f, k in zip(flipped, kept))
        share = sum(flipped) / len(flipped)
        if split == "test":
            assert share == 0
        else:
            assert 0.2 < share < 0.4, (split, share)
    kept_val = ReversePreference(n_examples=1000, pair_flip=0.3, corrupt_val=False).load()["val"]
    assert kept_val == clean["val"]


@pytest.mark.parametrize("params,message", [
    ({"pair_flip": 1.0}, r"task.pair_flip must be in \[0, 1\), got 1.0"),
    ({"completion_noise": 0.1}, r"completion_noise does not apply to preference pairs; use task.pair_flip"),
    ({"edits": 0}, r"task.edits must be an integer in \[1, 512\], got 0"),
])
def test_bad_task_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        ReversePreference(**params)


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a", "chosen": "b"}\n', r"rejected column 'rejected' not found; available columns: prompt, chosen"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "", "rejected": "d"}\n',
     r"chosen column 'chosen' has 1 empty values \(missing, blank or null\), e.g. in line 2"),
    ('{"prompt": "a", "chosen": "b", "rejected": 3}\n', r"rejected column 'rejected' holds 3 \(int\) in line 1, not "
                                                        r"text"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"\n', r"line 2 is not valid JSON"),
    ('{"prompt": "a", "chosen": "b", "rejected": "b"}\n', r"1 rows have identical chosen and rejected text, e.g. "
                                                          r"line 1; a pair needs two different completions"),
])
def test_bad_files_are_one_line_data_errors(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        PreferenceCompletionFile(path=str(path)).load()
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_csv_and_parquet_files_read_as_jsonl_does(tmp_path):
    import pandas as pd

    jsonl = write_pairs(tmp_path / "pairs.jsonl")
    frame = pd.read_json(jsonl, lines=True)
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    frame.to_parquet(tmp_path / "pairs.parquet")
    loads = [PreferenceCompletionFile(path=str(tmp_path / f"pairs.{ext}")).load() for ext in ("jsonl", "csv", "parquet")]
    assert loads[0] == loads[1] == loads[2]
    with pytest.raises(DataError, match=r"pairs.txt: unknown file extension '.txt'"):
        PreferenceCompletionFile(path=str(tmp_path / "pairs.txt"))
    with pytest.raises(ConfigError, match=r"must differ"):
        PreferenceCompletionFile(path=str(jsonl), chosen_column="prompt")


def test_a_bad_file_on_the_command_line_exits_2_in_one_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b"}\n')
    proc = subprocess.run([PYTHON, "-m", "rmlab", "task=preference_completion_file", f"task.path={path}",
                           "model=causal_lm", "loss=dpo", "reward=exact_match"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"rmlab: error: {path}: rejected column 'rejected' not found; available columns: prompt, chosen"]
    assert not (tmp_path / "mlflow.db").exists()


# --- the data path -------------------------------------------------------------------------------------------------


def test_pairs_tokenise_to_chosen_then_rejected_rows_and_batches_cover_every_pair_once():
    from rmlab.sequence import IGNORE_INDEX
    from rmlab.sequence_pairs import PairTrainBatches, as_rows
    from rmlab.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    pairs = [PairExample(f"p{i}=", "c" * (i % 3 + 1), "r" * (i % 5 + 1)) for i in range(23)]
    split = tokenize_pairs(pairs, tokenizer, 16, "train", "tiny")
    for i, p in enumerate(pairs):
        for side, text in ((0, p.chosen), (1, p.rejected)):
            prompt = [tokenizer.bos_id, *tokenizer.encode(p.prompt)]
            row = prompt + tokenizer.encode(text) + [tokenizer.eos_id]
            assert split.ids[i, side, :len(row)].tolist() == row
            assert (split.ids[i, side, len(row):] == tokenizer.pad_id).all()
            labels = split.labels[i, side]
            assert labels[len(prompt) - 1:len(row) - 1].tolist() == row[len(prompt):]
            assert (labels[:len(prompt) - 1] == IGNORE_INDEX).all() and (labels[len(row) - 1:] == IGNORE_INDEX).all()
    assert split.tokens == sum(2 * (len(p.prompt) + 2) + len(p.chosen) + len(p.rejected) for p in pairs)  # both rows
    batch = split.ids[:2]
    assert torch.equal(as_rows(batch), torch.cat([batch[:, 0], batch[:, 1]]))
    seen = []
    for epoch in range(2):
        batches = PairTrainBatches(split, batch_size=4, seed=0, steps_per_chunk=2)
        order = []
        for chunk in batches:
            assert chunk.ids.shape[0] == chunk.index.shape[0] <= 8 and len(chunk.widths) == -(-len(chunk.index) // 4)
            width = chunk.ids.shape[2]
            assert torch.equal(chunk.ids, split.ids[chunk.index, :, :width])
            assert torch.equal(chunk.labels, split.labels[chunk.index, :, :width])
            assert (split.ids[chunk.index, :, width:] == tokenizer.pad_id).all()  # nothing real cut off
            order += chunk.index.tolist()
        assert sorted(order) == list(range(23))
        seen.append(order)
    assert seen[0] != list(range(23))  # shuffled


# --- incompatible combinations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["loss=dpo"], r"loss=dpo does not work on task=digits: .* Choices of loss that work on task=digits: "
                   r"cross_entropy, focal"),
    (["task=synthetic_preference", "reward=preference_accuracy", "loss=dpo"],
     r"Choices of loss that work on task=synthetic_preference: bradley_terry, hinge, ipo, log_exp \(a reward model"),
    (["task=reverse", "model=causal_lm", "reward=exact_match", "loss=simpo"],
     r"Choices of loss that work on task=reverse: cross_entropy, .* train on preference pairs \(task=reverse_pref"),
    ([*TINY, "loss=cross_entropy"], r"loss=cross_entropy does not work on task=reverse_preference: .* Choices of loss "
                                    r"that work on task=reverse_preference: dpo, dpo_ipo, orpo, simpo"),
    ([*TINY, "loss=ipo"], r"Choices of loss that work on task=reverse_preference: dpo, dpo_ipo, orpo, simpo \(IPO on "
                          r"a language model's preference pairs is loss=dpo_ipo \(or loss=dpo loss.loss_type=ipo\)\)"),
    ([*TINY, "loss=hinge"], r"is loss=dpo loss.loss_type=hinge"),
    ([*TINY, "loss=dpo", "reward=neg_mse"],
     r"reward=neg_mse does not work on task=reverse_preference: .* Choices of reward that work on "
     r"task=reverse_preference: bleu, chrf, combined, exact_match, .*preference_accuracy"),
    ([*TINY, "loss=dpo", "reward=true_reward_spearman"], r"task=reverse_preference does not \(its targets are NaN\)"),
    ([*TINY, "loss=dpo", "feedback=grpo"], r"feedback=grpo does not work on task=reverse_preference: .* Choices of "
                                           r"feedback that work on task=reverse_preference: none"),
    ([*(o for o in TINY if not o.startswith("model")), "loss=dpo", "model=mlp"],
     r"Choices of model that work on task=reverse_preference: causal_lm"),
])
def test_incompatible_combinations_fail_at_start_up_with_choices(overrides, message):
    with pytest.raises(IncompatibleError, match=message):
        build_components(compose_config(*overrides))


def test_a_pair_too_long_for_the_model_is_a_start_up_error():
    with pytest.raises(ConfigError, match=r"longer than model.max_length=8 tokens"):
        build_components(compose_config(*TINY, "loss=dpo", "model.max_length=8"))


# --- the module: DPO against a hand-written computation and TRL, the reference cached once --------------------------


def completion_logps(lm, prompt: str, completion: str) -> torch.Tensor:
    """Per-token log-probs of ``completion`` + EOS after ``[BOS] prompt``, one sequence at a time, plain torch."""
    tokenizer = lm.tokenizer
    prompt_ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
    target = [*tokenizer.encode(completion), tokenizer.eos_id]
    ids = torch.tensor([prompt_ids + target])
    logp = F.log_softmax(lm(ids)[0].double(), dim=-1)
    return torch.stack([logp[len(prompt_ids) - 1 + j, t] for j, t in enumerate(target)])


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def hand_loss(loss: str, pol: dict, ref: dict, n: dict, rows: list[int]) -> tuple[float, list[float]]:
    """One batch's loss and each pair's implicit margin, from summed log-probs (policy, reference) and token counts
    per side ("c", "r"), written from the papers' formulas."""
    beta = {"sigmoid": 0.5, "ipo": 0.5, "hinge": 0.5, "simpo": 2.0, "orpo": 0.1}[loss]
    if loss in ("simpo", "orpo"):
        a = {side: [pol[side][i] / n[side][i] for i in rows] for side in "cr"}
        margins = [beta * (ac - ar) for ac, ar in zip(a["c"], a["r"])]
        if loss == "simpo":  # gamma 0.5
            return sum(softplus(-(beta * (ac - ar) - 0.5)) for ac, ar in zip(a["c"], a["r"])) / len(rows), margins
        nll = -sum(pol["c"][i] for i in rows) / sum(n["c"][i] for i in rows)

        def log_odds(x):
            return x - math.log(1 - math.exp(x))

        ratio = [log_odds(ac) - log_odds(ar) for ac, ar in zip(a["c"], a["r"])]
        return nll + beta * sum(softplus(-z) for z in ratio) / len(rows), margins
    lr = {side: [pol[side][i] - ref[side][i] for i in rows] for side in "cr"}
    h = [c - r for c, r in zip(lr["c"], lr["r"])]
    if loss == "sigmoid":
        per = [softplus(-beta * x) for x in h]
    elif loss == "hinge":
        per = [max(0.0, 1 - beta * x) for x in h]
    else:  # ipo: per-token log-ratios
        per = [(lr["c"][j] / n["c"][i] - lr["r"][j] / n["r"][i] - 1 / (2 * beta)) ** 2 for j, i in enumerate(rows)]
    return sum(per) / len(rows), [beta * x for x in h]


LOSSES = {"sigmoid": lambda: DPO(beta=0.5), "ipo": lambda: DPO(beta=0.5, loss_type="ipo"),
          "hinge": lambda: DPO(beta=0.5, loss_type="hinge"), "simpo": lambda: SimPO(beta=2.0, gamma=0.5),
          "orpo": lambda: ORPO(beta=0.1)}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_module_loss_equals_a_hand_computation_and_trl_with_the_cached_reference(loss):
    torch.manual_seed(0)
    pairs = [PairExample("ab=", "ba", "bb"), PairExample("cab=", "bac", "bxc"), PairExample("a=", "a", "aaaa")]
    lm = CausalLM(width=32, depth=1, heads=2, max_length=16)
    initial = CausalLM(width=32, depth=1, heads=2, max_length=16)
    initial.load_state_dict(lm.state_dict())
    split = tokenize_pairs(pairs, lm.tokenizer, lm.max_length, "test", "tiny")
    module = PreferenceModule(lm, LOSSES[loss](), ExactMatch(), ReversePreference().info, optimizer={},
                              max_epochs=1, log_every_n_steps=1, batch_size=2,
                              generation=GenerationConfig(max_new_tokens=3, log_samples=0))
    assert module.needs_reference == (loss not in ("simpo", "orpo"))
    if module.needs_reference:
        module.cache_reference({"test": split}, batch_size=2)
    with torch.no_grad():  # the policy moves away from its reference
        for p in lm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    got = module.evaluate("test", PairEvalBatches(split, 2))  # batches of pairs 0-1 and 2
    with torch.no_grad():
        per = {who: {side[0]: [completion_logps(model, p.prompt, getattr(p, side)) for p in pairs]
                     for side in ("chosen", "rejected")} for who, model in (("policy", lm), ("ref", initial))}
    sums = {who: {side: [float(t.sum()) for t in ts] for side, ts in sides.items()} for who, sides in per.items()}
    n = {side: [len(t) for t in ts] for side, ts in per["policy"].items()}
    (first, m1), (second, m2) = (hand_loss(loss, sums["policy"], sums["ref"], n, rows) for rows in ([0, 1], [2]))
    assert got["test/loss"] == pytest.approx((2 * first + second) / 3, rel=1e-5)
    margins = m1 + m2
    assert got["test/implicit_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert got["test/implicit_margin"] == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-6)
    nll = -sum(sums["policy"]["c"]) / sum(n["c"])
    assert got["test/perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    if loss in ("simpo", "orpo"):
        return
    # The cached reference is the initial weights' log-probs; TRL's DPOTrainer loss agrees on the same inputs.
    assert module.reference["test"].chosen.tolist() == pytest.approx(sums["ref"]["c"], rel=1e-5)
    assert module.reference["test"].rejected.tolist() == pytest.approx(sums["ref"]["r"], rel=1e-5)
    trl_reference = pytest.importorskip("tests.trl_reference")
    width = max(n["c"] + n["r"])

    def padded(side):
        return torch.stack([F.pad(t.float(), (0, width - len(t))) for t in side])

    def mask(side):
        return torch.stack([torch.arange(width) < len(t) for t in side])

    trl = [trl_reference.dpo_loss(chosen=padded(per["policy"]["c"][rows]), rejected=padded(per["policy"]["r"][rows]),
                                  chosen_mask=mask(per["policy"]["c"][rows]), rejected_mask=mask(per["policy"]["r"][rows]),
                                  ref_chosen=module.reference["test"].chosen[rows],
                                  ref_rejected=module.reference["test"].rejected[rows], beta=0.5, loss_type=loss)
           for rows in (slice(0, 2), slice(2, 3))]
    assert got["test/loss"] == pytest.approx((2 * float(trl[0]) + float(trl[1])) / 3, rel=1e-5)


def count_forwards(monkeypatch):
    """Record every forward pass of the run's language model: (in training mode, with gradients) per call, and the
    calls made while the reference is cached."""
    calls, phase = [], {"caching": False, "cache_calls": 0}
    original_cache = PreferenceModule.cache_reference
    original_init = PreferenceModule.__init__

    def init(self, model, *args, **kwargs):
        original_init(self, model, *args, **kwargs)
        model.register_forward_hook(lambda m, i, o: calls.append((m.training, torch.is_grad_enabled(),
                                                                  phase["caching"])))

    def cache(self, *args, **kwargs):
        phase["caching"], phase["cache_calls"] = True, phase["cache_calls"] + 1
        try:
            return original_cache(self, *args, **kwargs)
        finally:
            phase["caching"] = False

    monkeypatch.setattr(PreferenceModule, "__init__", init)
    monkeypatch.setattr(PreferenceModule, "cache_reference", cache)
    return calls, phase


@pytest.mark.slow
def test_short_dpo_run_caches_the_reference_once_and_raises_implicit_accuracy(workdir, monkeypatch):
    calls, phase = count_forwards(monkeypatch)
    captured = {}
    import rmlab.run

    original = rmlab.run._module_and_data

    def capture(cfg, parts):
        captured["module"], captured["data"] = original(cfg, parts)
        return captured["module"], captured["data"]

    monkeypatch.setattr(rmlab.run, "_module_and_data", capture)
    # The last weights are tested: from scratch, the generations' verifier reward stays 0, so it selects no epoch.
    cfg = compose_config(*TINY, "loss=dpo", "loss.beta=0.5", "trainer.max_epochs=3", "task.batch_size=16",
                         "generation.batch_size=32", "trainer.checkpoint.enabled=false")
    results = train(cfg)
    module, data = captured["module"], captured["data"]
    sizes = {name: len(split) for name, split in data.splits.items()}
    # One pass over every split's pairs (batches of generation.batch_size), in eval mode, before training; never again.
    assert phase["cache_calls"] == 1
    reference_calls = [c for c in calls if c[2]]
    assert len(reference_calls) == module.reference_passes == sum(-(-n // 32) for n in sizes.values())
    assert all(not training and not grad for training, grad, _ in reference_calls)
    assert calls[:len(reference_calls)] == reference_calls  # before the first training step
    # Training: exactly one forward pass (with gradients) per batch of pairs; no other pass in training mode.
    steps = 3 * -(-sizes["train"] // 16)
    assert sum(1 for training, grad, _ in calls if grad) == steps == module.global_step
    assert not [c for c in calls if c[0] and not c[1]]

    # What MLflow stored: the run finished; the implicit reward accuracy rose over training.
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED"
    history = [m.value for m in client.get_metric_history(run.info.run_id, "train/implicit_accuracy")]
    assert len(history) == 3 and history[-1] > history[0] and history[-1] >= 0.7, history
    assert results["val/selected_epoch"] == 2  # the last epoch's weights were tested
    metrics = run.data.metrics
    for split in ("val", "test"):
        for name in ("loss", "reward", "verifier", "implicit_accuracy", "implicit_margin", "perplexity",
                     "completion_length"):
            assert math.isfinite(metrics[f"{split}/{name}"]), f"{split}/{name}"
    assert metrics["val/implicit_accuracy"] > 0.6 and metrics["test/implicit_accuracy"] > 0.6

    # Independently: the tested (last) weights against the initial ones, on the test pairs, in plain torch.
    trained = CausalLM(width=32, depth=1, heads=2, max_length=24)
    trained.load_state_dict(module.model.state_dict())
    torch.manual_seed(cfg.seed)
    initial = CausalLM(width=32, depth=1, heads=2, max_length=24)  # the run's seeded initial weights
    trained.eval(), initial.eval()
    pairs = data.splits["test"].pairs
    with torch.no_grad():
        h = [sum(float(completion_logps(m, p.prompt, p.chosen).sum()) * s for m, s in ((trained, 1), (initial, -1)))
             - sum(float(completion_logps(m, p.prompt, p.rejected).sum()) * s for m, s in ((trained, 1), (initial, -1)))
             for p in pairs]
    assert metrics["test/implicit_accuracy"] == pytest.approx(sum(x > 0 for x in h) / len(h))
    assert metrics["test/implicit_margin"] == pytest.approx(0.5 * sum(h) / len(h), rel=1e-4)
    assert metrics["test/loss"] == pytest.approx(sum(math.log1p(math.exp(-0.5 * x)) for x in h) / len(h), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["simpo", "orpo", "dpo loss.loss_type=ipo"])
def test_reference_free_and_other_losses_train_through_the_run(workdir, loss, monkeypatch):
    _, phase = count_forwards(monkeypatch)
    name, *extra = loss.split()
    cfg = compose_config(*TINY, f"loss={name}", *extra, "trainer.max_epochs=2", "logger=none", "task.batch_size=16")
    results = train(cfg)
    assert phase["cache_calls"] == (1 if name == "dpo" else 0)  # simpo and orpo need no reference
    for key in ("test/loss", "test/reward", "test/implicit_accuracy", "val/selected_reward"):
        assert math.isfinite(results[key]), key


@pytest.mark.slow
def test_val_and_test_are_scored_by_generating_and_checking_the_answer(workdir):
    overrides = [o for o in TINY if not o.startswith("task")]
    cfg = compose_config(*overrides, "task=addition_preference", "task.n_examples=120", "task.max_digits=2", "loss=orpo", "trainer.max_epochs=1", "generation.log_samples=4")
    results = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    path = client.download_artifacts(results["run_id"], "samples/test.json", str(workdir))
    stored = json.loads(Path(path).read_text())
    rows = [dict(zip(stored["columns"], row)) for row in stored["data"]]
    test = build_components(cfg).task.load()["test"]
    assert [r["prompt"] for r in rows] == [p.prompt for p in test[:4]]
    assert [r["reference"] for r in rows] == [p.chosen for p in test[:4]]
    task = AdditionPreference(n_examples=120, max_digits=2)
    for row, pair in zip(rows, test):  # the verifier's verdict on each generated completion
        assert row["reward"] == task.verify(row["completion"], pair.chosen_example())
    assert results["test/reward"] == results["test/verifier"]


@pytest.mark.slow
def test_a_combined_reward_logs_each_term_on_pair_tasks_too(workdir):
    """Each term of reward=combined is booked on a pair task's val and test, as on sequence tasks: neg_length is
    minus the mean length of the generated completions (every test completion is in the sample table)."""
    terms = "reward.terms=[{name: exact_match, weight: 1.0}, {name: neg_length, weight: 0.01}]"
    cfg = compose_config(*TINY, "loss=dpo", "reward=combined", terms, "trainer.max_epochs=1",
                         "generation.log_samples=1000")
    results = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    stored = json.loads(Path(client.download_artifacts(results["run_id"], "samples/test.json", str(workdir)))
                        .read_text())
    completions = [row[stored["columns"].index("completion")] for row in stored["data"]]
    assert len(completions) == len(build_components(cfg).task.load()["test"]) and any(completions)
    assert results["test/neg_length"] == pytest.approx(-sum(map(len, completions)) / len(completions))
    assert results["test/reward"] == pytest.approx(results["test/exact_match"] + 0.01 * results["test/neg_length"])


def test_readme_commands_compose_and_build(tmp_path, monkeypatch):
    """The README's preference-optimisation commands (run for real in the slow tests above) build as written."""
    monkeypatch.chdir(tmp_path)
    write_pairs(tmp_path / "prefs.jsonl")
    readme = (REPO / "README.md").read_text()
    commands = [line.split()[3:] for line in readme.splitlines()
                if line.startswith("    python -m rmlab ") and any(f"task={t}" in line for t in PAIR_TASKS)]
    assert len(commands) >= 4
    for overrides in commands:
        parts = build_components(compose_config(*overrides))
        assert parts.info.output_kind == SEQUENCE_PAIR


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reverse_preference", "preference_completion_file"])
def test_every_reward_on_a_pair_task_trains_or_is_refused_naming_the_choices(task, workdir):
    from tests.test_config import options, sequence_task_overrides, text_reward_overrides

    base = [f"task={task}", *sequence_task_overrides(task, workdir), *TINY[3:8], "loss=dpo", "logger=none",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
            "trainer.num_threads=1", "generation.max_new_tokens=4", "generation.log_samples=0"]
    trained, refused = [], []
    for reward in options("reward"):
        cfg = compose_config(*base, f"reward={reward}", *text_reward_overrides(reward, workdir))
        try:
            build_components(cfg)
        except IncompatibleError as err:
            message = str(err)  # names the reward, the task and what works instead
            assert f"reward={reward} " in message and f"task={cfg.task.name}" in message, message
            assert "Choices of reward" in message or "use reward=" in message, message
            refused.append(reward)
            continue
        results = train(cfg)
        for name in ("test/loss", "test/reward", "test/implicit_accuracy", "val/selected_reward"):
            assert math.isfinite(results[name]), f"{reward}: {name}"
        trained.append(reward)
    assert {"exact_match", "token_f1", "bleu", "chrf", "rouge_l", "neg_edit_distance"} <= set(trained)
    assert {"preference_accuracy", "reward_margin", "preference_neg_ece"} <= set(trained)  # on the implicit rewards
    assert ("verifier" in trained) == (task == "reverse_preference")
    assert {"accuracy", "neg_mse", "true_reward_spearman", "label_accuracy"} <= set(refused)


def test_a_run_resumed_from_a_lightning_checkpoint_keeps_the_original_reference(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    from rmlab.build import build_components
    from rmlab.run import _module_and_data, quiet_lightning

    quiet_lightning()
    cfg = compose_config(*TINY, "loss=dpo", "logger=none", "task.n_examples=60")

    def fit(max_epochs, ckpt_path=None):
        torch.manual_seed(len(str(ckpt_path)))  # another initial model each time
        module, data = _module_and_data(cfg, build_components(cfg))
        trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             default_root_dir=str(tmp_path))
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
        return module, trainer

    first, trainer = fit(1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    cached = []
    monkeypatch.setattr(PreferenceModule, "cache_reference", lambda *a, **k: cached.append(1))
    resumed, _ = fit(2, tmp_path / "last.ckpt")
    assert not cached and resumed.current_epoch == 2
    for split in ("train", "val", "test"):
        for mine, original in zip(resumed.reference[split], first.reference[split]):
            assert torch.equal(mine, original)


@pytest.mark.slow
def test_a_pair_reward_scores_the_implicit_rewards_without_generating(workdir, monkeypatch):
    import rmlab.pair_module

    def no_generation(*args, **kwargs):
        raise AssertionError("a pair reward needs no generation")

    monkeypatch.setattr(rmlab.pair_module, "generate", no_generation)
    cfg = compose_config(*TINY, "loss=dpo", "loss.beta=0.5", "reward=preference_accuracy", "trainer.max_epochs=3",
                         "task.batch_size=16")
    results = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    metrics = run.data.metrics
    for split in ("train", "val", "test"):
        assert metrics[f"{split}/reward"] == metrics[f"{split}/preference_accuracy"]
        assert metrics[f"{split}/reward"] == pytest.approx(metrics[f"{split}/implicit_accuracy"])
        assert f"{split}/completion_length" not in metrics
    val = [m.value for m in client.get_metric_history(run.info.run_id, "val/reward")]
    assert results["val/selected_reward"] == max(val) and max(val) > 0.5  # it selects the checkpoint
