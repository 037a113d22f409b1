"""The oracle of a user's model (#15): TOFU's oracle is the *base* model fine-tuned on the retain set.

A tiny random Llama (the base) is fine-tuned here on a TOFU-schema ``full`` set (forget + retain) with the
preset's recipe; that fine-tuned folder is the user's model. ``oracle.base=BASE`` must then give an oracle
that never saw the forget authors (its forget probability far below the model's, and below an oracle
fine-tuned from the model itself, which is what the former "retrain from model.path" amounted to); the
run exports ``oracle_stats.json``, and ``evaluate ... oracle.stats=FILE`` reports forget quality equal to
scipy's KS test on the two truth-ratio lists."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from lm_zoo import build_tokenizer, save_model, tofu_folder_and_texts
from scipy.stats import ks_2samp

from unlearnkit.cli import main
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.experiment import (
    build_method,
    make_setup,
    oracle_model,
    original_model,
    resolve_oracle,
    train_original,
)
from unlearnkit.io import weights_sha256
from unlearnkit.paths import cache_root

# The original's recipe: enough for the tiny model to learn the 40 answers (forget prob ~0.2 vs ~0.01).
RECIPE = ["train.lr=1e-2", "train.epochs=20", "eval.max_new_tokens=4", "engine.progress=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(TOFU folder, base folder, fine-tuned folder, root): the fine-tuned model learnt the full set."""
    root = tmp_path_factory.mktemp("oracle")
    folder, texts = tofu_folder_and_texts(root / "tofu")
    tok = build_tokenizer(texts, None)
    base = save_model(root / "base", "llama", tok)
    setup = make_setup(_cfg(folder, base))
    original = original_model(setup)
    train_original(setup, original.model)
    original.model.save_pretrained(root / "ft")
    tok.save_pretrained(root / "ft")
    return folder, base, root / "ft", root


def _cfg(folder: Path, model: Path, *extra: str) -> dict:
    overrides = [f"data.source={folder}", f"model.path={model}", *RECIPE, *extra]
    return apply_overrides(load_preset("text/tofu"), overrides)


def _args(world, *extra: str) -> list[str]:
    folder, _, ft, _ = world
    return ["--preset", "text/tofu", f"data.source={folder}", f"model.path={ft}", *RECIPE, *extra]


