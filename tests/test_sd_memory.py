"""Memory options on a Stable Diffusion folder: gradient checkpointing (same gradients, activations
recomputed), attention slicing (same samples), and the frozen parts of the pipeline outside the optimizer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from sd_tiny import build_sd_folder

import unlearnkit.engine.loop as loop
from unlearnkit.cli import main
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.models.sd import apply_memory_options, load_sd
from unlearnkit.models.t2i import ddim_sample, encode_prompts

torch.set_num_threads(1)
CAT = "a photo of a cat"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


def _count_checkpoints(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    import transformers.modeling_utils as hf  # transformers binds the function when it is imported

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    monkeypatch.setattr(hf, "checkpoint", counting)
    return calls


def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    DiffusionFamily().per_example_loss(model, batch).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(sd, monkeypatch):
    calls = _count_checkpoints(monkeypatch)
    plain = DiffusionFamily().build_model({"path": str(sd)}, None)
    ckpt = DiffusionFamily().build_model({"path": str(sd), "gradient_checkpointing": True}, None)
    assert ckpt.unet.is_gradient_checkpointing and ckpt.text_encoder.is_activation_checkpointing
    assert not plain.unet.is_gradient_checkpointing
    gen = torch.Generator().manual_seed(0)
    batch = {"x": torch.rand(2, 3, 16, 16, generator=gen), "input_ids": encode_prompts(plain, [CAT, "a car"])}
    batch |= {
        "id": torch.tensor([0, 1]),
        "t": torch.tensor([5, 700]),
        "noise": torch.randn(2, 4, 8, 8, generator=gen),
    }
    want = _grads(plain, batch)
    assert not calls
    got = _grads(ckpt, batch)
    assert calls  # the UNet's blocks were recomputed in the backward pass
    assert want.keys() == got.keys() and any(n.startswith("text_encoder.") for n in got)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)
    calls.clear()  # the text encoder (AdvUnlearn trains it) recomputes each of its layers
    ckpt.text_encoder(input_ids=batch["input_ids"]).last_hidden_state.sum().backward()
    assert len(calls) == ckpt.text_encoder.config.num_hidden_layers


def test_attention_slicing_samples_the_same_images(sd):
    m = load_sd(sd)
    ids = encode_prompts(m, [CAT])
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    want = ddim_sample(m, ids, 7.5, 3, x_T=x_T)
    apply_memory_options(m, attention_slicing="max")
    procs = {type(p).__name__ for p in m.unet.attn_processors.values()}
    assert procs == {"SlicedAttnProcessor"}
    torch.testing.assert_close(ddim_sample(m, ids, 7.5, 3, x_T=x_T), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("preset", "trained"), [("diffusion/esd", "unet."), ("diffusion/advunlearn", "text_encoder.")]
)
def test_frozen_parts_carry_no_gradient_and_no_optimizer_state(sd, tmp_path, monkeypatch, preset, trained):
    """ESD-x trains UNet cross-attention only, AdvUnlearn the text encoder only; the VAE is never trained.
    With gradient checkpointing on, the run gives the same weights as without it."""
    seen: dict[str, object] = {}
    real = loop._Fit.prepare

    def spy(self, model, *a, **kw):
        real(self, model, *a, **kw)
        in_opt = {id(p) for g in self.inner_opt.param_groups for p in g["params"]}
        seen["frozen"] = [(n, id(p)) for n, p in model.named_parameters() if not p.requires_grad]
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["in_opt"], seen["model"] = in_opt, model

    monkeypatch.setattr(loop._Fit, "prepare", spy)
    calls = _count_checkpoints(monkeypatch)
    outs = []
    for ckpt in ("false", "true"):
        out = tmp_path / f"run-{ckpt}"
        rc = main(
            ["unlearn", "--preset", preset, f"model.path={sd}", f"split.concept={CAT}", "--out", str(out)]
            + [
                "method.epochs=2",
                "method.ddim_steps=2",
                "eval.judge=none",
                "eval.per_prompt=1",
                "eval.steps=1",
            ]
            + [f"model.gradient_checkpointing={ckpt}"]
        )
        assert rc == 0
        model = seen["model"]
        frozen_ids = {i for _, i in seen["frozen"]}
        assert seen["trainable"] and all(n.startswith(trained) for n in seen["trainable"])
        assert {n.split(".")[0] for n, _ in seen["frozen"]} == {"unet", "text_encoder"}
        assert not frozen_ids & seen["in_opt"] and len(seen["in_opt"]) == len(seen["trainable"])
        vae = list(model.vae.parameters())
        assert not any(p.requires_grad or p.grad is not None or id(p) in seen["in_opt"] for p in vae)
        params = dict(model.named_parameters())
        assert all(params[n].grad is None for n, _ in seen["frozen"])
        outs.append(load_file(out / "model.safetensors"))
        assert bool(calls) == (ckpt == "true")  # only the second run recomputed activations
    for k in outs[0]:
        torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(v, load_sd(sd).state_dict()[k]) for k, v in outs[0].items())


def test_fmn_refuses_gradient_checkpointing_before_training(sd, tmp_path, capsys):
    out = tmp_path / "fmn"
    rc = main(
        ["unlearn", "--preset", "diffusion/fmn", f"model.path={sd}", f"split.concept={CAT}"]
        + ["--out", str(out), "model.gradient_checkpointing=true", "eval.judge=none"]
    )
    err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error")]
    assert rc == 2 and len(err) == 1 and "remove model.gradient_checkpointing" in err[0] and not out.exists()
