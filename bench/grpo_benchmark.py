"""GRPO fine-tuning of a language model: rmlab's throughput against a hand-written PyTorch loop doing the same work,
and the share of each side's training time spent generating.

The run (both sides): ``task=reverse model=causal_lm feedback=grpo feedback.num_samples=8
feedback.max_new_tokens=12 reward=exact_match`` from fresh weights, one epoch cut to ``--batches`` batches of 32
prompts (``trainer.limit_train_batches``), then one validation (greedy, ``generation.max_new_tokens=12``) and the
test split. Everything else is rmlab's defaults for grpo (``conf/feedback/grpo.yaml``): ``num_iterations=1``,
``beta=0``, ``epsilon=0.2``, ``scale_rewards=group``, ``loss_type=dapo``, temperature 1, Adam at lr 1e-3.

- rmlab: ``rmlab.run.train`` (what ``python -m rmlab`` calls) with MLflow tracking on, into a temporary sqlite
  store. Its generation time is the time spent in ``generate`` during its policy steps (timed by wrapping the
  function the policy step calls); its validation time is the time spent in ``SequenceModule.evaluate("val")``.
- the loop: the same model class built the same way (``build_components`` after the same seed, so the same
  initial weights), the same tokenised prompts in the same order (the seeded permutation rmlab's batches use), and
  per batch what rmlab's policy step does, written plainly: sample 8 completions per prompt with the model's KV
  cache (its own loop: softmax, ``torch.multinomial``, stop when every row has produced EOS), exact match against
  the reference, group-normalised advantages ``(r - mean) / (std + 1e-4)``, one forward pass of the frozen
  reference policy (rmlab computes the KL to it and logs it in every run, even with ``beta=0``: so does the loop),
  the cross entropy on the reference completions without gradient (rmlab logs it as ``train/loss`` in every run:
  so does the loop), the policy's forward pass, the clipped per-token ratio, the ``dapo`` aggregation, backward and
  an Adam step; the reward, KL and losses read every ``log_every_n_steps`` steps.

Before timing, ``equivalence`` checks that the two sides do the same work on two batches: the same sampled
completions token for token (both sides draw from torch's global generator after the same seed, in the same
order), the same rewards, the same policy loss and the same weights after each step (to float rounding).

Prints one JSON object per line: ``equivalence``, then ``grpo_training`` with the medians over ``--pairs``
alternating pairs (loop first, then rmlab first) of samples/s (prompts x num_samples completions trained on per
second):
- ``train_ratio``: rmlab's fit (``Trainer.fit``, the span its ``perf_fit_s`` times) without its validation (the time
  in ``evaluate("val")``) against the loop's training; ``train_cpu_ratio`` the same in CPU seconds of the process
  (all its threads): less moved by the other jobs of a shared machine than wall time;
- ``fit_ratio``: rmlab's whole fit (training and its one validation) against the loop's training plus the same
  validation (teacher-forced cross entropy, greedy generation with the KV cache, exact match);
- ``run_ratio``: rmlab from the creation of its MLflow run to the run closed (config and params logged, fit, test,
  best checkpoint, MLflow model logged, metrics flushed) against the loop's training, validation, test evaluation,
  weights saved with ``torch.save`` and its numbers written as JSON;
- ``*_generation_share`` (``*_generation_cpu_share``): time generating completions during training / training time,
  for each side, in wall (CPU) seconds; ``loop_s``/``rmlab_s`` the medians of each side's times.
Goal: ``train_ratio`` >= 0.85.

    python bench/grpo_benchmark.py --threads 1                   # about 2-3 minutes on 2 cores
    python bench/grpo_benchmark.py --threads 1 --pairs 5 --batches 30
"""

import argparse
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rmlab.composed import compose  # noqa: E402  (this checkout's rmlab)

RUN = ["task=reverse", "task.n_examples=1000", "model=causal_lm", "loss=cross_entropy", "feedback=grpo",
       "feedback.num_samples=8", "feedback.max_new_tokens=12", "reward=exact_match", "trainer.max_epochs=1",
       "generation.max_new_tokens=12", "trainer.enable_progress_bar=false"]


