"""Trained models as MLflow models, end to end: train, load in a fresh process (``mlflow.pyfunc.load_model`` and
``python -m rmlab.predict``), predict on RAW inputs (the user's units, labels and texts), and compare with the run's
own test output; plus the predict command's one-line errors."""

import json
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rmlab.build import instantiate
from rmlab.predict import main as predict_main
from rmlab.run import train
from rmlab.tokenizer import SEP, decode
from tests.conftest import FAST, PYTHON, cli_env, compose_config

ANIMALS = ("cat", "dog", "fox")


def animals_csv(path) -> None:
    """Integer features, string labels: what a user's file looks like (and what raw input means)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    frame = pd.DataFrame({"weight": y * 4 + rng.integers(0, 6, 300), "legs": rng.integers(2, 5, 300),
                          "ears": (y == 2) * 3 + rng.integers(0, 3, 300), "animal": [ANIMALS[i] for i in y]})
    frame.to_csv(path, index=False)


def pairs_jsonl(path) -> None:
    rows = [{"prompt": f"question {i}?", "chosen": f"a good answer {i % 7}", "rejected": f"bad {i % 5}"}
            for i in range(240)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rebuilt_test_split(cfg):
    """The run's test split, rebuilt in this process from the same config (splits are deterministic)."""
    task = instantiate("task", cfg.task)
    return task, task.load()["test"]


def raw_features(task, x: np.ndarray) -> np.ndarray:
    prep = task.preprocessing
    return x.astype(np.float64) * np.asarray(prep["feature_std"]) + np.asarray(prep["feature_mean"])