@pytest.fixture(scope="module")
def run(world):
    """An unlearning run with the base model's oracle: (results.json, the run folder)."""
    out = world[3] / "run"
    args = ["unlearn", *_args(world, "eval.oracle=true", f"oracle.base={world[1]}")]
    assert main([*args, "method.name=ga", "method.epochs=1", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), out


def _evaluate_json(world, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *_args(world, *extra), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_base_oracle_never_saw_the_forget_set(world, run, capsys):
    results, out = run
    oracle_prob = results["oracle"]["forget_prob"]
    original = _evaluate_json(world, capsys)
    assert oracle_prob < 0.25 * original["forget_prob"]  # ~0.015 vs ~0.21
    # An oracle fine-tuned on the retain set from the user's model (the old behaviour) keeps far more.
    setup = make_setup(_cfg(world[0], world[2], f"oracle.base={world[2]}"))
    from_model = resolve_oracle(setup, original_model(setup))
    assert oracle_prob < 0.5 * from_model.flat["forget_prob"]
    assert from_model.source == {"kind": "base", "path": str(world[2])}
    stats = json.loads((out / "oracle_stats.json").read_text())
    assert stats["format"] == "unlearnkit-oracle-stats" and stats["protocol"] == "tofu"
    assert stats["source"] == {"kind": "base", "path": str(world[1])}
    assert stats["forget_count"] == len(stats["metrics"]["_forget_tr"]) == 4
    assert stats["metrics"]["forget_prob"] == pytest.approx(oracle_prob)


def test_evaluate_with_stored_stats_prints_the_ks_forget_quality(world, run, capsys):
    stats_file = run[1] / "oracle_stats.json"
    stats = json.loads(stats_file.read_text())["metrics"]
    full = _evaluate_json(world, capsys, f"oracle.stats={stats_file}")
    want = ks_2samp(full["_forget_tr"], stats["_forget_tr"]).pvalue
    assert full["forget_quality"] == pytest.approx(want, rel=1e-12)
    assert want < 1.0  # the fine-tuned model's truth ratios are not the oracle's
    assert full["privleak"] != pytest.approx(0.0)  # PrivLeak uses the oracle's Min-K AUC
    # The table: public metrics only, forget quality among them.
    assert main(["evaluate", *_args(world, f"oracle.stats={stats_file}")]) == 0
    printed = capsys.readouterr()
    rows = dict(re.findall(r"^│\s*(\S+)\s*│\s*(\S+)\s*│$", printed.out, re.M))
    assert float(rows["forget_quality"]) == pytest.approx(want, abs=5e-4)
    assert rows and not [k for k in rows if k.startswith("_")]
    assert set(rows) == {k for k in full if not k.startswith("_")}
    assert "needs an oracle" not in printed.err


def test_evaluate_without_oracle_says_how_to_give_one(world, capsys):
    assert main(["evaluate", *_args(world)]) == 0
    printed = capsys.readouterr()
    assert "_forget_tr" not in printed.out
    (note,) = [line for line in printed.err.splitlines() if line.startswith("note:")]
    assert note.startswith("note: forget_quality needs an oracle") and "oracle.stats=FILE" in note


def _other(world, name: str, arch: str, vocab: int, extra_text: str = "") -> Path:
    """A model folder of ``arch`` with a tokenizer of ``vocab`` tokens (trained on other text too)."""
    folder, _, _, root = world
    path = root / name
    if not path.exists():
        _, texts = tofu_folder_and_texts(root / f"tofu-{name}")
        save_model(path, arch, build_tokenizer(texts + [extra_text] * 50, None, vocab_size=vocab))
    return path


def _refused(world, tmp_path, capsys, *extra: str) -> str:
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["unlearn", *_args(world, "method.name=ga", *extra), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written
    return err[0]


def test_bad_oracle_inputs_are_one_line_errors(world, run, tmp_path, capsys):
    gpt2 = _other(world, "gpt2", "gpt2", 400)
    assert "model_type is 'gpt2'" in _refused(world, tmp_path, capsys, f"oracle.base={gpt2}")
    small = _other(world, "small-vocab", "llama", 300)
    err = _refused(world, tmp_path, capsys, f"oracle.model.path={small}")
    assert "vocab_size is 300" in err and "oracle.model.path" in err
    other_tok = _other(world, "other-tokenizer", "llama", 400, "zqx qzx xqz zzqq xxqq " * 20)
    err = _refused(world, tmp_path, capsys, f"oracle.base={other_tok}")
    assert "has another tokenizer than the model" in err
    stats = json.loads((run[1] / "oracle_stats.json").read_text())
    stats |= {"forget_ids_sha256": "0" * 64, "forget_count": 8}  # the stats of another forget set
    other = world[3] / "other_stats.json"
    other.write_text(json.dumps(stats))
    assert "another forget set (8 items" in _refused(world, tmp_path, capsys, f"oracle.stats={other}")
    err = _refused(world, tmp_path, capsys, f"oracle.base={world[1]}", f"oracle.stats={other}")
    assert "give one oracle source, not oracle.base and oracle.stats" in err
    err = _refused(world, tmp_path, capsys, f"oracle.bsae={world[1]}")
    assert "unknown option oracle.bsae" in err and "'base'" in err
    err = _refused(world, tmp_path, capsys, f"oracle.model.pth={world[1]}")
    assert "unknown option oracle.model.pth" in err and "'path'" in err
    err = _refused(world, tmp_path, capsys, "eval.oracle=true")  # a pretrained model, no oracle source
    assert "not a retraining from scratch" in err and "oracle.base=DIR" in err


def test_a_suite_on_a_users_model_takes_its_oracle_from_the_stats(world, run, tmp_path, capsys):
    """The suite's oracle row is the stats' values (no training), exported again per seed; without an
    oracle source the suite stops at its oracle row, before any method trains."""
    folder, _, ft, _ = world
    stats_file = run[1] / "oracle_stats.json"
    args = ["bench", "tofu-synthetic", "--seeds", "1", "--methods", "ga", "--quiet", "data.name=tofu"]
    args += [f"data.source={folder}", "model.name=hf", f"model.path={ft}", "eval.max_new_tokens=4"]
    assert main([*args, "--out", str(tmp_path / "b"), f"oracle.stats={stats_file}"]) == 0
    rows = {
        r["method"]: r["metrics"] for r in json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    }
    stats = json.loads(stats_file.read_text())
    assert rows["retrain"] == {k: v for k, v in stats["metrics"].items() if not k.startswith("_")}
    assert rows["ga"]["forget_quality"] < 1.0
    again = json.loads((tmp_path / "b" / "oracle_stats-seed0.json").read_text())
    assert again["metrics"] == stats["metrics"] and again["source"]["kind"] == "stats"
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert "not a retraining from scratch" in capsys.readouterr().err
    assert not (tmp_path / "c" / "results.json").exists()


def test_the_base_oracle_is_cached_under_the_base_folders_identity(world, tmp_path):
    """Reused while the base folder is unchanged (the stored seconds come back: nothing retrained); a
    rewritten weights file is another base, so another cache entry."""
    base = shutil.copytree(world[1], tmp_path / "base")
    setup = make_setup(_cfg(world[0], world[2], f"oracle.base={base}"))
    original = original_model(setup).model

    def retrain():  # a fresh one per call, as callers build it (Retrain.run writes the recipe into its cfg)
        return build_method({"name": "retrain"}, setup.cfg["family"])

    first, seconds = oracle_model(setup, retrain(), original)
    entries = set((cache_root() / "oracles").iterdir())
    again, seconds_again = oracle_model(setup, retrain(), original)
    assert seconds_again == seconds and weights_sha256(again) == weights_sha256(first)
    assert set((cache_root() / "oracles").iterdir()) == entries
    weights = base / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    oracle_model(setup, retrain(), original)
    assert len(set((cache_root() / "oracles").iterdir()) - entries) == 1


def test_a_synthetic_world_keeps_its_retrained_oracle_and_muse_reads_its_auc(tmp_path, capsys):
    """muse-synthetic trains its original from scratch, so eval.oracle=true alone retrains the oracle; its
    exported stats give ``evaluate`` MUSE's PrivLeak = (AUC − AUC_oracle) / AUC_oracle × 100."""
    common = ["--preset", "text/muse-base", "data.n_articles=20", "train.epochs=4"]
    common += ["eval.verbmem_max_new_tokens=12", "engine.progress=false"]
    out = tmp_path / "run"
    args = ["unlearn", *common, "method.name=ga", "method.epochs=1", "eval.oracle=true", "--out", str(out)]
    assert main(args) == 0
    stats = json.loads((out / "oracle_stats.json").read_text())
    assert stats["protocol"] == "muse" and stats["source"] == {"kind": "retrain", "path": None}
    capsys.readouterr()
    model = f"model.path={out / 'model.safetensors'}"
    assert main(["evaluate", *common, model, f"oracle.stats={out / 'oracle_stats.json'}", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    oracle_auc = stats["metrics"]["_auc"]
    assert oracle_auc > 0 and got["privleak"] == pytest.approx((got["_auc"] - oracle_auc) / oracle_auc * 100)