class Span:
    """Wall and CPU seconds (of this process, all its threads) spent inside ``with span:``, summed over its uses."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Self:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def row(**spans: Span) -> dict:
    return {**{f"{k}_s": v.wall for k, v in spans.items()}, **{f"{k}_cpu_s": v.cpu for k, v in spans.items()}}


# -- the hand-written loop --------------------------------------------------------------------------------------------

def sample(model, ids, mask, max_new_tokens: int, greedy: bool = False, temperature: float = 1.0):
    """Continue left-padded prompts with the model's KV cache: (completion ids, mask True up to and including EOS)."""
    import torch

    tok = model.tokenizer
    batch, prompt = ids.shape
    steps = min(max_new_tokens, model.max_length - prompt)
    cache = model.new_cache(batch, prompt + steps)
    mask = mask.bool()
    logits = model(ids, mask, cache=cache)[:, -1]
    done = torch.zeros(batch, dtype=torch.bool)
    tokens, alive_cols = [], []
    for step in range(steps):
        if greedy:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1).squeeze(-1)
        alive = ~done
        token = torch.where(alive, token, tok.pad_id)
        tokens.append(token)
        alive_cols.append(alive)
        done = done | (token == tok.eos_id)
        if step == steps - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, alive.unsqueeze(1)], 1)
        logits = model(token.unsqueeze(1), mask, cache=cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(alive_cols, 1)


def texts_of(tokenizer, ids, mask) -> list[str]:
    texts = []
    for tokens, length in zip(ids.tolist(), mask.sum(1).tolist()):
        tokens = tokens[:length]
        if tokens and tokens[-1] == tokenizer.eos_id:
            tokens = tokens[:-1]
        texts.append(tokenizer.decode(tokens))
    return texts


def exact_match(completion: str, reference: str) -> float:
    return float(completion.strip() == reference.strip())


def graded(completion: str, reference: str) -> float:
    """The equivalence check's reward: the share of the completion's characters found in the reference. Exact match
    is 0 for every completion of a fresh model, so every advantage would be 0 and no weight would move."""
    return sum(c in reference for c in completion) / max(len(completion), 1)


def scores(score, texts: list[str], examples) -> list[float]:
    return [score(t, e.completion) for t, e in zip(texts, examples)]


def token_logps(model, input_ids, attention_mask, prompt: int, completion):
    """log p of each completion token (rows, N), float32, from one teacher-forced pass."""
    logits = model(input_ids, attention_mask)[:, prompt - 1:prompt - 1 + completion.shape[1]].float()
    return logits.gather(-1, completion.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class Loop:
    """The hand-written GRPO loop over the run's data (see the module docstring)."""

    def __init__(self, cfg, score=exact_match) -> None:
        import torch

        from rmlab.build import build_components
        from rmlab.run import seed_all

        seed_all(cfg.seed)
        self.parts = build_components(cfg)
        self.cfg = cfg
        self.model = self.parts.model
        self.batch = self.parts.task.batch_size
        fb = cfg.feedback
        self.k, self.epsilon, self.max_new = fb.num_samples, fb.epsilon, fb.max_new_tokens
        self.temperature = fb.temperature
        assert (fb.num_iterations, fb.beta, fb.scale_rewards, fb.loss_type, fb.top_k, fb.top_p, fb.loss_weight,
                fb.feedback_weight, fb.entropy_coef) == (1, 0.0, "group", "dapo", 0, 1.0, 0.0, 1.0, 0.0), \
            "the loop writes out grpo's defaults only"
        self.torch = torch
        self.score = score
        self.generation = Span()
        self.history: list[dict] = []
        self.trace: list[dict] = []  # per step, for the equivalence check (when tracing)

    def train(self, batches: int, trace: bool = False) -> None:
        """Train on ``batches`` batches."""
        import copy

        import torch
        import torch.nn.functional as F

        from rmlab.sequence import IGNORE_INDEX

        model = self.model
        cfg = self.cfg
        o = cfg.optimizer
        optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        model.eval()  # dropout off while sampling and updating, as rmlab (and TRL) do
        train = self.parts.splits["train"]
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        tok, k, log_every = model.tokenizer, self.k, cfg.trainer.log_every_n_steps
        for step in range(batches):
            rows = perm[step * self.batch:(step + 1) * self.batch]
            width, prompt = int(train.lengths[rows].max()), int(train.prompt_lengths[rows].max())
            x, y = train.ids[rows, :width], train.labels[rows, :width]
            ids = train.prompt_ids[rows, -prompt:].repeat_interleave(k, 0)
            mask = train.prompt_mask[rows, -prompt:].repeat_interleave(k, 0)
            examples = [train.examples[i] for i in rows.repeat_interleave(k).tolist()]
            with self.generation, torch.no_grad():
                completion, cmask = sample(model, ids, mask, self.max_new, temperature=self.temperature)
            rewards = torch.tensor(scores(self.score, texts_of(tok, completion, cmask), examples))
            groups = rewards.view(-1, k)
            advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1, 1)
            input_ids, attention = torch.cat([ids, completion], 1), torch.cat([mask, cmask], 1)
            m = cmask.float()
            with torch.no_grad():
                ref = token_logps(reference, input_ids, attention, prompt, completion)
                task_loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
            logps = token_logps(model, input_ids, attention, prompt, completion) * m
            ratio = torch.exp(logps - logps.detach())
            clipped = torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon)
            per_token = -torch.min(ratio * advantages, clipped * advantages)
            loss = (per_token * m).sum() / m.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                log_r = (ref - logps) * m
                kl = ((torch.expm1(log_r) - log_r) * m).sum() / m.sum()
            if (step + 1) % log_every == 0:  # as rmlab logs its per-step metrics
                self.history.append({"loss": task_loss.item(), "pg_loss": loss.item(),
                                     "sampled_reward": rewards.mean().item(), "kl": kl.item()})
            if trace:
                self.trace.append({"completion": completion.clone(), "rewards": rewards.clone(),
                                   "pg_loss": loss.item(), "kl": kl.item(), "task_loss": task_loss.item(),
                                   "weights": {n: p.detach().clone() for n, p in model.named_parameters()}})

    def evaluate(self, split: str) -> float:
        """Teacher-forced cross entropy, greedy generation and exact match over a split, as rmlab evaluates."""
        import torch
        import torch.nn.functional as F

        from rmlab.sequence import IGNORE_INDEX

        data = self.parts.splits[split]
        size, rewards = self.parts.generation.batch_size, []
        with torch.no_grad():
            for i in range(0, len(data), size):
                width, prompt = int(data.lengths[i:i + size].max()), int(data.prompt_lengths[i:i + size].max())
                logits = self.model(data.ids[i:i + size, :width])
                F.cross_entropy(logits.flatten(0, 1), data.labels[i:i + size, :width].flatten(),
                                ignore_index=IGNORE_INDEX).item()
                ids, mask = sample(self.model, data.prompt_ids[i:i + size, -prompt:],
                                   data.prompt_mask[i:i + size, -prompt:], self.parts.generation.max_new_tokens,
                                   greedy=True)
                rewards += scores(self.score, texts_of(self.model.tokenizer, ids, mask), data.examples[i:i + size])
        return sum(rewards) / len(rewards)


