"""Preference pairs: the pair tasks (splits, leakage, flips, Bradley-Terry labels, the user's file and its errors), the
byte tokenizer, the text model, the pairwise losses (golden values, torch references) and the preference rewards
(numpy / scipy references over several updates), plus their YAMLs."""

import inspect
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import spearmanr
from torch.utils._python_dispatch import TorchDispatchMode

from rmlab import tokenizer
from rmlab.build import accepted_parameters
from rmlab.errors import ConfigError, DataError, IncompatibleError
from rmlab.kinds import FEATURES, PAIR, SEQUENCE_PAIR, TOKENS, TaskInfo
from rmlab.losses import IPO, BradleyTerry, LogExp, MarginRanking
from rmlab.models import MLP, KindHead
from rmlab.rewards import PreferenceAccuracy, PreferenceNegECE, RewardMargin, TrueRewardSpearman
from rmlab.tasks import PreferenceFile, PreferenceFromDataset, SyntheticPreference, Task
from rmlab.tasks.preference import flip_pairs
from rmlab.text_models import TextTransformer

CONF = Path(__file__).resolve().parents[1] / "conf"
SPLITS = ("train", "val", "test")


def small_synth(**kw) -> SyntheticPreference:
    return SyntheticPreference(**{"n_pairs": 600, "dim": 5, **kw})


