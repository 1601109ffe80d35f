"""MultiScaleVQTokenizer: VAR's quantiser step by step against an independent transcription, plus the tokenizer contract."""

from pathlib import Path

import pytest
import torch
import yaml
from var_reference import (
    var_next_autoregressive_input,
    var_phi_slot,
    var_quantize,
    var_teacher_forcing_input,
)

from mmgen.hub import config_from_dict
from tokenizers_visual.multiscale_vq import (
    MultiScaleResidualQuantizer,
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    phi_indices,
)

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

QUANTIZER_CASES = {
    # VAR's 256px setting: 10 scales on a 16x16 latent, V=4096, Cvae=32, 4 partially shared φ.
    "var-10-scales-K4": dict(codebook_size=4096, codebook_dim=32, patch_nums=VAR_PATCH_NUMS, share_quant_resi=4),
    "small-K1-shared": dict(codebook_size=64, codebook_dim=8, patch_nums=(1, 2, 4), share_quant_resi=1),
    "small-K0-non-shared": dict(codebook_size=64, codebook_dim=8, patch_nums=(1, 2, 3, 4), share_quant_resi=0),
    "tie-K2-znorm": dict(codebook_size=64, codebook_dim=8, patch_nums=(1, 2, 3), share_quant_resi=2, using_znorm=True),
    "identity-phi": dict(codebook_size=64, codebook_dim=8, patch_nums=(2, 4, 6), share_quant_resi=3, quant_resi=0.0),
}


def reference_weights(quantizer: MultiScaleResidualQuantizer):
    phis = None if isinstance(quantizer.phis[0], torch.nn.Identity) else [(p.weight, p.bias) for p in quantizer.phis]
    return quantizer.embedding.weight, phis


def build_quantizer(case: dict) -> MultiScaleResidualQuantizer:
    torch.manual_seed(0)
    quantizer = MultiScaleResidualQuantizer(**{"quant_resi": 0.5, **case})
    for phi in quantizer.phis:  # default conv init is small; make φ matter in the comparison
        if not isinstance(phi, torch.nn.Identity):
            torch.nn.init.normal_(phi.weight, std=0.1)
            torch.nn.init.normal_(phi.bias, std=0.1)
    return quantizer


def reference_kwargs(case: dict, quantizer: MultiScaleResidualQuantizer) -> dict:
    codebook, phis = reference_weights(quantizer)
    return dict(codebook_VC=codebook, phi_params=phis, patch_nums=case["patch_nums"],
                quant_resi=case.get("quant_resi", 0.5), share_quant_resi=case["share_quant_resi"])


@pytest.mark.parametrize("name", list(QUANTIZER_CASES))
def test_quantizer_matches_var_transcription_step_by_step(name):
    case = QUANTIZER_CASES[name]
    quantizer = build_quantizer(case)
    size = case["patch_nums"][-1]
    f = torch.randn(2, case["codebook_dim"], size, size, generator=torch.Generator().manual_seed(1))
    f_ours = f.clone().requires_grad_(True)
    f_ref = f.clone().requires_grad_(True)

    out = quantizer(f_ours, return_f_hats=True)
    ref_ids, ref_f_hats, ref_loss, ref_ste = var_quantize(
        f_ref, using_znorm=case.get("using_znorm", False), beta=0.25, **reference_kwargs(case, quantizer)
    )
    assert len(out.ids) == len(ref_ids) == len(case["patch_nums"])
    for si, pn in enumerate(case["patch_nums"]):
        assert out.ids[si].shape == (2, pn, pn) and out.ids[si].dtype == torch.long
        assert torch.equal(out.ids[si].reshape(2, -1), ref_ids[si]), f"ids differ at scale {si}"
        assert torch.allclose(out.f_hats[si], ref_f_hats[si], atol=1e-5), f"f_hat differs at scale {si}"
    assert torch.allclose(out.f_hat_BChw, ref_ste, atol=1e-5)
    assert torch.allclose(out.vq_loss, ref_loss, atol=1e-6)
    assert out.ids[-1].unique().numel() > 4  # a non-trivial comparison: many different codes chosen

    # same gradients through the loss and the straight-through output
    (out.vq_loss + out.f_hat_BChw.square().sum()).backward()
    ours = [f_ours.grad] + [p.grad.clone() for p in quantizer.parameters()]
    quantizer.zero_grad()
    (ref_loss + ref_ste.square().sum()).backward()
    theirs = [f_ref.grad] + [p.grad for p in quantizer.parameters()]
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)

    # decoding the ids gives the same f_hat after every scale
    for si, f_hat in enumerate(quantizer.ids_to_f_hats(out.ids)):
        assert torch.allclose(f_hat, ref_f_hats[si], atol=1e-5)


