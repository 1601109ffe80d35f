"""VQImageTokenizer: grid ids round trip, layout, save / load, eval-mode purity, dead-code restart, usage, errors."""

import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mmgen import DiscreteContent
from tokenizers_visual.vq import CosineVectorQuantizer, VQConfig, VQImageTokenizer

TINY = {"image_size": 32, "channels": 8, "z_channels": 8, "codebook_size": 16, "codebook_dim": 4}


def tiny_vq(**overrides) -> VQImageTokenizer:
    torch.manual_seed(0)
    return VQImageTokenizer(VQConfig(**{**TINY, **overrides}))


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a few blurred blobs) in [-1, 1]."""
    noise = torch.rand(batch, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def train_steps(tok: VQImageTokenizer, steps: int, x: torch.Tensor) -> list[dict[str, float]]:
    optimizer = torch.optim.Adam(tok.parameters(), lr=3e-3)
    tok.train()
    history = []
    for _ in range(steps):
        loss, logs = tok.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(logs)
    return history


# ---- round trip, layout, grids -----------------------------------------------------------------
def test_round_trip_shapes_and_dtypes():
    tok = tiny_vq().eval()
    x = images(3)
    ids = tok.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.codebook_size
    out = tok.decode(ids)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.detach().abs().max()) <= 1.0
    assert tok.decode_latents(tok.ids_to_latents(ids)).equal(out)


@pytest.mark.parametrize("downsample, grid", [(4, 8), (8, 4), (16, 2)])
def test_downsampling_factor_sets_the_grid(downsample, grid):
    tok = tiny_vq(downsample=downsample).eval()
    assert tok.cfg.channel_mult == {4: [1, 2, 2], 8: [1, 2, 2, 4], 16: [1, 1, 2, 2, 4]}[downsample]
    ids = tok.encode(images(1))
    assert ids.shape == (1, grid, grid)
    assert tok.decode(ids).shape == (1, 3, 32, 32)
    assert tok.layout().seq_len == grid * grid


def test_layout_describes_the_ids():
    tok = tiny_vq().eval()
    ids = tok.encode(images(2))
    layout = tok.layout()
    assert layout.content == DiscreteContent((16,))
    assert layout.seq_len == ids[0].numel() and layout.coord_rank == 2
    # raster order: position t of ids.reshape(B, -1) sits at (t // w, t % w)
    assert layout.coords[0, 9].tolist() == [1.0, 1.0] and layout.coords[0, -1].tolist() == [7.0, 7.0]
    layout.content.check_ids(ids.reshape(2, -1))
    assert tok.layout(image_size=64).seq_len == 16 * 16
    assert tok.encode(images(1, size=64)).shape == (1, 16, 16)


def test_save_and_load_give_identical_outputs(tmp_path):
    tok = tiny_vq()
    train_steps(tok, 2, images(2))
    tok.save_pretrained(tmp_path)
    loaded = VQImageTokenizer.from_pretrained(tmp_path)
    assert loaded.cfg == tok.cfg
    for name, buffer in tok.named_buffers():
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name
    tok.eval(), loaded.eval()
    x = images(2, seed=1)
    ids = tok.encode(x)
    assert torch.equal(ids, loaded.encode(x))
    with torch.no_grad():
        assert torch.equal(tok.decode(ids), loaded.decode(ids))
    assert tok.codebook_usage() == loaded.codebook_usage()


# ---- quantiser behaviour ------------------------------------------------------------------------
def test_eval_mode_is_deterministic_and_changes_nothing():
    tok = tiny_vq()
    train_steps(tok, 1, images(2))
    tok.eval()
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    x = images(4, seed=3)
    first = tok.encode(x)
    loss_a, logs_a = tok.loss(x)
    loss_b, _ = tok.loss(x)
    assert torch.equal(first, tok.encode(x))
    assert loss_a.item() == loss_b.item() and logs_a["restarted"] == 0.0
    for name, value in tok.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed in eval mode"
    tok.train()
    tok.encode(x)  # encode never touches the codebook or its statistics, whatever the mode
    for name, value in tok.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by encode"


def test_loss_trains_encoder_decoder_and_codebook():
    tok = tiny_vq()
    x = images(4)
    loss, logs = tok.loss(x)
    assert loss.dim() == 0 and set(logs) == {"rec", "codebook", "commit", "psnr", "usage", "restarted"}
    assert logs["restarted"] == 16.0  # every code starts dead: the first batch seeds the codebook
    assert loss.item() == pytest.approx(logs["rec"] + logs["codebook"] + 0.25 * logs["commit"], rel=1e-5)
    loss.backward()
    for name in ("encoder.conv_in.weight", "quantizer.embedding.weight", "decoder.conv_in.weight"):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    history = train_steps(tok, 25, x)
    assert history[-1]["rec"] < 0.7 * history[0]["rec"]


def quantizer_with_codes(codes: list[list[float]], **kwargs) -> CosineVectorQuantizer:
    vq = CosineVectorQuantizer(codebook_size=len(codes), dim=len(codes[0]), **kwargs)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor(codes))
    vq.steps_unused.zero_()  # as if trained: no code is dead yet
    return vq


def as_fmap(vectors: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` vectors → a ``[1, D, 1, N]`` feature map."""
    return vectors.t().reshape(1, vectors.shape[1], 1, -1)


