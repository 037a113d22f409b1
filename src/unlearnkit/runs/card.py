"""A model card (``README.md``) for every unlearned model, in the Hugging Face model-card format.

The card opens with YAML front matter (``library_name: unlearnkit``, ``tags`` = machine-unlearning, the
method and the family, ``base_model`` and ``datasets`` when they are Hub ids) and has sections on the base
model, the method and its hyperparameters, the forget-set receipt, the metrics next to the retrained
oracle's (when the run evaluated it), how to load the weights, and the limitations. ``write_run`` writes it
next to ``model.safetensors`` (and into ``hf_model/`` for a Hugging Face model, so that folder can be pushed
to the Hub as it is).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_text
from unlearnkit.registry import get_family
from unlearnkit.runs.resume import flatten

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Data sources named by an alias whose Hub dataset is known.
_DATASET_ALIASES = {
    ("muse", "news"): "muse-bench/MUSE-News",
    ("muse", "books"): "muse-bench/MUSE-Books",
    ("tofu", None): "locuslab/TOFU",
    ("cifar10", None): "uoft-cs/cifar10",
    ("cifar100", None): "uoft-cs/cifar100",
}


def hub_id(value: Any) -> str | None:
    """``value`` when it reads as a Hub repository id (``org/name``) and is not a local path, else None."""
    if not isinstance(value, str) or not _HUB_ID.match(value) or Path(value).expanduser().exists():
        return None
    return value


def base_model_id(config: dict[str, Any]) -> str | None:
    """The Hub id of the model that was unlearned, when the config names one."""
    model = config.get("model") or {}
    return hub_id(model.get("path")) or hub_id(model.get("hub_id"))


def dataset_ids(config: dict[str, Any]) -> list[str]:
    """The Hub ids of the datasets the run used, when known."""
    data = config.get("data") or {}
    name, source = data.get("name"), data.get("source")
    found = hub_id(source) or _DATASET_ALIASES.get((name, source)) or _DATASET_ALIASES.get((name, None))
    return [found] if found else []


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _metrics_section(metrics: dict[str, Any], oracle: dict[str, Any] | None) -> str:
    shown = {k: v for k, v in metrics.items() if not k.startswith("_")}
    if not shown:
        return "This run was not evaluated (no metrics).\n"
    if not oracle:
        lines = ["| metric | this model |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown.items()]
        note = (
            "\nNo retrained oracle was evaluated for this run; rerun with `eval.oracle=true` to compare each "
            "metric with the model retrained from scratch without the forget set (the exact reference).\n"
        )
        return "\n".join(lines) + "\n" + note
    lines = ["| metric | this model | oracle (retrained) | difference |", "|---|---|---|---|"]
    for k, v in shown.items():
        o = oracle.get(k)
        diff = ""
        if isinstance(v, int | float) and isinstance(o, int | float) and not isinstance(v, bool):
            d = float(v) - float(o)
            diff = "nan" if math.isnan(d) else f"{d:+.4g}"
        lines.append(f"| {k} | {_fmt(v)} | {_fmt(o) if k in oracle else ''} | {diff} |")
    note = (
        "\nThe oracle is the model retrained from scratch on the retain set only (it never saw the forget "
        "set); the closer a metric is to the oracle's, the closer unlearning came to exact unlearning.\n"
    )
    return "\n".join(lines) + "\n" + note


def _owns_original(family: str) -> bool:
    """Whether the family brings its own trained original (a text-to-image world), rather than building
    a model from the ``model:`` section."""
    try:
        return bool(get_family(family).owns_original)
    except UnlearnkitError:
        return False


def _load_section(config: dict[str, Any], has_hf: bool) -> str:
    family = config.get("family", "vision")
    text = ["The weights are in `model.safetensors` (safetensors: no pickle, safe to load)."]
    if has_hf:
        text.append(
            "A Hugging Face copy is in `hf_model/`:\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("hf_model")\n'
            'tokenizer = AutoTokenizer.from_pretrained("hf_model")\n```'
        )
    owns = _owns_original(family)
    if config.get("model") or owns:
        build = (
            "model = original_model(setup).model  # the same architecture (the shipped model)"
            if owns
            else "model = setup.new_model()  # the same architecture"
        )
        imports = "original_model" if owns else ""
        text.append(
            "With unlearnkit, from this folder:\n\n```python\nimport yaml\n\n"
            "from unlearnkit.io import load_weights\n"
            f"from unlearnkit.experiment import make_setup{', ' + imports if imports else ''}\n\n"
            'setup = make_setup(yaml.safe_load(open("config.yaml")))\n'
            f"{build}\n"
            'load_weights(model, "model.safetensors")\n```'
        )
    else:
        text.append(
            "Build the same `torch.nn.Module` as the model you unlearned, then:\n\n```python\n"
            "from unlearnkit.io import load_weights\n\n"
            'load_weights(model, "model.safetensors")\n```'
        )
    return "\n\n".join(text) + "\n"


LIMITATIONS = """\
- Approximate unlearning gives no formal guarantee that the forget set's influence is gone: the metrics
  above are empirical (accuracy, membership inference, memorisation, generation) and measured on this run's
  evaluation sets only. Relearning and adversarial-prompt attacks can bring forgotten behaviour back.
- The receipt proves *which* examples were requested to be forgotten (the hash of their sorted ids) and
  *which* weights came in and out; it does not prove the information was removed.
