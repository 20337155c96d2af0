"""Sequence tasks: every config builds, is deterministic per seed and keeps each prompt in one split; corruption only
on train (and val); each task's examples are right by an independent check and its verifier accepts right answers
and rejects wrong ones; every bad knob and bad file is a one-line error naming it."""

import inspect
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from rmlab.build import accepted_parameters, instantiate
from rmlab.errors import ConfigError, DataError
from rmlab.kinds import SEQUENCE, TEXT
from rmlab.tasks.sequence import (
    Addition,
    CompletionFile,
    Copy,
    Dialogue,
    QuestionAnswering,
    Reverse,
    Sort,
    Summarisation,
    TextClassification,
    TextClassificationFile,
    Translation,
    words,
)
from rmlab.tasks.sequence.dialogue import INTENTS
from rmlab.tasks.sequence.sentiment import TEMPLATES

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
YAMLS = sorted(p.stem for p in CONF.glob("*.yaml") if OmegaConf.load(p)._target_.startswith("rmlab.tasks.sequence."))
FILE_TASKS = ("completion_file", "text_classification_file")
LABELLED = ("text_classification", "text_classification_file")
NO_VERIFIER = ("completion_file", "review_writing")  # review_writing has no one right answer: a gold reward instead
HAS_REASONING_GYM = __import__("importlib").util.find_spec("reasoning_gym") is not None
# Small sizes keep every per-task test fast; the defaults are checked once (test_default_sizes).
SMALL = {"n_examples": 300}


def write_completions(path: Path, n: int = 120) -> Path:
    """A JSONL SFT set whose prompts repeat (a prompt with several completions), so grouping by prompt matters."""
    rows = [{"prompt": f"question {i % (n // 3)}?\n", "completion": f"answer {i}", "extra": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_labelled(path: Path, n: int = 120) -> Path:
    labels = ["ham", "spam", "eggs"]
    frame = pd.DataFrame({"text": [f"message {i % (n // 2)}" for i in range(n)],
                          "label": [labels[i % 3] for i in range(n)]})
    frame.to_csv(path, index=False)
    return path


def task_cfg(name: str, tmp_path: Path, seed: int = 0, **overrides):
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF / f"{name}.yaml"), "seed": seed})
    if name == "completion_file":
        cfg.task.path = str(write_completions(tmp_path / "sft.jsonl"))
    elif name == "text_classification_file":
        cfg.task.path = str(write_labelled(tmp_path / "labelled.csv"))
    elif name == "reasoning_gym":
        if not HAS_REASONING_GYM:
            pytest.skip("reasoning-gym is not installed (pip install 'rmlab[reasoning]')")
        cfg.task.dataset = "spell_backward"
    if "n_examples" in cfg.task:
        cfg.task.n_examples = SMALL["n_examples"]
    for key, value in overrides.items():
        cfg.task[key] = value
    return cfg.task


def build(name: str, tmp_path: Path, seed: int = 0, **overrides):
    return instantiate("task", task_cfg(name, tmp_path, seed, **overrides))


def flat(splits):
    return {k: [(e.prompt, e.completion) for e in v] for k, v in splits.items()}


# --- every config ----------------------------------------------------------------------------------------------------


def test_the_issue_tasks_ship():
    assert {"copy", "reverse", "sort", "addition", "reasoning_gym", "text_classification", "qa", "translation",
            "summarisation", "dialogue", "completion_file", "text_classification_file", "review_writing"} == set(YAMLS)


@pytest.mark.parametrize("name", YAMLS)
def test_config_builds_a_deterministic_task(name, tmp_path):
    task = build(name, tmp_path, seed=3)
    assert task.name == name and task.split_seed == 3
    info = task.info
    assert info.output_kind == SEQUENCE and info.input_type == TEXT
    assert (info.labels is not None) == (name in LABELLED)
    assert (info.verifier is not None) == (name not in NO_VERIFIER)
    assert (info.gold is not None) == (name == "review_writing")
    splits = task.load()
    assert all(splits[k] for k in ("train", "val", "test"))
    assert flat(build(name, tmp_path, seed=3).load()) == flat(splits)
    other = flat(build(name, tmp_path, seed=4).load())
    assert other != flat(splits)  # another split seed moves examples between splits...
    every = lambda s: Counter(e for v in s.values() for e in v)
    assert every(other) == every(flat(splits))  # ...of the same dataset