@pytest.mark.parametrize("name", ["var-10-scales-K4", "small-K0-non-shared", "identity-phi"])
def test_next_scale_inputs_match_var_and_each_other(name):
    case = QUANTIZER_CASES[name]
    quantizer = build_quantizer(case)
    config = MultiScaleVQConfig(image_size=case["patch_nums"][-1] * 2, channels=8, channel_mult=(1, 1), **case)
    tok = MultiScaleVQTokenizer(config).eval()
    tok.quantizer.load_state_dict(quantizer.state_dict())
    pns = case["patch_nums"]
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(0, case["codebook_size"], (2, pn, pn), generator=g) for pn in pns]
    kwargs = reference_kwargs(case, quantizer)
    with torch.no_grad():
        teacher = tok.ids_to_next_scale_inputs(ids)
        assert teacher.shape == (2, tok.num_tokens - pns[0] ** 2, case["codebook_dim"])
        assert torch.allclose(teacher, var_teacher_forcing_input([i.reshape(2, -1) for i in ids], **kwargs), atol=1e-5)
        assert torch.equal(teacher, tok.ids_to_next_scale_inputs(tok.flatten_ids(ids)))

        f_hat, ref_f_hat, stepped = None, torch.zeros(2, case["codebook_dim"], pns[-1], pns[-1]), []
        for si in range(len(pns)):
            codes = tok.ids_to_codes(ids[si].reshape(2, -1), scale_index=si)
            f_hat, next_input = tok.next_scale_input(scale_index=si, f_hat=f_hat, codes_BChw=codes)
            ref_f_hat, ref_next = var_next_autoregressive_input(si, len(pns), ref_f_hat, codes.clone(), **{
                k: v for k, v in kwargs.items() if k != "codebook_VC"})
            assert torch.allclose(f_hat, ref_f_hat, atol=1e-5)
            if si == len(pns) - 1:
                assert next_input is None
            else:
                assert torch.allclose(next_input, ref_next.flatten(2).transpose(1, 2), atol=1e-5)
                stepped.append(next_input)
        assert torch.allclose(torch.cat(stepped, dim=1), teacher, atol=1e-6)
        assert torch.allclose(f_hat, tok.ids_to_f_hat(ids), atol=1e-6)