- Utility is measured on the evaluation data of this run; check it on your own use before deployment.
"""


def model_card(
    config: dict[str, Any],
    receipt: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    oracle: dict[str, Any] | None = None,
    has_hf_model: bool = False,
) -> str:
    """The model card text of one unlearned model (front matter + Markdown)."""
    method_spec = dict(config.get("method") or {})
    method = str(method_spec.get("name") or receipt.get("method") or "unknown")
    family = str(config.get("family") or "vision")
    meta: dict[str, Any] = {
        "library_name": "unlearnkit",
        "tags": list(dict.fromkeys(["machine-unlearning", method, family])),
    }
    base = base_model_id(config)
    if base:
        meta["base_model"] = base
    datasets = dataset_ids(config)
    if datasets:
        meta["datasets"] = datasets
    front = yaml.safe_dump(meta, sort_keys=False).strip()

    model_cfg = config.get("model") or {}
    data_cfg = config.get("data") or {}
    if base:
        base_text = f"[`{base}`](https://huggingface.co/{base}) from the Hugging Face Hub."
    elif model_cfg.get("path"):
        base_text = f"The model loaded from `{model_cfg['path']}`."
    elif model_cfg:
        shown = {k: v for k, v in model_cfg.items() if k not in ("name", "path") and v is not None}
        arch = ", ".join(f"{k}={v}" for k, v in shown.items())
        base_text = (
            f"A `{model_cfg.get('name', 'model')}`{f' ({arch})' if arch else ''} trained by unlearnkit on "
            f"`{data_cfg.get('name', 'its data')}` with the recipe in `config.yaml` (`train:`)."
        )
    else:
        base_text = "A model given to `unlearnkit.unlearn()` through the Python API."
    split = config.get("split")
    data_text = f"Data: `{data_cfg.get('name')}`" if data_cfg.get("name") else ""
    if split:
        flow = yaml.safe_dump(split, default_flow_style=True).strip()
        data_text += f"{'; ' if data_text else ''}forget split: `{flow}`"

    hyper = yaml.safe_dump(method_spec or {"name": method}, sort_keys=False).strip()
    r = receipt
    receipt_rows = [
        ("forget ids sha256", r.get("forget_ids_sha256")),
        ("forget count", r.get("forget_count")),
        ("weights before sha256", r.get("weights_before_sha256")),
        ("weights after sha256", r.get("weights_after_sha256")),
        ("unlearnkit version", r.get("unlearnkit_version")),
        ("created", r.get("created")),
    ]
    receipt_table = "| field | value |\n|---|---|\n" + "\n".join(
        f"| {k} | `{v}` |" for k, v in receipt_rows if v is not None
    )
    seed = config.get("seed")
    parts = [
        f"---\n{front}\n---\n",
        f"# {method} unlearned {family} model\n",
        f"Made with unlearnkit: the method `{method}` removed the influence of a forget set from the base "
        f"model below{f' (seed {seed})' if seed is not None else ''}. "
        "`config.yaml`, `results.json` and `receipt.json` in this folder hold the full record.\n",
        "## Base model\n",
        base_text + (f"\n\n{data_text}." if data_text else "") + "\n",
        "## Method and hyperparameters\n",
        f"```yaml\n{hyper}\n```\n",
        *_training_line(r.get("training") or {}),
        "## Forget-set receipt\n",
        receipt_table + "\n\nAnyone holding the forget ids can check the first hash: the sha256 of the "
        "sorted ids written as a JSON list (`json.dumps(sorted(ids))`, e.g. `[3, 17, 42]`); the weight "
        "hashes identify the model before and after unlearning (`receipt.json`).\n",
        *_changes_section(r.get("config_changes") or []),
        "## Metrics vs the oracle\n",
        _metrics_section(dict(metrics if metrics is not None else r.get("metrics") or {}), oracle),
        "## How to load\n",
        _load_section(config, has_hf_model),
        "## Limitations\n",
        LIMITATIONS,
    ]
    return "\n".join(parts)


def _training_line(training: dict[str, Any]) -> list[str]:
    """One line: precision, and the batch of each stream per process and per optimizer step."""
    if not training:
        return []
    per, eff = training.get("batch_size") or {}, training.get("effective_batch_size") or {}
    batches = ", ".join(f"{n} {per[n]} per process, {eff.get(n)} per optimizer step" for n in per)
    return [
        f"Trained in {training.get('precision')} with gradient accumulation {training.get('grad_accum')} on "
        f"{training.get('processes')} process(es); batch: {batches}.\n"
    ]


def _changes_section(changes: list[dict[str, Any]]) -> list[str]:
    """A 'resumed with a changed config' section: for each change, the step and both values of each key."""
    if not changes:
        return []

    rows = []
    for c in changes:
        before, after = flatten(c.get("before") or {}), flatten(c.get("after") or {})
        for k in c.get("changed_keys", []):
            rows.append(f"| {c.get('at_step')} | `{k}` | `{before.get(k)}` | `{after.get(k)}` |")
    return [
        "## Resumed with a changed config\n",
        "This run was continued from a checkpoint with a config that differs from the one it started with; "
        "the weights come from both. `receipt.json` (`config_changes`) holds both whole configs.\n\n"
        "| from step | key | before | after |\n|---|---|---|---|\n" + "\n".join(rows) + "\n",
    ]


def write_card(
    out: str | Path,
    config: dict[str, Any],
    receipt: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    oracle: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/README.md`` (and ``out/hf_model/README.md`` when that folder exists); returns the path."""
    out = Path(out)
    has_hf = (out / "hf_model").is_dir()
    text = model_card(config, receipt, metrics, oracle, has_hf)
    write_text(out / "README.md", text)
    if has_hf:
        write_text(out / "hf_model" / "README.md", text)
    return out / "README.md"