def loop_run(cfg, batches: int, out: Path) -> dict:
    loop = Loop(cfg)
    train, fit, run = Span(), Span(), Span()
    with run:
        with fit:
            with train:
                loop.train(batches)
            val = loop.evaluate("val")
        test = loop.evaluate("test")
        loop.torch.save(loop.model.state_dict(), out / "loop.pt")
        (out / "loop.json").write_text(json.dumps({"val/reward": val, "test/reward": test}))
    return row(train=train, fit=fit, run=run, gen=loop.generation)


# -- rmlab ------------------------------------------------------------------------------------------------------------

@contextmanager
def instrumented(spans: dict[str, Span], trace: list | None = None):
    """Time rmlab's fit (``Trainer.fit``), the generation of its policy steps, its validation and its MLflow run
    (from its creation to its closing); with ``trace``, record each policy batch."""
    import pytorch_lightning as pl

    import rmlab.sequence_policy as sp
    from rmlab.sequence_module import SequenceModule
    from rmlab.tracking import Tracker

    originals = (sp.generate, sp.run_policy_batch, SequenceModule.evaluate, Tracker.start, Tracker.finish,
                 pl.Trainer.fit)
    generate, run_policy_batch, evaluate, start, finish, fit = originals
    spans.update(gen=Span(), val=Span(), fit=Span(), run=Span())

    def timed_generate(*args, **kwargs):
        with spans["gen"]:
            out = generate(*args, **kwargs)
        if trace is not None:
            trace.append({"completion": out.ids.clone()})
        return out

    def traced_batch(module, *args, **kwargs):
        out = run_policy_batch(module, *args, **kwargs)
        if trace is not None:
            trace[-1].update(rewards=out.rewards.clone(), pg_loss=float(out.metrics["pg_loss"]),
                             kl=float(out.metrics["kl"]), task_loss=float(out.loss),
                             weights={n: p.detach().clone() for n, p in module.model.named_parameters()})
        return out

    def timed_evaluate(self, split, batches):
        if split != "val":
            return evaluate(self, split, batches)
        with spans["val"]:
            return evaluate(self, split, batches)

    def timed_fit(self, *args, **kwargs):
        with spans["fit"]:
            return fit(self, *args, **kwargs)

    def timed_start(self, *args, **kwargs):
        spans["run"].__enter__()  # before the run is created: its creation counts
        return start(self, *args, **kwargs)

    def timed_finish(self, *args, **kwargs):
        try:
            return finish(self, *args, **kwargs)
        finally:
            spans["run"].__exit__()

    sp.generate, sp.run_policy_batch, SequenceModule.evaluate = timed_generate, traced_batch, timed_evaluate
    Tracker.start, Tracker.finish, pl.Trainer.fit = timed_start, timed_finish, timed_fit
    try:
        yield
    finally:
        (sp.generate, sp.run_policy_batch, SequenceModule.evaluate, Tracker.start, Tracker.finish,
         pl.Trainer.fit) = originals