def test_phi_ticks_rule():
    # scales 2 and 7 sit (nearly) halfway between two ticks; VAR's float64 arithmetic decides
    assert phi_indices(VAR_PATCH_NUMS, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_indices(VAR_PATCH_NUMS, 0) == tuple(range(10))
    assert phi_indices(VAR_PATCH_NUMS, 1) == (0,) * 10
    assert phi_indices((1, 2, 3), 2) == (0, 0, 1)  # the middle scale ties; the first tick wins, as np.argmin
    for K in (0, 1, 2, 3, 4, 5):
        SN = len(VAR_PATCH_NUMS)
        assert phi_indices(VAR_PATCH_NUMS, K) == tuple(var_phi_slot(si / (SN - 1), K, SN) for si in range(SN))
    with pytest.raises(ValueError, match="gives φ"):
        phi_indices((1, 2), 3)


def tiny_config(**overrides) -> MultiScaleVQConfig:
    return MultiScaleVQConfig(**{**dict(image_size=16, channels=8, channel_mult=(1, 2), codebook_size=32, codebook_dim=8,
                                        patch_nums=(1, 2, 4, 8), share_quant_resi=2), **overrides})


def tiny_tokenizer(**overrides) -> MultiScaleVQTokenizer:
    torch.manual_seed(0)
    return MultiScaleVQTokenizer(tiny_config(**overrides)).eval()


def images(batch=2, size=16):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_round_trip_shapes_flat_form_and_layout():
    tok = tiny_tokenizer()
    x = images()
    ids = tok.encode(x)
    assert [tuple(i.shape) for i in ids] == [(2, pn, pn) for pn in (1, 2, 4, 8)]
    assert all(i.dtype == torch.long and int(i.max()) < tok.codebook_size for i in ids)
    flat = tok.encode_flat(x)
    assert flat.shape == (2, tok.num_tokens) == (2, 1 + 4 + 16 + 64)
    assert torch.equal(flat, tok.flatten_ids(ids))
    assert all(torch.equal(a, b) for a, b in zip(tok.unflatten_ids(flat), ids))
    rec = tok.decode(ids)
    assert rec.shape == x.shape and rec.dtype == x.dtype and rec.abs().max() <= 1
    assert torch.equal(rec, tok.decode(flat))

    layout = tok.layout()
    assert layout.seq_len == tok.num_tokens and layout.content.codebook_sizes == (32,)
    layout.content.check_ids(flat)
    # flat position p of scale k holds ids[k][y, x] with (y, x) = divmod(p - start_k, pn_k)
    start = 0
    for k, pn in enumerate(tok.patch_nums):
        assert torch.equal(layout.groups[0, start:start + pn * pn], torch.full((pn * pn,), k))
        assert torch.equal(flat[:, start:start + pn * pn], ids[k].reshape(2, -1))
        yy, xx = layout.coords[0, start:start + pn * pn, 1:].reshape(pn, pn, 2).unbind(-1)
        assert bool((yy == yy[:, :1]).all() and (xx == xx[:1, :]).all())  # row-major: y is constant along a row
        start += pn * pn


def test_encode_matches_training_forward_and_f_hat():
    tok = tiny_tokenizer()
    x = images()
    with torch.no_grad():
        rec, quant = tok(x)
        assert all(torch.equal(a, b) for a, b in zip(quant.ids, tok.encode(x)))
        f_hat = tok.ids_to_f_hat(quant.ids)
        assert torch.allclose(f_hat, quant.f_hat_BChw, atol=1e-5)
        assert torch.allclose(tok.decode_f_hat(f_hat), rec.clamp(-1, 1), atol=1e-5)
        per_scale = tok.ids_to_f_hat(quant.ids, every_scale=True)
        assert len(per_scale) == 4 and torch.equal(per_scale[-1], f_hat)


def test_save_load_identical(tmp_path):
    tok = tiny_tokenizer(codebook_init=-1.0, share_quant_resi=0)
    tok.train()
    tok.loss(images())  # moves the usage EMA so that the buffers are saved too
    tok.eval()
    tok.save_pretrained(tmp_path)
    loaded = MultiScaleVQTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tok.cfg
    x = images()
    assert all(torch.equal(a, b) for a, b in zip(tok.encode(x), loaded.encode(x)))
    with torch.no_grad():
        assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))
    assert torch.equal(tok.quantizer.ema_hits_SV, loaded.quantizer.ema_hits_SV)
    assert int(loaded.quantizer.hit_updates) == 4


def test_training_step_reaches_every_part_and_tracks_usage():
    tok = tiny_tokenizer(codebook_init=-1.0, l1_weight=0.5).train()
    loss, logs = tok.loss(images())
    assert set(logs) == {"rec", "vq", "usage", "restarted"} and 0 < logs["usage"] <= 1 and logs["restarted"] == 0
    loss.backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert int(tok.quantizer.hit_updates) == 4
    # VAR's counter runs over scales: only scale 0 of the first step copies its hits, the rest take 0.1 of them
    assert torch.allclose(tok.quantizer.ema_hits_SV.sum(dim=1), torch.tensor([2.0, 0.8, 3.2, 12.8]))
    usage = tok.quantizer.scale_usage(batch_size=2)
    assert len(usage) == 4 and all(0 < u <= 1 for u in usage)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    opt.step()