def test_dead_code_restart_replaces_codes_no_batch_picks():
    vq = quantizer_with_codes([[1, 0], [0, 1], [-1, 0], [0, -1]], dead_code_steps=3)
    z = as_fmap(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.2], [1.0, 0.0]]))
    vq.train()
    for step in range(3):
        _, ids, _ = vq(z)
        assert ids.unique().tolist() == [0] and vq.last_restarted == 0
    assert vq.steps_unused.tolist() == [0, 3, 3, 3]
    _, ids, _ = vq(z)  # codes 1-3 have been idle for 3 steps: restarted from this batch's vectors
    assert vq.last_restarted == 3
    assert vq.embedding.weight[0].tolist() == [1.0, 0.0]
    batch_dirs = torch.nn.functional.normalize(z.reshape(2, -1).t(), dim=1)
    for code in vq.embedding.weight[1:]:
        assert torch.isclose(batch_dirs, code).all(dim=1).any(), "a restarted code must be one of the batch's vectors"
    assert len(ids.unique()) > 1  # the restarted codes now compete for the batch


def test_no_restart_when_disabled():
    vq = quantizer_with_codes([[1, 0], [0, 1]], dead_code_steps=1, restart_dead_codes=False)
    vq.train()
    z = as_fmap(torch.tensor([[1.0, 0.0]]))
    for _ in range(3):
        vq(z)
    assert vq.embedding.weight[1].tolist() == [0.0, 1.0] and vq.steps_unused.tolist() == [0, 3]


def test_usage_tracking_counts_assignments():
    vq = quantizer_with_codes([[1, 0], [0, 1], [-1, 0], [0, -1]], dead_code_steps=5, restart_dead_codes=False,
                              usage_decay=0.5)
    vq.train()
    _, ids, _ = vq(as_fmap(torch.tensor([[1.0, 0.0], [2.0, 0.1], [3.0, -0.1], [0.0, 1.0]])))
    assert ids.reshape(-1).tolist() == [0, 0, 0, 1]
    assert vq.usage_ema.tolist() == pytest.approx([0.375, 0.125, 0.0, 0.0])
    assert vq.steps_unused.tolist() == [0, 0, 1, 1]
    usage = vq.codebook_usage()
    assert usage["usage"] == 1.0  # nothing idle for 5 steps yet
    assert usage["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    for _ in range(5):
        vq(as_fmap(torch.tensor([[1.0, 0.0]])))
    assert vq.codebook_usage()["usage"] == 0.25  # codes 1-3 idle for >= 5 steps
    vq.eval()
    vq(as_fmap(torch.tensor([[0.0, -1.0]])))
    assert vq.steps_unused.tolist() == [0, 5, 6, 6], "eval mode must not update usage"


# ---- errors -------------------------------------------------------------------------------------
def test_bad_images_are_clear_errors():
    tok = tiny_vq().eval()
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        tok.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        tok.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        tok.encode(images(1) * 127.5 + 127.5)
    with pytest.raises(TypeError, match="float tensor"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible by the downsampling factor"):
        tok.loss(torch.zeros(1, 3, 34, 34))


def test_bad_ids_are_clear_errors():
    tok = tiny_vq().eval()
    with pytest.raises(ValueError, match=r"holds 16, outside the codebook \[0, 16\)"):
        tok.decode(torch.full((1, 8, 8), 16))
    with pytest.raises(ValueError, match="outside the codebook"):
        tok.decode(torch.full((1, 8, 8), -1))
    with pytest.raises(ValueError, match=r"shape \[B, h, w\]"):
        tok.decode(torch.zeros(1, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        tok.decode(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"latents must have shape \[B, 4, h, w\]"):
        tok.decode_latents(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="image_size=30 must be divisible"):
        tok.layout(image_size=30)


@pytest.mark.parametrize("field, value, message", [
    ("downsample", 2, "downsample must be one of"),
    ("channel_mult", [1, 2], r"gives downsampling 2, but downsample=4"),
    ("image_size", 36, "image_size=36 must be divisible by downsample=8"),
    ("codebook_size", 0, "codebook_size must be a positive int"),
    ("rec_loss", "l3", "rec_loss must be one of"),
    ("commitment_beta", -1.0, "commitment_beta must be >= 0"),
    ("usage_decay", 1.0, r"usage_decay must be in \[0, 1\)"),
])
def test_config_validation_names_the_field(field, value, message):
    overrides = {field: value, **({"downsample": 8} if field == "image_size" else {})}
    with pytest.raises(ValueError, match=message):
        VQConfig(**overrides)


DISTRIBUTED_WORKER = """
import sys, torch, torch.distributed as dist
from safetensors.torch import save_file
from tokenizers_visual.vq import CosineVectorQuantizer
rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
torch.manual_seed(0)
vq = CosineVectorQuantizer(codebook_size=8, dim=4, dead_code_steps=2).train()
torch.manual_seed(100 + rank)  # each process sees different data and draws different random picks
for _ in range(4):
    vq(torch.randn(2, 4, 3, 3))
save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, f"{folder}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


def test_distributed_processes_keep_one_codebook(tmp_path):
    """Two gloo processes with different batches: summed counts and rank-0 restarts keep their codebooks equal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED_WORKER, str(rank), str(tmp_path)], env=env,
                                stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    states = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), f"{name} differs between processes"
    torch.manual_seed(0)
    assert not torch.equal(states[0]["embedding.weight"], CosineVectorQuantizer(codebook_size=8, dim=4).embedding.weight)