def rmlab_run(cfg, store: Path, trace: list | None = None) -> dict:
    from rmlab.run import train

    cfg.logger.tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    spans: dict[str, Span] = {}
    with instrumented(spans, trace), redirect_stdout(io.StringIO()):  # its result block: keep stdout JSON lines
        train(cfg)
    train_span = Span()
    train_span.wall, train_span.cpu = spans["fit"].wall - spans["val"].wall, spans["fit"].cpu - spans["val"].cpu
    return row(train=train_span, fit=spans["fit"], run=spans["run"], gen=spans["gen"])


# -- the cases --------------------------------------------------------------------------------------------------------

def equivalence(overrides: list[str], store: Path) -> dict:
    """Two batches on both sides: same completions, rewards, policy loss, KL to the reference, cross entropy of the
    reference completions and weights after each step, both scoring with ``graded`` instead of exact match (so that
    the updates move the weights)."""
    import torch

    from rmlab.rewards.text import ExactMatch

    batches = 2
    cfg = compose(overrides + [f"trainer.limit_train_batches={batches}"])
    ours: list[dict] = []
    original = ExactMatch._score
    ExactMatch._score = lambda self, completion, reference: graded(completion, reference)
    try:
        rmlab_run(cfg, store, trace=ours)
    finally:
        ExactMatch._score = original
    loop = Loop(compose(overrides), score=graded)
    initial = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    loop.train(batches, trace=True)
    theirs = loop.trace
    assert len(ours) == len(theirs) == batches, (len(ours), len(theirs))
    report = {"case": "equivalence", "batches": batches, "completions": [], "same_completions": True,
              "same_rewards": True, "pg_loss": [], "kl": [], "task_loss": [], "max_weight_diff": []}
    for a, b in zip(ours, theirs):
        report["completions"].append(list(a["completion"].shape))
        report["same_completions"] &= torch.equal(a["completion"], b["completion"])
        report["same_rewards"] &= torch.equal(a["rewards"].cpu().float(), b["rewards"].float())
        report["pg_loss"].append([a["pg_loss"], b["pg_loss"]])
        report["kl"].append([a["kl"], b["kl"]])
        report["task_loss"].append([a["task_loss"], b["task_loss"]])
        report["max_weight_diff"].append(max(float((a["weights"][n] - b["weights"][n]).abs().max())
                                             for n in b["weights"]))
    # The updates did move the weights (else equal weights would say nothing).
    report["max_weight_change"] = max(float((theirs[-1]["weights"][n] - w).abs().max()) for n, w in initial.items())
    report["ok"] = bool(report["max_weight_change"] > 0 and report["same_completions"] and report["same_rewards"]
                        # the reference policy's pass (KL) and the reference completions' cross entropy: the two
                        # passes without gradient that both sides pay
                        and all(abs(x - y) <= 1e-5 * max(1.0, abs(x))
                                for key in ("pg_loss", "kl", "task_loss") for x, y in report[key])
                        and all(d <= 1e-6 for d in report["max_weight_diff"]))
    return report