def swapped(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pair: True where pair ``b`` is pair ``a`` with its two items swapped (asserting it is one or the other)."""
    same = (a == b).flatten(1).all(1)
    swap = (a.flip(1) == b).flatten(1).all(1)
    assert bool((same | swap).all())
    return swap & ~same


# --- synthetic_preference -------------------------------------------------------------------------------------------


def test_synthetic_shapes_dtypes_and_info():
    task = small_synth()
    s = task.load()
    assert [len(s[k]) for k in SPLITS] == [420, 90, 90]
    assert s["train"].x.shape == (420, 2, 5) and s["train"].x.dtype == torch.float32
    assert s["train"].y.shape == (420, 2) and s["train"].y.dtype == torch.float32
    assert task.info == TaskInfo("synthetic_preference", PAIR, 5, None, FEATURES, True)
    assert all(torch.isfinite(s[k].y).all() for k in SPLITS)


def test_synthetic_is_deterministic_and_seeds_do_their_part():
    a, b = small_synth(split_seed=3).load(), small_synth(split_seed=3).load()
    for k in SPLITS:
        assert torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y, b[k].y)
    pairs = lambda s: {tuple(r) for k in SPLITS for r in s[k].y.tolist()}  # noqa: E731 - a pair by its rewards
    c, d = small_synth(split_seed=4).load(), small_synth(data_seed=1).load()
    assert not torch.equal(a["test"].y, c["test"].y) and pairs(a) == pairs(c)  # split_seed: same pairs, new split
    assert not pairs(a) & pairs(d)  # data_seed: new data


def test_standardisation_uses_train_items():
    s = small_synth(standardize=True).load()
    items = s["train"].x.reshape(-1, 5).double()
    assert torch.allclose(items.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(items.std(0, unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-4)
    assert not torch.allclose(s["test"].x.reshape(-1, 5).mean(0), torch.zeros(5), atol=1e-5)


@pytest.mark.parametrize("nonlinearity", ["linear", "quadratic", "mlp"])
def test_nonlinearities_give_unit_scale_rewards(nonlinearity):
    y = small_synth(nonlinearity=nonlinearity, n_pairs=2000).load()["train"].y
    assert 0.8 < float(y.std()) < 1.2


def test_nonlinearities_are_different_functions_of_the_same_items():
    items = lambda t: {tuple(np.round(i, 5)) for k in SPLITS for i in t.load()[k].x.reshape(-1, 5).tolist()}  # noqa
    rewards = {}
    for nl in ("linear", "quadratic", "mlp"):
        task = small_synth(nonlinearity=nl, standardize=False)
        rewards[nl] = sorted(task.load()["train"].y.flatten().tolist())
        assert items(task) == items(small_synth(standardize=False))
    assert rewards["linear"] != rewards["quadratic"] != rewards["mlp"]


def test_lower_temperature_labels_agree_more_with_the_true_reward():
    agree = []
    for temperature in (0.01, 0.3, 1.0, 5.0):
        y = small_synth(n_pairs=3000, temperature=temperature).load()["train"].y
        agree.append(float((y[:, 0] > y[:, 1]).float().mean()))
    assert agree == sorted(agree, reverse=True) and len(set(agree)) == 4
    assert agree[0] > 0.98 and 0.5 < agree[-1] < 0.65


def test_pair_flip_rate_corrupt_val_and_clean_test():
    clean = small_synth(n_pairs=4000).load()
    noisy = small_synth(n_pairs=4000, pair_flip=0.3).load()
    for k in ("train", "val"):
        flips = swapped(clean[k].x, noisy[k].x)
        assert abs(float(flips.float().mean()) - 0.3) < 0.05
        assert torch.equal(swapped(clean[k].y, noisy[k].y), flips)  # x and y swap together
    assert torch.equal(clean["test"].x, noisy["test"].x) and torch.equal(clean["test"].y, noisy["test"].y)
    train_only = small_synth(n_pairs=4000, pair_flip=0.3, corrupt_val=False).load()
    assert torch.equal(train_only["val"].x, clean["val"].x)
    assert torch.equal(train_only["train"].x, noisy["train"].x)  # corrupt_val does not move the train flips


def test_flip_pairs_function():
    x, r = np.arange(12.0).reshape(3, 2, 2), np.arange(6.0).reshape(3, 2)
    fx, fr = flip_pairs(x, r, 1.0, np.random.default_rng(0))
    assert (fx == x[:, ::-1]).all() and (fr == r[:, ::-1]).all() and x[0, 0, 0] == 0.0  # a copy
    fx, fr = flip_pairs(x, r, 0.0, np.random.default_rng(0))
    assert (fx == x).all()
    with pytest.raises(ConfigError, match="pair flip rate"):
        flip_pairs(x, r, 1.5, np.random.default_rng(0))


# --- diabetes_preference ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes_pairs():
    task = PreferenceFromDataset(n_pairs=1000, standardize=False, split_seed=2)
    return task, task.load()


def test_diabetes_pairs_shapes_order_and_info(diabetes_pairs):
    task, s = diabetes_pairs
    assert [len(s[k]) for k in SPLITS] == [700, 150, 150]
    assert s["train"].x.shape == (700, 2, 10)
    assert task.info == TaskInfo("diabetes_preference", PAIR, 10, None, FEATURES, True)
    for k in SPLITS:
        assert bool((s[k].y[:, 0] > s[k].y[:, 1]).all())  # the higher target is chosen; no ties
        keys = {frozenset(map(tuple, p)) for p in s[k].x.tolist()}
        assert len(keys) == len(s[k])  # distinct pairs


def test_diabetes_items_do_not_leak_across_splits(diabetes_pairs):
    _, s = diabetes_pairs
    items = {k: {tuple(i) for i in s[k].x.reshape(-1, 10).tolist()} for k in SPLITS}
    assert not items["train"] & items["val"] and not items["train"] & items["test"] and not items["val"] & items["test"]
    # the whole item split is used in proportion (442 items: 310 / 66 / 66), not a handful per split
    assert len(items["train"]) > 250 and len(items["val"]) > 50 and len(items["test"]) > 50


def test_diabetes_true_rewards_are_targets_zscored_on_train_items(diabetes_pairs):
    from sklearn.datasets import load_diabetes

    _, s = diabetes_pairs
    x, y = load_diabetes(return_X_y=True)
    target_of = {tuple(np.float32(row)): t for row, t in zip(x, y)}
    for split in SPLITS:
        items = zip(s[split].x.reshape(-1, 10).numpy(), s[split].y.flatten().tolist())
        raw, got = np.array([(target_of[tuple(i)], r) for i, r in items]).T
        # one affine map for every split (train statistics), scaling by about 1 / std of the targets
        slope, offset = np.polyfit(raw, got, 1)
        np.testing.assert_allclose(got, slope * raw + offset, atol=1e-5)
        assert slope == pytest.approx(1 / y.std(), rel=0.1) and offset == pytest.approx(-y.mean() / y.std(), abs=0.1)
        assert split != "train" or abs(got.mean()) < 0.2


def test_diabetes_too_many_pairs_for_a_split():
    with pytest.raises(ConfigError, match=r"asks for 3000 val pairs, but the 66 val items form only \d+ .*n_pairs"):
        PreferenceFromDataset(n_pairs=20000).load()


# --- config errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (SyntheticPreference, {"temperature": 0}, "task.temperature must be > 0, got 0"),
        (SyntheticPreference, {"temperature": -1.0}, "task.temperature must be > 0"),
        (SyntheticPreference, {"nonlinearity": "cubic"}, "task.nonlinearity must be one of linear, quadratic, mlp"),
        (SyntheticPreference, {"pair_flip": 1.0}, r"task.pair_flip must be in \[0, 1\), got 1.0"),
        (SyntheticPreference, {"pair_flip": -0.1}, r"task.pair_flip must be in \[0, 1\)"),
        (SyntheticPreference, {"n_pairs": 0}, "task.n_pairs must be an integer >= 1, got 0"),
        (SyntheticPreference, {"n_pairs": 3}, "too few rows to split: 3 rows"),
        (SyntheticPreference, {"dim": 0}, "task.dim must be an integer >= 1"),
        (SyntheticPreference, {"standardize": "yes"}, "task.standardize must be true or false"),
        (SyntheticPreference, {"corrupt_val": 1}, "task.corrupt_val must be true or false"),
        (SyntheticPreference, {"val_fraction": 0.0}, r"task.val_fraction must be in \(0, 1\)"),
        (PreferenceFromDataset, {"dataset": "wine"}, "task.dataset must be one of diabetes, got 'wine'"),
        (PreferenceFromDataset, {"n_pairs": 2.5}, "task.n_pairs must be an integer >= 1"),
    ],
)
def test_config_errors(cls, kw, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kw)


@pytest.mark.parametrize("cls", [SyntheticPreference, PreferenceFromDataset, PreferenceFile])
def test_only_pair_options_are_accepted(cls):
    params = set(accepted_parameters(cls))
    assert {"pair_flip", "corrupt_val", "split_seed", "batch_size"} <= params
    assert not params & {"label_noise", "noise_type", "outlier_fraction", "outlier_scale", "standardize_target"}
    assert ("standardize" in params) == (cls is not PreferenceFile)  # tokens are not standardised


# --- preference_file -------------------------------------------------------------------------------------------------

ROWS = [{"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(40)]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def decoded_pairs(task: Task) -> set[tuple[str, str]]:
    return {(tokenizer.decode(p[0]), tokenizer.decode(p[1])) for k in SPLITS for p in task.load()[k].x}


def test_file_jsonl_happy_path(tmp_path):
    task = PreferenceFile(path=write_jsonl(tmp_path / "prefs.jsonl", ROWS), max_length=64)
    s = task.load()
    assert [len(s[k]) for k in SPLITS] == [28, 6, 6]
    assert s["train"].x.shape == (28, 2, 64) and s["train"].x.dtype == torch.int64
    assert s["train"].y.shape == (28, 2) and bool(s["train"].y.isnan().all())
    assert task.info == TaskInfo("prefs", PAIR, 64, None, TOKENS, False)
    # chosen is index 0: prompt then response, in the tokenizer's layout
    assert decoded_pairs(task) == {(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in ROWS}
    first = s["test"].x[0, 0].tolist()
    assert first[0] == tokenizer.BOS and tokenizer.SEP in first and tokenizer.EOS in first


def test_file_csv_without_prompt_custom_columns_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"better": [r["chosen"] for r in ROWS], "worse": ["nan", *[r["rejected"] for r in ROWS[1:]]]}).to_csv(
        "p.csv", index=False
    )
    task = PreferenceFile(path="p.csv", prompt_column=None, chosen_column="better", rejected_column="worse",
                          max_length=16, pair_flip=0.2, split_seed=1)
    monkeypatch.chdir("/")  # resolved at construction
    s = task.load()
    assert s["val"].x.shape == (6, 2, 16) and tokenizer.SEP not in s["val"].x.flatten().tolist()
    clean = decoded_pairs(PreferenceFile(path=str(tmp_path / "p.csv"), prompt_column=None, chosen_column="better",
                                         rejected_column="worse", max_length=16, split_seed=1))
    assert ("good answer 0", "nan") in clean  # "nan" is text, not a missing value
    assert {frozenset(p) for p in decoded_pairs(task)} == {frozenset(p) for p in clean}
    assert decoded_pairs(task) != clean  # some train/val pairs flipped


def test_file_pairs_of_one_prompt_stay_in_one_split(tmp_path):
    # 30 prompts with 1 to 6 response pairs each, as in public preference sets: no prompt in two splits.
    rows = [{"prompt": f"question {p}?", "chosen": f"good answer {p}.{k}", "rejected": f"bad {p}.{k}"}
            for p in range(30) for k in range(1 + p % 6)]
    task = PreferenceFile(path=write_jsonl(tmp_path / "multi.jsonl", rows), max_length=48)
    prompt_of = {r["prompt"] + r["chosen"]: r["prompt"] for r in rows}
    splits = task.load()
    prompts = {k: {prompt_of[tokenizer.decode(p[0])] for p in splits[k].x} for k in SPLITS}
    assert all(prompts[k] for k in SPLITS)
    assert not (prompts["train"] & prompts["val"] or prompts["train"] & prompts["test"] or
                prompts["val"] & prompts["test"])
    # Sizes follow the fractions up to one prompt's rows (at most 6).
    sizes = [len(splits[k]) for k in SPLITS]
    assert sum(sizes) == len(rows) and all(abs(n - want) <= 6 for n, want in zip(sizes, task.split_sizes(len(rows))))
    # Every pair is there once, and another seed gives another grouping.
    assert len(decoded_pairs(task)) == len(rows)
    other = PreferenceFile(path=str(tmp_path / "multi.jsonl"), max_length=48, split_seed=1).load()
    assert {prompt_of[tokenizer.decode(p[0])] for p in other["test"].x} != prompts["test"]


def test_file_with_too_few_prompts_for_three_splits(tmp_path):
    rows = [{"prompt": f"q{i % 2}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(40)]
    task = PreferenceFile(path=write_jsonl(tmp_path / "two.jsonl", rows))
    with pytest.raises(DataError, match=r"two\.jsonl: the 40 rows have 2 distinct prompts, too few to give train, "
                                        r"val and test each their own prompts"):
        task.load()


def test_file_csv_with_a_repeated_column_is_refused(tmp_path):
    (tmp_path / "dup.csv").write_text("prompt,chosen,chosen,rejected\n" + "q,a,b,c\n" * 10)
    with pytest.raises(DataError, match=r"column name\(s\) 'chosen' appear more than once"):
        PreferenceFile(path=str(tmp_path / "dup.csv")).load()


def test_file_parquet(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    assert PreferenceFile(path=str(tmp_path / "p.parquet")).info.input_dim == 128


def write(tmp_path: Path, text: str, name: str = "bad.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize(
    "name, text, kw, match",
    [
        ("bad.jsonl", "", {}, r"bad\.jsonl: the file is empty"),
        ("bad.jsonl", "\n  \n", {}, r"bad\.jsonl: the file is empty"),
        ("bad.csv", "", {}, r"bad\.csv: the file is empty"),
        ("bad.csv", "prompt,chosen,rejected\n", {}, r"bad\.csv: the file has no rows \(columns: prompt, chosen"),
        ("bad.jsonl", jsonl(ROWS[:3]) + "{oops\n", {}, r"bad\.jsonl: line 4 is not valid JSON"),
        ("bad.json", '[{"chosen": "a",\n', {}, r"line 1 is not valid JSON.*JSON array is not supported"),
        ("bad.jsonl", jsonl(ROWS[:2]) + "[1, 2]\n", {}, r"line 3 must be a JSON object \{\.\.\.\}, got list"),
        ("bad.jsonl", jsonl([{"prompt": "p", "good": "a", "rejected": "b"}]), {},
         r"chosen column 'chosen' not found; available columns: prompt, good, rejected"),
        ("bad.csv", "q,chosen,rejected\nx,a,b\n", {},
         r"bad\.csv: prompt column 'prompt' not found; available columns: q, chosen, rejected"),
        ("bad.jsonl", jsonl(ROWS[:5] + [{"prompt": "p", "chosen": "  ", "rejected": "b"}]), {},
         r"chosen column 'chosen' has 1 empty values .*in line 6"),
        ("bad.jsonl", jsonl(ROWS[:5] + [{"prompt": "p", "rejected": "b"}]), {},
         r"chosen column 'chosen' has 1 empty values .*in line 6"),
        ("bad.csv", "prompt,chosen,rejected\nx,a,b\n,a,c\n", {},
         r"bad\.csv: prompt column 'prompt' has 1 empty values .*in data row 2; set task.prompt_column: null"),
        ("bad.jsonl", jsonl(ROWS[:5] + [{"prompt": "p", "chosen": 3, "rejected": "b"}]), {},
         r"chosen column 'chosen' holds 3 \(int\) in line 6, not text"),
        ("bad.jsonl", jsonl(ROWS[:2] + [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 2), {},
         r"bad\.jsonl: 2 rows have identical chosen and rejected text, e.g. line 3"),
        ("bad.jsonl", jsonl(ROWS[:2]), {}, r"bad\.jsonl: too few rows to split: 2 rows"),
    ],
)
def test_file_data_errors(tmp_path, name, text, kw, match):
    task = PreferenceFile(path=write(tmp_path, text, name), **kw)
    with pytest.raises(DataError, match=match):
        task.load()


def test_file_path_and_config_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found .*relative paths resolve against"):
        PreferenceFile(path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"x\.txt: unknown file extension '\.txt'; valid: \.jsonl, \.json, \.csv"):
        PreferenceFile(path=write(tmp_path, "", "x.txt"))
    with pytest.raises(DataError, match=r"could not be read as parquet"):
        PreferenceFile(path=write(tmp_path, "not parquet", "x.parquet")).load()
    ok = write(tmp_path, jsonl(ROWS))
    for kw, match in [
        ({"max_length": 3}, "task.max_length must be an integer >= 4, got 3"),
        ({"prompt_column": ""}, "task.prompt_column must be a column name or null"),
        ({"chosen_column": None}, "task.chosen_column must be a column name"),
        ({"rejected_column": "chosen"}, "must differ"),
        ({"path": ""}, "task.path must be a file path"),
    ]:
        with pytest.raises(ConfigError, match=match):
            PreferenceFile(**{"path": ok, **kw})


# --- tokenizer -------------------------------------------------------------------------------------------------------


def test_tokenizer_ids_and_round_trip():
    assert tokenizer.VOCAB_SIZE == 260 and (tokenizer.PAD, tokenizer.BOS, tokenizer.SEP, tokenizer.EOS) == (0, 1, 2, 3)
    assert tokenizer.encode("Ab", 10) == [1, ord("A") + 4, ord("b") + 4, 3]
    text = "héllo, wörld ✓ 你好"
    ids = tokenizer.encode(text, 256)
    assert tokenizer.decode(ids) == text and max(ids) < tokenizer.VOCAB_SIZE
    assert tokenizer.encode_pair_item("Q", "A", 8) == [1, ord("Q") + 4, 2, ord("A") + 4, 3]
    assert tokenizer.encode_pair_item(None, "A", 8) == [1, ord("A") + 4, 3]


def test_tokenizer_truncation_keeps_the_response():
    assert tokenizer.decode(tokenizer.encode("abcdefgh", 6)) == "abcd"  # a single text keeps its start
    ids = tokenizer.encode_pair_item("0123456789", "xyz", 10)  # bos + 4 prompt + sep + xyz + eos
    assert len(ids) == 10 and tokenizer.decode(ids) == "6789xyz"  # prompt keeps its end, next to the response
    ids = tokenizer.encode_pair_item("prompt", "a long response", 8)
    assert ids[:2] == [tokenizer.BOS, tokenizer.SEP] and tokenizer.decode(ids) == "a lon"  # prompt gone first
    assert tokenizer.decode(tokenizer.encode_pair_item(None, "abcdef", 5)) == "abc"
    for max_length in (4, 5, 17):
        assert len(tokenizer.encode_pair_item("p" * 50, "r" * 50, max_length)) == max_length


def test_batch_encode_pads_to_max_length():
    out = tokenizer.batch_encode(["a", "bcd"], 8, prompts=["p", None])
    assert out.dtype == torch.int64 and out.shape == (2, 8)
    p, a, b, c, d = (ord(ch) + 4 for ch in "pabcd")
    assert out.tolist() == [[1, p, 2, a, 3, 0, 0, 0], [1, b, c, d, 3, 0, 0, 0]]
    with pytest.raises(ConfigError, match="max_length must be an integer >= 4, got 3"):
        tokenizer.encode("a", 3)
    with pytest.raises(ValueError, match="1 prompts for 2 responses"):
        tokenizer.batch_encode(["a", "b"], 8, prompts=["p"])


# --- text model ------------------------------------------------------------------------------------------------------


def test_text_transformer_shapes_and_pair_head():
    torch.manual_seed(0)
    net = TextTransformer(input_dim=16, output_dim=3, width=32, depth=1, heads=4)
    ids = tokenizer.batch_encode(["hello", "a"], 16)
    assert net(ids).shape == (2, 3) and TextTransformer.input_types == ("tokens",)
    head = KindHead(TextTransformer(input_dim=16, output_dim=1, width=32, depth=1, heads=2), PAIR)
    pairs = torch.stack([ids, ids.flip(0)], dim=1)  # (2, 2, 16)
    scores = head(pairs)
    assert scores.shape == (2, 2) and torch.allclose(scores[:, 0], scores.flip(0)[:, 1])


def test_text_transformer_score_ignores_padding():
    torch.manual_seed(0)
    net = TextTransformer(input_dim=40, output_dim=1, width=32, depth=2, heads=4).eval()
    short = tokenizer.batch_encode(["hi there", "x"], 12, prompts=["q", "question"])
    long = F.pad(short, (0, 28))  # 28 more pad ids
    torch.testing.assert_close(net(short), net(long), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(net(short)[0], net(short)[1])  # and the content does matter
    assert torch.isfinite(net(torch.zeros(1, 8, dtype=torch.long))).all()  # an all-pad row stays finite


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"width": 30, "heads": 4}, r"model.width \(30\) must be divisible by model.heads \(4\)"),
        ({"depth": 0}, "model.depth must be an integer >= 1, got 0"),
        ({"heads": 2.0}, "model.heads must be an integer >= 1"),
        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\)"),
        ({"ff_mult": 0}, "model.ff_mult must be an integer >= 1"),
    ],
)
def test_text_transformer_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        TextTransformer(16, 1, **kw)


def test_text_transformer_rejects_too_long_input():
    with pytest.raises(ValueError, match="sequence length 20 exceeds the model's input_dim 16"):
        TextTransformer(16, 1, width=8, heads=2)(torch.ones(1, 20, dtype=torch.long))


# --- losses ----------------------------------------------------------------------------------------------------------

NAN_TARGET = torch.full((3, 2), float("nan"))


def scores(*margins: float) -> torch.Tensor:
    """Pairs (s_c, s_r) = (d + 0.5, 0.5): margin d, non-zero sum (so centring has something to do)."""
    return torch.tensor([[d + 0.5, 0.5] for d in margins])


def test_bradley_terry_golden_and_reference():
    out = scores(1.0, -2.0, 0.0)
    d = torch.tensor([1.0, -2.0, 0.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.31326169, -log sigmoid(-2) = 2.12692801, -log sigmoid(0) = log 2
    assert float(BradleyTerry()(out[:1], NAN_TARGET[:1])) == pytest.approx(0.3132616875, abs=1e-6)
    assert float(BradleyTerry()(out, NAN_TARGET)) == pytest.approx((0.3132616875 + 2.1269280110 + math.log(2)) / 3)
    torch.testing.assert_close(BradleyTerry()(out, NAN_TARGET), -F.logsigmoid(d).mean())
    # margin 0.5 on d=1: log(1 + e^-0.5) = 0.47407698
    assert float(BradleyTerry(margin=0.5)(out[:1], NAN_TARGET[:1])) == pytest.approx(0.4740769842, abs=1e-6)
    # smoothing 0.1 on d=1: 0.9 * 0.31326 + 0.1 * 1.31326 = 0.41326169
    assert float(BradleyTerry(label_smoothing=0.1)(out[:1], NAN_TARGET[:1])) == pytest.approx(0.4132616875, abs=1e-6)
    eps, m = 0.2, 0.3
    ref = ((1 - eps) * -F.logsigmoid(d - m) + eps * -F.logsigmoid(-(d - m))).mean()
    torch.testing.assert_close(BradleyTerry(margin=m, label_smoothing=eps)(out, NAN_TARGET), ref)
    # centring: + coef * mean((s_c + s_r)^2); the sums are 2, -1, 1 -> mean square 2
    got = BradleyTerry(center_rewards_coefficient=0.01)(out, NAN_TARGET)
    torch.testing.assert_close(got, -F.logsigmoid(d).mean() + 0.01 * 2.0)


def test_hinge_log_exp_ipo_golden_and_reference():
    out = scores(0.25, 2.0, -1.0)
    # hinge, margin 1: 0.75, 0, 2
    assert float(MarginRanking()(out, NAN_TARGET)) == pytest.approx((0.75 + 0.0 + 2.0) / 3)
    for margin in (1.0, 0.3):
        ref = F.margin_ranking_loss(out[:, 0], out[:, 1], torch.ones(3), margin=margin)
        torch.testing.assert_close(MarginRanking(margin=margin)(out, NAN_TARGET), ref)
    # log_exp: log(1 + e^0) = log 2; and it is bradley_terry without margin / smoothing
    assert float(LogExp()(scores(0.0), NAN_TARGET[:1])) == pytest.approx(math.log(2))
    torch.testing.assert_close(LogExp()(out, NAN_TARGET), BradleyTerry()(out, NAN_TARGET))
    # ipo, beta 0.1: target gap 5 -> (0.25 - 5)^2, (2 - 5)^2, (-1 - 5)^2
    assert float(IPO()(out, NAN_TARGET)) == pytest.approx((4.75**2 + 9.0 + 36.0) / 3)
    assert float(IPO(beta=0.5)(scores(1.0), NAN_TARGET[:1])) == 0.0


@pytest.mark.parametrize("loss", [BradleyTerry(margin=0.5, label_smoothing=0.1, center_rewards_coefficient=0.01),
                                  MarginRanking(), LogExp(), IPO()], ids=lambda l: type(l).__name__)
def test_pair_losses_are_finite_and_autocast_safe(loss):
    assert loss.accepts == (PAIR,)
    out = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]], requires_grad=True)
    value = loss(out, NAN_TARGET)  # the targets (true rewards, NaN here) are not used
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(out.grad).all()
    layer = torch.nn.Linear(3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = layer(torch.randn(4, 2, 3)).squeeze(-1)
        value = loss(head, torch.zeros(4, 2))
    assert value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (BradleyTerry, {"margin": -0.1}, "bradley_terry: margin must be >= 0, got -0.1"),
        (BradleyTerry, {"label_smoothing": 0.5}, r"bradley_terry: label_smoothing must be in \[0, 0.5\), got 0.5"),
        (BradleyTerry, {"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 0.5\)"),
        (BradleyTerry, {"center_rewards_coefficient": -1}, "center_rewards_coefficient must be >= 0"),
        (BradleyTerry, {"margin": "1"}, "bradley_terry: margin must be a number"),
        (MarginRanking, {"margin": 0}, "hinge: margin must be > 0, got 0.0"),
        (IPO, {"beta": 0}, "ipo: beta must be > 0, got 0.0"),
        (IPO, {"beta": float("inf")}, "ipo: beta must be finite"),
    ],
)
def test_loss_config_errors(cls, kw, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kw)


# --- rewards ---------------------------------------------------------------------------------------------------------

BATCHES = (100, 250, 37, 213)
INFO = TaskInfo("toy", PAIR, 4, true_reward=True)


def pair_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores that mostly, not always, order the pair like the true rewards (chosen first)."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(sum(BATCHES), 2, generator=g)
    true = torch.stack([true.max(1).values, true.min(1).values], dim=1)
    return true + torch.randn(sum(BATCHES), 2, generator=g), true


def accumulate(metric, output: torch.Tensor, target: torch.Tensor) -> float:
    for out, tgt in zip(output.split(BATCHES), target.split(BATCHES), strict=True):
        metric.update(out, tgt)
    return float(metric.compute())


def pair_ece_reference(d: np.ndarray, n_bins: int) -> float:
    p = 1 / (1 + np.exp(-d))
    conf, correct = np.maximum(p, 1 - p), (p >= 0.5).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
               for b in range(n_bins) if (bins == b).any())


def test_rewards_match_references():
    out, true = pair_data()
    d = (out[:, 0] - out[:, 1]).double().numpy()
    assert accumulate(PreferenceAccuracy().metric(INFO), out, true) == pytest.approx((d > 0).mean(), abs=1e-6)
    assert accumulate(RewardMargin().metric(INFO), out, true) == pytest.approx(d.mean(), abs=1e-5)
    want = spearmanr(out.flatten().numpy(), true.flatten().numpy()).statistic
    assert accumulate(TrueRewardSpearman().metric(INFO), out, true) == pytest.approx(want, abs=1e-5)
    for n_bins in (15, 7):
        got = accumulate(PreferenceNegECE(n_bins=n_bins).metric(INFO), out, true)
        assert got == pytest.approx(-pair_ece_reference(d, n_bins), abs=1e-5)


def test_preference_rewards_golden_values():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])  # margins 2, -1, 0 (a tie: wrong), 3
    nan = torch.full((4, 2), float("nan"))
    metric = PreferenceAccuracy().metric(INFO)
    metric.update(out[:2], nan[:2])
    metric.update(out[2:], nan[2:])
    assert float(metric.compute()) == 0.5
    assert RewardMargin().per_sample(out, nan).tolist() == [2.0, -1.0, 0.0, 3.0]
    # ECE, 2 bins [0, .5) [.5, 1]: every confidence max(p, 1-p) >= 0.5 -> one bin; accuracy 3/4 (the tie predicts
    # chosen), mean confidence (s(2) + s(1) + 0.5 + s(3)) / 4
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    metric = PreferenceNegECE(n_bins=2).metric(INFO)
    metric.update(out, nan)
    assert float(metric.compute()) == pytest.approx(-abs(0.75 - (sig(2) + sig(1) + 0.5 + sig(3)) / 4), abs=1e-6)


@pytest.mark.parametrize("reward_cls", [PreferenceAccuracy, RewardMargin])
def test_per_sample_mean_is_the_aggregate(reward_cls):
    reward = reward_cls()
    out, true = pair_data(1)
    assert reward.has_per_sample and reward.accepts == (PAIR, SEQUENCE_PAIR)
    per_sample = reward.per_sample(out, true)
    assert per_sample.shape == (len(out),)
    assert float(per_sample.mean()) == pytest.approx(accumulate(reward.metric(INFO), out, true), abs=1e-5)


@pytest.mark.parametrize("reward_cls", [TrueRewardSpearman, PreferenceNegECE])
def test_aggregate_only(reward_cls):
    reward = reward_cls()
    assert not reward.has_per_sample
    with pytest.raises(NotImplementedError):
        reward.per_sample(torch.zeros(2, 2), torch.zeros(2, 2))


def test_true_reward_spearman_needs_a_task_with_true_rewards():
    no_truth = TaskInfo("prefs", PAIR, 128, input_type=TOKENS, true_reward=False)
    for call in (TrueRewardSpearman().check_task, TrueRewardSpearman().metric):
        with pytest.raises(IncompatibleError, match="task=prefs does not.*Tasks with true rewards: "
                                                    "diabetes_preference, review_preference, synthetic_preference"):
            call(no_truth)
    TrueRewardSpearman().check_task(INFO)
    for reward in (PreferenceAccuracy(), RewardMargin(), PreferenceNegECE()):  # these need no true rewards
        reward.check_task(no_truth)


def test_neg_ece_n_bins_validated():
    for n_bins in (0, 2.5, True, None):
        with pytest.raises(ConfigError, match="n_bins must be an integer >= 1"):
            PreferenceNegECE(n_bins=n_bins)


class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("update() read a device value back to the host")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reward_cls", [PreferenceAccuracy, RewardMargin, TrueRewardSpearman, PreferenceNegECE])
def test_rewards_never_sync_pickle_and_reset(reward_cls):
    out, true = pair_data()
    metric = reward_cls().metric(INFO).to("meta")
    with _NoHostReads():
        for _ in range(2):
            metric.update(out[:16].to("meta"), true[:16].to("meta"))
    fresh = accumulate(reward_cls().metric(INFO), out, true)
    metric = pickle.loads(pickle.dumps(reward_cls().metric(INFO)))
    metric.update(out[:50] * 3, true[:50])
    metric.reset()
    assert accumulate(metric, out, true) == pytest.approx(fresh, abs=1e-6)
    assert accumulate(reward_cls().metric(INFO), out.double(), true.double()) == pytest.approx(fresh, abs=1e-5)


# --- YAMLs and one end-to-end check -----------------------------------------------------------------------------------

MINE = {
    "task": ["synthetic_preference", "diabetes_preference", "preference_file"],
    "loss": ["bradley_terry", "hinge", "log_exp", "ipo"],
    "reward": ["preference_accuracy", "reward_margin", "true_reward_spearman", "preference_neg_ece"],
    "model": ["text_transformer"],
}


@pytest.mark.parametrize("group, name", [(g, n) for g, names in MINE.items() for n in names])
def test_yaml_keys_are_parameters_with_matching_defaults(group, name):
    path = CONF / group / f"{name}.yaml"
    assert path.read_text().startswith(f"name: {name}\n_target_: rmlab.")
    cfg = OmegaConf.load(path)
    cls = instantiate({"_target_": "hydra.utils.get_class", "path": cfg._target_})
    params = {}
    for klass in reversed(cls.__mro__):  # the parameters the constructor reaches through **common
        if "__init__" in vars(klass) and klass is not object:
            params.update(inspect.signature(klass.__init__).parameters)
    accepted = set(accepted_parameters(cls))
    for key in cfg:
        if key in ("_target_", "name"):
            continue
        assert key in accepted, f"{name}.yaml: {key} is not an option of {cls.__name__}"
        default = params[key].default
        if key != "split_seed" and default is not inspect.Parameter.empty:
            assert cfg[key] == default, f"{name}.yaml: {key}={cfg[key]!r} but the code default is {default!r}"
        elif key == "split_seed":
            assert OmegaConf.to_container(cfg)[key] == "${seed}"


@pytest.mark.parametrize("name", ["synthetic_preference", "diabetes_preference"])
def test_task_yamls_load(name):
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / f"{name}.yaml"), "seed": 5}).task
    task = instantiate(cfg)
    assert task.split_seed == 5 and task.name == name and task.info.output_kind == PAIR


def test_preference_file_yaml(tmp_path):
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF / "task" / "preference_file.yaml"), "seed": 0}).task
    assert OmegaConf.is_missing(cfg, "path")
    cfg.path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    task = instantiate(cfg)
    assert task.info == TaskInfo("preference_file", PAIR, 128, None, TOKENS, False)


def test_bradley_terry_recovers_a_linear_reward():
    """The contract end to end: a linear scorer under KindHead, trained by BT on noisy pairs, ranks the clean test
    pairs and orders all items like the hidden reward."""
    torch.manual_seed(0)
    s = SyntheticPreference(n_pairs=2000, dim=8, temperature=0.5, pair_flip=0.1).load()
    model = KindHead(MLP(8, 1, hidden_sizes=[]), PAIR)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # Adam's first step costs ~1 s here
    loss_fn = BradleyTerry()
    x, y = s["train"].x, s["train"].y
    for step in range(150):
        batch = slice((step * 128) % len(x), (step * 128) % len(x) + 128)
        opt.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        opt.step()
    with torch.no_grad():
        out = model(s["test"].x)
    test_info = TaskInfo("synthetic_preference", PAIR, 8, true_reward=True)
    spearman = TrueRewardSpearman().metric(test_info)
    spearman.update(out, s["test"].y)
    assert float(spearman.compute()) > 0.95
    clean_order = (s["test"].y[:, 0] > s["test"].y[:, 1]).float().mean()
    assert float(PreferenceAccuracy().per_sample(out, s["test"].y).mean()) > 0.9 * float(clean_order)


def test_a_prompt_that_fits_is_kept_whole():
    # A prompt shorter than the room left by the response, but longer than half of it, once lost its first bytes.
    ids = tokenizer.encode_pair_item("question 27?", "a good answer 6", 40)
    assert tokenizer.decode(ids) == "question 27?a good answer 6" and len(ids) == 3 + 12 + 15
    for length in range(1, 30):
        prompt = "p" * length
        assert tokenizer.decode(tokenizer.encode_pair_item(prompt, "r", 40)) == prompt[-36:] + "r"