def fresh(script: str, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run([PYTHON, "-c", textwrap.dedent(script)], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_models_predict_raw_inputs_in_a_fresh_process_as_in_the_run(workdir):
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(store)

    # 1. A classifier on a user's CSV, trained through the command line.
    animals_csv(workdir / "animals.csv")
    args = ["task=csv", "task.path=animals.csv", "task.target=animal", "trainer.max_epochs=4", "optimizer.lr=3e-3",
            "trainer.enable_progress_bar=false"]
    done = subprocess.run([PYTHON, "-m", "rmlab", *args], cwd=workdir, env=cli_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    classifier = next(line.split()[-1] for line in done.stdout.splitlines() if line.strip().startswith("run id"))
    run = client.get_run(classifier)
    assert run.data.params["optimizer.lr"] == "3e-3"  # as typed, not 0.003
    task, test = rebuilt_test_split(compose_config(*args))
    rows = pd.DataFrame(np.round(raw_features(task, test.x.numpy())), columns=task.feature_names).astype(int)
    rows["animal"] = [task.classes[i] for i in test.y.tolist()]
    rows.to_csv(workdir / "new_animals.csv", index=False)

    # 2. A regressor, trained here; its predictions come back in the target's units.
    regression = compose_config(*FAST, "task=diabetes", "loss=mse", "reward=neg_mse", "trainer.max_epochs=4")
    regressor = train(regression)["run_id"]
    task_r, test_r = rebuilt_test_split(regression)
    pd.DataFrame(raw_features(task_r, test_r.x.numpy()), columns=task_r.feature_names).to_parquet(
        workdir / "patients.parquet")

    # 3. A text reward model on a preference file, registered under a name.
    pairs_jsonl(workdir / "pairs.jsonl")
    text = compose_config(*FAST, "task=preference_file", "task.path=pairs.jsonl", "task.max_length=40",
                          "model=text_transformer", "model.width=16", "model.depth=1", "model.heads=2",
                          "loss=bradley_terry", "reward=preference_accuracy", "trainer.max_epochs=3",
                          "logger.register_as=pair-scorer")
    scorer = train(text)["run_id"]
    _, test_t = rebuilt_test_split(text)
    records = []
    for chosen, rejected in test_t.x.tolist():  # test pairs are never flipped: chosen first
        cut = chosen.index(SEP)
        records.append({"prompt": decode(chosen[:cut]), "chosen": decode(chosen[cut:]),
                        "rejected": decode(rejected[rejected.index(SEP):])})
    pd.DataFrame(records).to_json(workdir / "test_pairs.jsonl", orient="records", lines=True)

    # Fresh processes: the command for the CSV, MLflow's own loader for the others (by run and by registry name).
    done = subprocess.run([PYTHON, "-m", "rmlab.predict", f"run_id={classifier}", "input=new_animals.csv"],
                          cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new_animals.predictions.csv" in done.stdout
    fresh(f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({store!r})
        regressor = mlflow.pyfunc.load_model("runs:/{regressor}/model")
        regressor.predict(pd.read_parquet("patients.parquet")).to_csv("patients.out.csv", index=False)
        scorer = mlflow.pyfunc.load_model("models:/pair-scorer/1")
        scorer.predict(pd.read_json("test_pairs.jsonl", lines=True)).to_csv("pairs.out.csv", index=False)
        scorer.predict(pd.DataFrame({{"prompt": ["question 1?"], "response": ["a good answer 1"]}})).to_csv(
            "item.out.csv", index=False)
    """, workdir)

    # The classifier: the run's test accuracy and test loss, recomputed from the served predictions.
    out = pd.read_csv(workdir / "new_animals.predictions.csv")
    assert set(out["prediction"]) <= set(ANIMALS)
    probs = out[[f"p_{a}" for a in task.classes]].to_numpy()
    assert probs.sum(1) == pytest.approx(np.ones(len(out)), abs=1e-5)
    metrics = client.get_run(classifier).data.metrics
    assert (out["prediction"] == out["animal"]).mean() == pytest.approx(metrics["test/reward"], abs=1e-6)
    picked = probs[np.arange(len(out)), test.y.numpy()]
    assert -np.log(picked).mean() == pytest.approx(metrics["test/loss"], rel=1e-4)

    # The regressor: de-standardised predictions, standardised again, give the run's test reward (-MSE).
    prep = task_r.preprocessing
    z = (pd.read_csv(workdir / "patients.out.csv")["prediction"].to_numpy() - prep["target_mean"]) / prep["target_std"]
    assert -np.mean((z - test_r.y.numpy()) ** 2) == pytest.approx(
        client.get_run(regressor).data.metrics["test/reward"], rel=1e-4)

    # The reward model: chosen outscores rejected on the same share of test pairs as in the run.
    scored = pd.read_csv(workdir / "pairs.out.csv")
    assert (scored["chosen_score"] > scored["rejected_score"]).mean() == pytest.approx(
        client.get_run(scorer).data.metrics["test/reward"], abs=1e-6)
    assert scored["p_chosen"].between(0, 1).all()
    assert list(pd.read_csv(workdir / "item.out.csv").columns) == ["score"]


@pytest.fixture(scope="module")
def wine_model(tmp_path_factory):
    """One small tracked run with its model, for the error cases."""
    import os

    cwd, before = tmp_path_factory.mktemp("wine"), os.getcwd()
    os.chdir(cwd)  # the run's output folder goes here
    try:
        run_id = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=1",
                                      f"logger.tracking_uri=sqlite:///{cwd / 'mlflow.db'}"))["run_id"]
    finally:
        os.chdir(before)
    return cwd, run_id


@pytest.mark.parametrize("args, message", [
    (["input=rows.csv", "color=red"], "unknown key 'color'; keys: run_id, model, input, output, tracking_uri"),
    (["input=rows.csv", "model=models:/x/1", "run_id=abc"], "give exactly one of run_id"),
    (["input=absent.csv"], "absent.csv: file not found"),
    (["input=rows.txt"], "unknown file extension '.txt'"),
    (["input=rows.csv", "output=rows.csv"], "is the input file"),
    (["input=broken.jsonl"], "line 2 is not valid JSON"),
    (["input=short.csv"], "missing input column(s) 'proline'"),
    (["input=text.csv"], "column 'alcohol' has 1 missing, non-numeric or infinite values, e.g. 'high' in data row 1"),
])
def test_predict_reports_bad_input_in_one_line(wine_model, capsys, monkeypatch, args, message):
    cwd, run_id = wine_model
    monkeypatch.chdir(cwd)
    import sklearn.datasets

    wine = sklearn.datasets.load_wine()
    frame = pd.DataFrame(wine.data[:4], columns=wine.feature_names)
    (cwd / "rows.csv").write_text(frame.to_csv(index=False))
    (cwd / "rows.txt").write_text("x")
    (cwd / "broken.jsonl").write_text('{"alcohol": 1}\n{nope\n')
    (cwd / "short.csv").write_text(frame.drop(columns=["proline"]).to_csv(index=False))
    (cwd / "text.csv").write_text(frame.astype(object).assign(alcohol=["high", 1, 2, 3]).to_csv(index=False))
    uri = f"tracking_uri=sqlite:///{cwd / 'mlflow.db'}"
    with_run = [] if any(a.startswith(("model=", "run_id=")) for a in args) else [f"run_id={run_id}"]
    assert predict_main([*with_run, uri, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rmlab.predict: error: ") and message in err[-1], err
    assert not (cwd / "rows.predictions.csv").exists()


def test_predict_names_a_missing_run_or_model(wine_model, capsys, monkeypatch):
    cwd, run_id = wine_model
    monkeypatch.chdir(cwd)
    (cwd / "rows.csv").write_text("alcohol\n1\n")
    uri = f"tracking_uri=sqlite:///{cwd / 'mlflow.db'}"
    assert predict_main(["run_id=0123456789abcdef", uri, "input=rows.csv"]) == 2
    assert "run 0123456789abcdef not found" in capsys.readouterr().err
    assert predict_main(["model=models:/nothing/1", uri, "input=rows.csv"]) == 2
    assert "no MLflow model at models:/nothing/1" in capsys.readouterr().err


def test_predict_writes_inputs_and_predictions(wine_model, capsys, monkeypatch):
    cwd, run_id = wine_model
    monkeypatch.chdir(cwd)
    import sklearn.datasets

    wine = sklearn.datasets.load_wine()
    pd.DataFrame(wine.data[:6], columns=wine.feature_names).to_json(cwd / "rows.jsonl", orient="records", lines=True)
    uri = f"tracking_uri=sqlite:///{cwd / 'mlflow.db'}"
    assert predict_main([f"run_id={run_id}", uri, "input=rows.jsonl", "output=out/scored.jsonl"]) == 0
    assert "6 rows" in capsys.readouterr().out
    out = pd.read_json(cwd / "out" / "scored.jsonl", lines=True)
    assert list(out.columns[:13]) == list(wine.feature_names)
    assert set(out["prediction"]) <= {"class_0", "class_1", "class_2"}