@pytest.mark.parametrize("name", YAMLS)
def test_no_prompt_is_in_two_splits(name, tmp_path):
    for seed in range(3):
        splits = build(name, tmp_path, seed=seed).load()
        prompts = {k: {e.prompt for e in v} for k, v in splits.items()}
        assert not prompts["train"] & prompts["val"] and not prompts["train"] & prompts["test"]
        assert not prompts["val"] & prompts["test"]


def test_file_prompts_with_several_completions_stay_together(tmp_path):
    splits = build("completion_file", tmp_path).load()
    by_prompt = Counter(e.prompt for v in splits.values() for e in v)
    assert set(by_prompt.values()) == {3} and sum(by_prompt.values()) == 120


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_keys_are_parameters_with_matching_defaults(name):
    """No dead options: every key is a constructor parameter (through the base classes), with the code's default."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cls = get_class(cfg._target_)
    assert list(cfg)[:2] == ["name", "_target_"] and cfg.name == name
    params = accepted_parameters(cls)
    defaults = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            defaults.update({p.name: p.default for p in inspect.signature(klass.__init__).parameters.values()})
    for key in cfg:
        if key in ("_target_", "name"):
            continue
        assert key in params, f"{name}.yaml: {key} is not a parameter of {cls.__name__}"
        if key != "split_seed" and defaults[key] is not inspect.Parameter.empty:
            assert cfg[key] == defaults[key], f"{name}.yaml: {key}={cfg[key]!r}, code default {defaults[key]!r}"
    # Every parameter is in the YAML (documented there), except the noise a labelled task refuses.
    missing = set(params) - set(cfg) - {"name"} - ({"completion_noise"} if name in LABELLED else set())
    assert not missing, f"{name}.yaml lacks {missing}"


@pytest.mark.parametrize("name", [n for n in YAMLS if n not in FILE_TASKS and n != "reasoning_gym"])
def test_default_sizes_fit_a_small_byte_level_lm(name, tmp_path):
    task = instantiate("task", OmegaConf.create({"t": OmegaConf.load(CONF / f"{name}.yaml"), "seed": 0}).t)
    examples = [e for split in task.load().values() for e in split]
    assert len(examples) == task.n_examples <= 2000
    assert max(len((e.prompt + e.completion).encode()) for e in examples) <= 256


def test_data_seed_changes_the_data_and_split_seed_does_not():
    a, b = Reverse(n_examples=100, data_seed=0), Reverse(n_examples=100, data_seed=1)
    prompts = lambda t: {e.prompt for v in t.load().values() for e in v}
    assert prompts(a) != prompts(b)
    assert prompts(Reverse(n_examples=100, data_seed=0, split_seed=5)) == prompts(a)


def test_sequence_tasks_import_neither_lightning_nor_mlflow_nor_pandas():
    heavy = ("pytorch_lightning", "lightning", "mlflow", "sklearn", "pandas", "reasoning_gym")
    code = f"import sys, rmlab.tasks.sequence; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- corruption: train and val only -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in YAMLS if n not in LABELLED])
def test_completion_noise_corrupts_train_and_val_only(name, tmp_path):
    clean = build(name, tmp_path).load()
    noisy = build(name, tmp_path, completion_noise=0.3).load()
    only_train = build(name, tmp_path, completion_noise=0.3, corrupt_val=False).load()
    for split in ("train", "val", "test"):  # the same prompts in each split, whatever the noise
        assert [e.prompt for e in noisy[split]] == [e.prompt for e in clean[split]]
    assert noisy["test"] == clean["test"] and only_train["test"] == clean["test"]
    assert only_train["val"] == clean["val"] and only_train["train"] == noisy["train"]
    for split in ("train", "val"):
        changed = [(c, n) for c, n in zip(clean[split], noisy[split]) if c != n]
        for c, n in changed:
            assert n.completion != c.completion and n.meta["clean"] == c.completion
            assert n.completion in {e.completion for e in clean[split]}  # another example's completion
        if split == "train":
            assert 0.2 < len(changed) / len(clean[split]) < 0.4
        else:
            assert changed


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize("noise_type", ["symmetric", "asymmetric"])
def test_label_noise_corrupts_train_and_val_only(name, noise_type, tmp_path):
    task = build(name, tmp_path, label_noise=0.3, noise_type=noise_type)
    noisy, clean = task.load(), build(name, tmp_path).load()
    labels = task.info.labels
    assert noisy["test"] == clean["test"]
    assert build(name, tmp_path, label_noise=0.3, corrupt_val=False).load()["val"] == clean["val"]
    for split in ("train", "val"):
        changed = [(c, n) for c, n in zip(clean[split], noisy[split]) if c != n]
        assert changed
        for c, n in changed:
            assert n.prompt == c.prompt and n.completion in labels and n.completion != c.completion
            assert n.meta["clean"] == n.meta["label"] == c.completion
            if noise_type == "asymmetric":
                assert labels.index(n.completion) == (labels.index(c.completion) + 1) % len(labels)
    share = sum(c != n for c, n in zip(clean["train"], noisy["train"])) / len(clean["train"])
    assert 0.2 < share < 0.4


@pytest.mark.parametrize("name", LABELLED)
def test_classification_refuses_completion_noise(name, tmp_path):
    with pytest.raises(ConfigError, match=r"task.completion_noise must be 0 on a text classification task, got 0.1; "
                                          r"corrupt labels with task.label_noise"):
        build(name, tmp_path, completion_noise=0.1)


# --- verifiers: right answers pass, wrong ones fail ----------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in YAMLS if n not in NO_VERIFIER])
def test_verifier_accepts_the_answer_and_rejects_others(name, tmp_path):
    task = build(name, tmp_path)
    verify = task.info.verifier
    examples = task.load()["test"]
    assert all(verify(e.completion, e) == 1.0 for e in examples)
    assert all(verify(f"  {e.completion}\n", e) == 1.0 for e in examples)
    for e, other in zip(examples, examples[1:] + examples[:1]):
        if other.completion.strip().lower() != e.completion.strip().lower():
            assert verify(other.completion, e) < 1.0
    assert all(verify("", e) == 0.0 for e in examples)


def test_addition_is_verified_numerically():
    task = Addition(n_examples=50)
    e = next(e for e in task.load()["train"] if e.meta["answer"] >= 10)
    answer = e.meta["answer"]
    assert e.completion == str(answer) and e.prompt.endswith("=")
    assert eval(e.prompt[:-1]) == answer  # the prompt is the sum it asks for
    right = [f"0{answer}", f"+{answer}", f" {answer} "]
    wrong = [f"{answer + 1}", f"{answer}.0", f"{str(answer)[0]} {str(answer)[1:]}", f"{answer}x", "", "-", "1e3"]
    assert [task.verify(c, e) for c in right] == [1.0] * 3
    assert [task.verify(c, e) for c in wrong] == [0.0] * len(wrong)


def test_addition_handles_long_operands():
    task = Addition(min_digits=25, max_digits=25, n_operands=3, n_examples=20)
    for e in task.load()["train"]:
        operands = [int(x) for x in e.prompt[:-1].split("+")]
        assert len(operands) == 3 and all(len(str(x)) == 25 for x in operands)
        assert int(e.completion) == sum(operands)


def test_string_tasks_compute_their_answers():
    for cls, answer in ((Copy, lambda s: s), (Reverse, lambda s: s[::-1]), (Sort, lambda s: "".join(sorted(s)))):
        task = cls(n_examples=200, min_length=2, max_length=6, alphabet="abcxyz")
        for e in task.load()["train"]:
            text = e.prompt[:-1]
            assert e.prompt.endswith("=") and 2 <= len(text) <= 6 and set(text) <= set("abcxyz")
            assert e.completion == answer(text)
    # sort follows the alphabet's order, not the code points'
    task = Sort(n_examples=20, alphabet="zyx", min_length=3, max_length=3)
    assert all(e.completion == "".join(sorted(e.prompt[:-1], reverse=True)) for e in task.load()["train"])


def test_sentiment_labels_follow_the_lexicon_and_negation():
    task = TextClassification(n_examples=500, negation=0.5, neutral=True)
    polarity = {**{w: "positive" for w in words.POSITIVE}, **{w: "negative" for w in words.NEGATIVE},
                **{w: "neutral" for w in words.NEUTRAL}}
    flip = {"positive": "negative", "negative": "positive", "neutral": "neutral"}
    negated = 0
    for e in task.load()["train"]:
        text = re.fullmatch(r"review: (.*)\nsentiment: ", e.prompt).group(1)
        (adjective,) = [w for w in text.split() if w in polarity]
        is_negated = " not " in f" {text} "
        negated += is_negated
        assert e.completion == (flip[polarity[adjective]] if is_negated else polarity[adjective])
    assert 0.4 < negated / len(task.load()["train"]) < 0.6
    assert TextClassification(n_examples=50).labels == ("negative", "positive")
    assert len(TEMPLATES) >= 5


def test_qa_answers_are_extracted_from_the_context():
    task = QuestionAnswering(n_examples=300, n_facts=4, n_relations=2)
    for e in task.load()["train"]:
        context, question = re.fullmatch(r"context: (.*)\nquestion: (.*)\nanswer: ", e.prompt).groups()
        name = next(n for n in words.NAMES if re.search(rf"\b{n}\b", question))
        facts = [s for s in re.split(r"(?<=\.) ", context) if s.startswith(name + " ")]
        assert len(re.split(r"(?<=\.) ", context)) == 4
        assert any(re.search(rf"\b{re.escape(e.completion)}\b", fact) for fact in facts)
        kind = "lives in" if question.startswith("Where") else "works as"
        assert any(kind in fact and fact.rstrip(".").endswith(e.completion) for fact in facts)


def test_translation_reads_back_to_the_english():
    """Parse each toy sentence with the inverse vocabulary and the toy grammar: it must give the English back."""
    task = Translation(n_examples=500, max_adjectives=2, adverb_rate=0.5)
    inverse = {v: k for table in (words.TOY_NOUNS, words.TOY_ADJECTIVES, words.TOY_VERBS, words.TOY_ADVERBS)
               for k, v in table.items()}
    assert len(inverse) == sum(map(len, (words.TOY_NOUNS, words.TOY_ADJECTIVES, words.TOY_VERBS, words.TOY_ADVERBS)))
    assert not {words.TOY_SUBJECT, words.TOY_OBJECT} & set(inverse)
    for e in task.load()["train"]:
        toy = e.completion.split()
        s, o = toy.index(words.TOY_SUBJECT), toy.index(words.TOY_OBJECT)
        subject, obj, rest = toy[:s], toy[s + 1:o], toy[o + 1:]
        phrase = lambda np_: ["the", *[inverse[a] for a in np_[1:]], inverse[np_[0]]]
        adverb = [inverse[rest[0]]] if len(rest) == 2 else []
        english = " ".join(phrase(subject) + adverb + [inverse[rest[-1]]] + phrase(obj))
        assert e.prompt == f"english: {english}\ntoy: "
        assert len(subject) <= 3 and len(obj) <= 3


def test_summaries_list_the_key_facts_of_the_passage():
    task = Summarisation(n_examples=200, n_filler=3)
    for e in task.load()["train"]:
        passage = re.fullmatch(r"passage: (.*)\nsummary: ", e.prompt).group(1)
        assert len(re.findall(r"\.( |$)", passage)) == 3 + 3
        who, event, place, day = e.meta["facts"]
        assert all(re.search(rf"\b{f}\b", passage) for f in e.meta["facts"])
        assert e.completion == f"{who} organised {'an' if event[0] in 'aeiou' else 'a'} {event} in {place} on {day}."
    e = task.load()["test"][0]
    who, event, place, day = e.meta["facts"]
    assert task.verify(f"{who} in {place}", e) == 0.5  # partial credit: two facts of four
    assert task.verify(f"{who.lower()} {event} {place.upper()} {day}", e) == 1.0
    ordered = Summarisation(n_examples=20, n_filler=2, shuffle=False).load()["train"]
    assert all(re.match(r"passage: \S+ organised|passage: The \w+ was organised", e.prompt) for e in ordered)


def test_dialogue_replies_to_the_last_user_turn():
    task = Dialogue(n_examples=300, history_turns=2)
    replies = {reply.split("{")[0] for _, reply in INTENTS.values()}
    for e in task.load()["train"]:
        lines = e.prompt.split("\n")
        assert lines[-1] == "bot: " and len(lines) == 2 * 2 + 2 and lines[-2].startswith("user: ")
        assert any(e.completion.startswith(r) for r in replies)
        for slot in re.findall(r"\d+:\d\d [ap]m|" + "|".join(words.CITIES + words.GENRES), e.completion):
            assert slot in lines[-2]  # the reply repeats the slots of the last user turn
    assert all(e.prompt.count("user: ") == 1 for e in Dialogue(n_examples=50, history_turns=0).load()["train"])
    two = Dialogue(n_examples=200, n_intents=2, n_phrasings=1, history_turns=1).load()["train"]
    assert {e.completion.split()[0] for e in two} <= {"Hello!", "Booked"}


@pytest.mark.skipif(not HAS_REASONING_GYM, reason="reasoning-gym is not installed")
def test_reasoning_gym_uses_the_dataset_and_its_checker(tmp_path):
    import reasoning_gym

    task = build("reasoning_gym", tmp_path, dataset="basic_arithmetic", n_examples=40, data_seed=7,
                 config={"max_terms": 2, "max_digits": 2})
    reference = reasoning_gym.create_dataset("basic_arithmetic", size=40, seed=7, max_terms=2, max_digits=2)
    expected = {(f"{r['question'].rstrip()}\nanswer: ", r["answer"]) for r in reference}
    got = {(e.prompt, e.completion) for v in task.load().values() for e in v}
    assert got == expected
    e = task.load()["test"][0]
    assert task.verify(e.completion, e) == 1.0 and task.verify("not a number", e) == 0.0


@pytest.mark.skipif(not HAS_REASONING_GYM, reason="reasoning-gym is not installed")
@pytest.mark.parametrize("checker,expected", [(lambda a, e: 1 / 0, 0.0), (lambda a, e: 2.0, 1.0),
                                              (lambda a, e: float("nan"), 0.0), (lambda a, e: 0.25, 0.25)])
def test_reasoning_gym_checker_output_is_kept_in_range(checker, expected, tmp_path, monkeypatch):
    task = build("reasoning_gym", tmp_path, n_examples=10)
    monkeypatch.setattr(task._generator, "score_answer", checker)
    e = task.load()["test"][0]
    assert task.verify("anything the model wrote", e) == expected


# --- bad knobs -----------------------------------------------------------------------------------------------------


INVALID = [
    ("reverse", {"min_length": 0}, r"task.min_length must be an integer in \[1, 512\], got 0"),
    ("reverse", {"max_length": 2, "min_length": 3}, r"task.min_length must be <= task.max_length, got 3 > 2"),
    ("copy", {"max_length": 1.5}, r"task.max_length must be an integer in \[1, 512\], got 1.5"),
    ("sort", {"alphabet": "a"}, (r"task.alphabet must be a string of >= 2 distinct printable non-space characters, "
                                r"without '=', got 'a'")),
    ("sort", {"alphabet": "aba"}, r"task.alphabet must be a string .*, got 'aba'"),
    ("sort", {"alphabet": "ab="}, r"task.alphabet must be a string .*, got 'ab='"),
    ("sort", {"alphabet": "a b"}, r"task.alphabet must be a string .*, got 'a b'"),
    ("sort", {"alphabet": 12345}, r"task.alphabet must be a string .*, got 12345"),
    ("addition", {"max_digits": 31}, r"task.max_digits must be an integer in \[1, 30\], got 31"),
    ("addition", {"n_operands": 1}, r"task.n_operands must be an integer in \[2, 10\], got 1"),
    ("addition", {"n_examples": 2}, r"task.n_examples must be an integer >= 3, got 2"),
    ("addition", {"data_seed": -1}, r"task.data_seed must be an integer >= 0, got -1"),
    ("text_classification", {"negation": 1.5}, r"task.negation must be in \[0, 1\], got 1.5"),
    ("text_classification", {"neutral": "yes"}, r"task.neutral must be true or false, got 'yes'"),
    ("text_classification", {"label_noise": 1.0}, r"task.label_noise must be in \[0, 1\), got 1.0"),
    ("text_classification", {"noise_type": "pair"},
     r"task.noise_type must be one of symmetric, asymmetric, got 'pair'"),
    ("qa", {"n_facts": 11}, r"task.n_facts must be an integer in \[1, 10\], got 11"),
    ("qa", {"n_relations": 0}, r"task.n_relations must be an integer in \[1, 5\], got 0"),
    ("translation", {"max_adjectives": 3}, r"task.max_adjectives must be an integer in \[0, 2\], got 3"),
    ("translation", {"adverb_rate": -0.1}, r"task.adverb_rate must be in \[0, 1\], got -0.1"),
    ("summarisation", {"n_filler": 13}, r"task.n_filler must be an integer in \[0, 12\], got 13"),
    ("summarisation", {"shuffle": 1}, r"task.shuffle must be true or false, got 1"),
    ("dialogue", {"n_intents": 9}, r"task.n_intents must be an integer in \[1, 8\], got 9"),
    ("dialogue", {"n_phrasings": 0}, r"task.n_phrasings must be an integer in \[1, 3\], got 0"),
    ("dialogue", {"history_turns": 5}, r"task.history_turns must be an integer in \[0, 4\], got 5"),
    ("copy", {"completion_noise": 1.0}, r"task.completion_noise must be in \[0, 1\), got 1.0"),
    ("copy", {"val_fraction": 0.5, "test_fraction": 0.5}, r"task.val_fraction \+ task.test_fraction must be < 1"),
    ("completion_file", {"prompt_column": "completion"}, (r"task.prompt_column and task.completion_column must "
                                                         r"differ, got 'completion', 'completion'")),
    ("completion_file", {"completion_column": ""}, r"task.completion_column must be a column name, got ''"),
    ("text_classification_file", {"prompt_template": "classify: "}, (r"task.prompt_template must be a string holding "
                                                                    r"\{text\} exactly once, got 'classify: '")),
    ("text_classification_file", {"label_column": "text"}, r"task.text_column and task.label_column must differ"),
]


@pytest.mark.parametrize("name,overrides,message", INVALID, ids=lambda v: str(v))
def test_invalid_knobs_are_one_line_errors(name, overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        build(name, tmp_path, **overrides)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_the_valid_ones(tmp_path):
    cfg = task_cfg("reverse", tmp_path)
    cfg.max_len = 4
    with pytest.raises(ConfigError, match=r"task 'reverse' has no option max_len; its options are: min_length, "
                                          r"max_length, alphabet, n_examples, data_seed, batch_size, val_fraction, "
                                          r"test_fraction, split_seed, completion_noise, corrupt_val$"):
        instantiate("task", cfg)


def test_a_space_too_small_for_n_examples_is_an_error():
    with pytest.raises(ConfigError, match=r"task reverse: only 6 distinct prompts in \d+ draws, fewer than "
                                          r"task.n_examples=10; lower n_examples or widen the task \(raise max_length "
                                          r"or use a larger alphabet\)"):
        Reverse(n_examples=10, min_length=1, max_length=2, alphabet="ab").load()
    with pytest.raises(ConfigError, match=r"task addition: only 100 distinct prompts .* \(raise max_digits or "
                                          r"n_operands\)"):
        Addition(n_examples=101, max_digits=1).load()
    Addition(n_examples=100, max_digits=1).load()  # exactly the whole space


@pytest.mark.skipif(not HAS_REASONING_GYM, reason="reasoning-gym is not installed")
@pytest.mark.parametrize("overrides,message", [
    ({"dataset": "nope"}, r"task.dataset must be a reasoning-gym dataset, got 'nope'; valid: .*basic_arithmetic"),
    ({"config": {"foo": 1}}, (r"task.config has no setting foo for reasoning-gym dataset 'spell_backward'; its "
                             r"settings are: min_word_len")),
    ({"config": {"seed": 1, "size": 5}}, r"task.config must not set seed, size: use task.data_seed, task.n_examples"),
    ({"dataset": "basic_arithmetic", "config": {"min_terms": 0}}, (r"task.config is not valid for reasoning-gym "
                                                                  r"dataset 'basic_arithmetic': min_terms must be")),
    ({"config": [1]}, r"task.config must be a mapping of reasoning-gym settings or null, got \[1\]"),
])
def test_reasoning_gym_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build("reasoning_gym", tmp_path, **overrides)


def test_reasoning_gym_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)
    from rmlab.tasks.sequence import ReasoningGym

    with pytest.raises(ConfigError, match=r"task=reasoning_gym needs the reasoning-gym package: pip install "
                                          r"'rmlab\[reasoning\]'"):
        ReasoningGym(dataset="spell_backward")


# --- the user's files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_completion_file_reads_every_format(fmt, tmp_path):
    frame = pd.DataFrame({"q": [f"prompt {i} " for i in range(30)], "a": [f"{i}" for i in range(30)]})
    path = tmp_path / f"data.{fmt}"
    if fmt in ("jsonl", "json"):
        path.write_text("".join(json.dumps(r) + "\n\n" for r in frame.to_dict("records")))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    task = CompletionFile(path=str(path), prompt_column="q", completion_column="a")
    got = sorted((e.prompt, e.completion) for v in task.load().values() for e in v)
    assert got == sorted(zip(frame.q, frame.a)) and task.name == "data"  # texts as they are, spaces kept


def test_text_classification_file_labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"body": f"text {i}", "y": i % 2}) + "\n" for i in range(40)))
    task = TextClassificationFile(path=str(path), text_column="body", label_column="y", prompt_template="Q: {text} A:")
    assert task.info.labels == ("0", "1")
    e = task.load()["train"][0]
    assert re.fullmatch(r"Q: text \d+ A:", e.prompt) and e.completion == e.meta["label"] == str(int(e.prompt[8:-3]) % 2)


def test_file_path_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown file extension '.txt'; valid: .jsonl, .json, .csv, .parquet, .pq"):
        CompletionFile(path=str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match=r"x.jsonl: file not found \(task.path='.*x.jsonl'; relative paths resolve"):
        CompletionFile(path=str(tmp_path / "x.jsonl"))
    with pytest.raises(ConfigError, match=r"task.path must be a file path, got None"):
        TextClassificationFile(path=None)


BAD_FILES = [
    ("completion_file", '{"prompt": "a", "completion": "b"}\n{"prompt": "c"', r"line 2 is not valid JSON"),
    ("completion_file", '[{"prompt": "a", "completion": "b"}]\n', r"line 1 .* \(a JSON array is not supported"),
    ("completion_file", '{"prompt": "a", "completion": "b"}\n"text"\n',
     r"line 2 must be a JSON object \{...\}, got str"),
    ("completion_file", '{"prompt": "a", "answer": "b"}\n',
     r"completion column 'completion' not found; available columns: prompt, answer"),
    ("completion_file", '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "  "}\n',
     r"completion column 'completion' has 1 empty values \(missing, blank or null\), e.g. in line 2"),
    ("completion_file", '{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n',
     r"completion column 'completion' has 1 empty values .* in line 2"),
    ("completion_file", '{"prompt": "a", "completion": "b"}\n\n{"prompt": 3, "completion": "d"}\n',
     r"prompt column 'prompt' holds 3 \(int\) in line 3, not text"),
    ("completion_file", "", r"the file is empty"),
    ("text_classification_file", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n',
     r"label column 'label' has a single label \('x'\); classification needs at least 2"),
    ("text_classification_file", '{"text": "a", "label": true}\n',
     r"label column 'label' holds True \(bool\) in line 1, not text or an integer"),
    ("text_classification_file", '{"text": "a", "label": 0.5}\n',
     r"label column 'label' holds 0.5 \(float\) in line 1, not text or an integer"),
    ("text_classification_file", '{"body": "a", "label": 1}\n',
     r"text column 'text' not found; available columns: body, label"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=lambda v: str(v)[:40])
def test_bad_files_name_the_file_row_and_column(name, content, message, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    cls = CompletionFile if name == "completion_file" else TextClassificationFile
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: {message}") as err:
        cls(path=str(path)).load()
    assert "\n" not in str(err.value)


def test_bad_csv_and_parquet_rows_are_named(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("prompt,completion\na,b\nc,\n")
    with pytest.raises(DataError, match=r"completion column 'completion' has 1 empty values .* in data row 2"):
        CompletionFile(path=str(csv)).load()
    parquet = tmp_path / "bad.parquet"
    pd.DataFrame({"text": ["a", None, "c"], "label": [1, 2, 3]}).to_parquet(parquet)
    with pytest.raises(DataError, match=r"text column 'text' has 1 empty values .* in data row 2"):
        TextClassificationFile(path=str(parquet)).load()
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"could not be read as parquet"):
        CompletionFile(path=str(broken)).load()


def test_a_csv_with_a_repeated_column_is_refused(tmp_path):
    csv = tmp_path / "dup.csv"
    csv.write_text("prompt,completion,completion\n" + "q,a,b\n" * 20)
    with pytest.raises(DataError, match=r"column name\(s\) 'completion' appear more than once in the header"):
        CompletionFile(path=str(csv)).load()


def test_file_errors_reach_a_composed_run_config(tmp_path):
    """What a user sees: the error from a composed config, before any data is used."""
    path = write_completions(tmp_path / "sft.jsonl")
    cfg = task_cfg("completion_file", tmp_path, completion_column="answer")
    cfg.path = str(path)
    with pytest.raises(DataError, match=r"completion column 'answer' not found; available columns: prompt, "
                                        r"completion, extra"):
        instantiate("task", cfg).load()