def test_dead_codes_restart_onto_batch_residuals():
    tok = tiny_tokenizer(codebook_init=-1.0, dead_code_steps=2, codebook_size=256).train()
    before = tok.codebook.detach().clone()
    _, logs = tok.loss(images())
    assert logs["restarted"] == 0 and torch.equal(tok.codebook, before)  # idle for 1 step only
    _, quant = tok(images())
    seen = torch.zeros(256, dtype=torch.bool)
    for ids in quant.ids:
        seen[ids.flatten()] = True
    moved = (tok.codebook != before).any(dim=1)
    assert 0 < tok.quantizer.last_restarted == int(moved.sum()) and not bool((moved & seen).any())
    # a restarted code is a (scale-downsampled) residual of the batch: not the tiny init any more
    assert bool((tok.codebook[moved].abs().amax(dim=1) > 1.0 / 256).all())
    assert int(tok.quantizer.idle_steps_V[moved].max()) == 0
    tok.eval()
    tok(images())  # eval never restarts
    assert tok.quantizer.last_restarted == int(moved.sum())


def test_bad_images():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        tok.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
        tok.encode(torch.zeros(1, 3, 15, 15))
    with pytest.raises(ValueError, match="must be 16x16 for this tokenizer"):
        tok.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        tok.encode(torch.full((1, 3, 16, 16), 255.0))
    with pytest.raises(TypeError, match="float tensor"):
        tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_bad_ids():
    tok = tiny_tokenizer()
    ids = tok.encode(images())
    with pytest.raises(ValueError, match=r"outside the codebook \[0, 32\)"):
        tok.decode([ids[0], ids[1], ids[2], torch.full_like(ids[3], 32)])
    with pytest.raises(ValueError, match="outside the codebook"):
        tok.decode(torch.full((2, tok.num_tokens), -1))
    with pytest.raises(ValueError, match="list of 4 per-scale tensors"):
        tok.decode(ids[:3])
    with pytest.raises(ValueError, match=r"ids\[2\] must have shape \[B, 4, 4\]"):
        tok.decode([ids[0], ids[1], ids[1], ids[3]])
    with pytest.raises(ValueError, match=r"flat ids must have shape \[B, 85\]"):
        tok.decode(torch.zeros(2, 84, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        tok.decode([i.float() for i in ids])
    with pytest.raises(ValueError, match=r"codes of scale 1 must have shape \[B, 8, 2, 2\]"):
        tok.next_scale_input(scale_index=1, f_hat=None, codes_BChw=torch.zeros(2, 8, 3, 3))


@pytest.mark.parametrize("overrides, message", [
    (dict(patch_nums=(1, 4, 2, 8)), "strictly increasing"),
    (dict(patch_nums=(1, 2, 4)), r"patch_nums\[-1\]=4 must equal the latent grid size"),
    (dict(patch_nums=(8,)), "at least two scales"),
    (dict(patch_nums=(0, 8)), r"patch_nums\[0\] must be a positive int"),
    (dict(image_size=15), "divisible by the downsampling factor"),
    (dict(share_quant_resi=-1), "share_quant_resi must be an int >= 0"),
    (dict(share_quant_resi=8), "gives φ"),
    (dict(quant_resi=1.5), r"quant_resi must lie in \[0, 1\]"),
    (dict(codebook_size=0), "codebook_size must be a positive int"),
    (dict(dead_code_steps=-1), "dead_code_steps must be an int >= 0"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_preset_builds_and_round_trips():
    preset = Path(__file__).resolve().parents[1] / "configs" / "tokenizers" / "multiscale-shapes32.yaml"
    values = yaml.safe_load(preset.read_text())
    assert values.pop("class") == "MultiScaleVQTokenizer"
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(config_from_dict(MultiScaleVQConfig, values, source=str(preset))).eval()
    x = images(batch=1, size=32)
    flat = tok.encode_flat(x)
    assert flat.shape == (1, 130) and tok.layout().seq_len == 130
    assert tok.decode(flat).shape == x.shape