def training_case(overrides: list[str], batches: int, pairs: int, store: Path) -> dict:
    import torch

    cfg_overrides = overrides + [f"trainer.limit_train_batches={batches}"]
    rmlab_run(compose(cfg_overrides), store)  # warm-up: imports, the store's schema, first-call kernels
    loop_rows, rmlab_rows = [], []
    for pair in range(pairs):
        # Each side goes first in every other pair, so a drift of the machine's load favours neither; each starts
        # with the garbage of the other collected.
        for side in (("loop", "rmlab") if pair % 2 == 0 else ("rmlab", "loop")):
            gc.collect()
            if side == "loop":
                loop_rows.append(loop_run(compose(cfg_overrides), batches, store))
            else:
                rmlab_rows.append(rmlab_run(compose(cfg_overrides), store))
    cfg = compose(cfg_overrides)
    samples = batches * cfg.task.batch_size * cfg.feedback.num_samples

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    def ratio(key):  # samples/s ratio rmlab / loop = loop time / rmlab time, pair by pair
        return round(statistics.median(lp[key] / rm[key] for lp, rm in zip(loop_rows, rmlab_rows)), 3)

    def share(rows, clock=""):
        return round(statistics.median(r[f"gen{clock}_s"] / r[f"train{clock}_s"] for r in rows), 3)

    keys = ("gen_s", "train_s", "fit_s", "run_s", "gen_cpu_s", "train_cpu_s")

    return {"case": "grpo_training", "batches": batches, "prompts_per_batch": cfg.task.batch_size,
            "num_samples": cfg.feedback.num_samples, "samples": samples,
            "loop_samples_per_s": round(samples / median(loop_rows, "train_s"), 1),
            "rmlab_samples_per_s": round(samples / median(rmlab_rows, "train_s"), 1),
            "train_ratio": ratio("train_s"), "fit_ratio": ratio("fit_s"), "run_ratio": ratio("run_s"),
            "train_cpu_ratio": ratio("train_cpu_s"),
            "loop_generation_share": share(loop_rows), "rmlab_generation_share": share(rmlab_rows),
            "loop_generation_cpu_share": share(loop_rows, "_cpu"),
            "rmlab_generation_cpu_share": share(rmlab_rows, "_cpu"),
            "loop_s": {k: round(median(loop_rows, k), 3) for k in keys},
            "rmlab_s": {k: round(median(rmlab_rows, k), 3) for k in keys},
            "train_ratio_per_pair": [round(lp["train_s"] / rm["train_s"], 3) for lp, rm in zip(loop_rows, rmlab_rows)],
            "pairs": pairs, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="training batches (of 32 prompts) per run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-equivalence", action="store_true")
    args = parser.parse_args()
    import logging

    import torch

    logging.disable(logging.WARNING)
    overrides = list(RUN)
    if args.threads:
        torch.set_num_threads(args.threads)
        overrides.append(f"trainer.num_threads={args.threads}")
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # rmlab's output folders go under the current directory
        try:
            store = Path(folder)
            if not args.skip_equivalence:
                check = equivalence(overrides, store)
                print(json.dumps(check), flush=True)
                if not check["ok"]:
                    sys.exit("the two sides did not do the same work: no ratio measured")
            print(json.dumps(training_case(overrides, args.batches, args.pairs, store)), flush=True)
        finally:
            os.chdir(here)


if __name__ == "__main__":
    main()
