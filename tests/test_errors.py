"""Bad input gets a clear error that names the fix, and the input model is never touched."""

import json
import subprocess
import sys

import pytest
import torch

import unlearnkit
from unlearnkit.cli import main
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import Split, random_split
from unlearnkit.errors import DataError, UnlearnkitError
from unlearnkit.io import file_sha256, save_weights, weights_sha256


def _data(n=30, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.arange(n) % k


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_empty_forget_set_names_the_fix():
    x, y = _data()
    m = _model()
    before = weights_sha256(m)
    with pytest.raises(ValueError, match="forget= is empty"):
        unlearnkit.unlearn(m, "ft", forget=(x[:0], y[:0]), retain=(x, y), test=(x, y))
    assert weights_sha256(m) == before


def test_overlapping_forget_and_retain_ids():
    x, y = _data()
    s = ExampleSet({"x": x, "y": y})
    with pytest.raises(DataError, match="both the forget and the retain set"):
        Split(s.take(torch.arange(0, 10)), s.take(torch.arange(5, 30)), s)


def test_labels_out_of_range_are_rejected_before_training():
    x, y = _data()
    m = _model()
    before = weights_sha256(m)
    bad = y.clone()
    bad[0] = 7
    with pytest.raises(ValueError, match=r"forget= has labels in \[0, 7\].*labels must lie in 0\.\.2"):
        unlearnkit.unlearn(
            m, "ft", forget=(x[:5], bad[:5]), retain=(x[5:], y[5:]), test=(x, y), num_classes=3
        )
    assert weights_sha256(m) == before


def test_unknown_method_suggests_close_names():
    x, y = _data()
    with pytest.raises(UnlearnkitError, match="did you mean 'salun'"):
        unlearnkit.unlearn(_model(), "saln", forget=(x[:5], y[:5]), retain=(x[5:], y[5:]), test=(x, y))


def test_unknown_method_option_is_rejected():
    x, y = _data()
    with pytest.raises(ValueError, match="unknown option lrr=: did you mean 'lr'"):  # the API's keyword
        unlearnkit.unlearn(_model(), "ft", forget=(x[:5], y[:5]), retain=(x[5:], y[5:]), test=(x, y), lrr=0.1)


def test_wrong_input_shape_is_reported():
    x, y = _data()
    x3 = torch.randn(30, 5)
    with pytest.raises(
        ValueError, match=r"model= cannot take the inputs of forget= \(one example has shape \(5,\)\)"
    ):
        unlearnkit.unlearn(_model(), "ft", forget=(x3[:5], y[:5]), retain=(x3[5:], y[5:]), test=(x3, y))


def test_forget_fraction_out_of_range():
    x, y = _data()
    s = ExampleSet({"x": x, "y": y})
    with pytest.raises(DataError, match="strictly between 0 and 1"):
        random_split(s, s, 1.5, seed=0)


def _cli(capsys, *args):
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_missing_model_file_is_one_clear_line(capsys, tmp_path):
    code, out, err = _cli(
        capsys, "unlearn", "--preset", "vision/ft", f"model.path={tmp_path / 'nope.safetensors'}"
    )
    assert code == 2
    assert "not found" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_cli_missing_ids_file(capsys, tmp_path):
    code, _, err = _cli(
        capsys,
        "unlearn",
        "--preset",
        "vision/ft",
        "split.kind=ids",
        f"split.ids_file={tmp_path / 'ids.json'}",
    )
    assert code == 2 and "forget-ids file" in err and "does not exist" in err


def test_cli_unknown_preset_and_bad_override(capsys):
    code, _, err = _cli(capsys, "unlearn", "--preset", "vision/salunn")
    assert code == 2 and "did you mean 'vision/salun'" in err
    code, _, err = _cli(capsys, "unlearn", "--preset", "vision/ft", "method.lr")
    assert code == 2 and "key=value" in err
    code, _, err = _cli(capsys, "unlearn", "--preset", "vision/ft", "method.epochs=many")
    assert code == 2 and "must be an integer" in err


def test_cli_refuses_to_overwrite_the_input_model(capsys, tmp_path):
    """--out pointing at the input model's folder is refused; the input file is byte-identical after."""
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import make_setup

    setup = make_setup(load_preset("vision/ft"))
    model = setup.new_model()
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    digest = file_sha256(path)
    code, _, err = _cli(
        capsys, "unlearn", "--preset", "vision/ft", f"model.path={path}", "--out", str(tmp_path)
    )
    assert code == 2 and "input model" in err
    assert file_sha256(path) == digest


def test_weights_that_do_not_fit_the_model(capsys, tmp_path):
    path = tmp_path / "other.safetensors"
    save_weights(torch.nn.Linear(3, 3), path)
    code, _, err = _cli(capsys, "evaluate", "--preset", "vision/ft", f"model.path={path}")
    assert code == 2 and "do not fit the configured model" in err


def test_pickle_file_is_not_loaded(capsys, tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(1)}, path)  # a pickle under a safetensors name
    code, _, err = _cli(capsys, "evaluate", "--preset", "vision/ft", f"model.path={path}")
    assert code == 2 and "not a readable safetensors file" in err


def test_cli_subprocess_exit_code_and_no_traceback():
    r = subprocess.run(
        [sys.executable, "-m", "unlearnkit", "bench", "no-such-suite", "--out", "/tmp/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "unknown preset" in r.stderr and "Traceback" not in r.stderr


def test_list_methods_json_schema(capsys):
    code, out, _ = _cli(capsys, "list", "methods", "--json")
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    assert code == 0
    assert {
        "retrain",
        "ft",
        "ga",
        "rl",
        "iu",
        "l1_sparse",
        "boundary_shrink",
        "boundary_expand",
        "scrub",
        "salun",
    } <= names
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        assert isinstance(r["families"], list) and set(r["families"]) <= {"vision", "text", "diffusion"}
    for generic in ("ga", "rl", "salun", "simnpo", "npo", "graddiff"):  # written once over the adapter
        assert {"vision", "text"} <= set(by_name[generic]["families"])
    assert by_name["scrub"]["families"] == ["vision"] and by_name["rmu"]["families"] == ["text"]
