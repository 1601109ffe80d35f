"""NextScalePipeline: VAR-style generation (one GPT step per scale), CFG ramp, save/load, training, checks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from mmgen import GPT, GPTConfig
from mmgen.sampling import GuidanceSchedule
from pipelines.base import ARImagePipelineOutput
from pipelines.next_scale import NextScalePipeline, ScaleDraw
from tokenizers_visual import (
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    VQConfig,
    VQImageTokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH_NUMS = (1, 2, 4)
NUM_TOKENS = sum(pn * pn for pn in PATCH_NUMS)
CODEBOOK, CODE_DIM, IMAGE = 32, 4, 16


def tiny_tokenizer(**overrides) -> MultiScaleVQTokenizer:
    torch.manual_seed(0)
    config = {"image_size": IMAGE, "channels": 8, "channel_mult": (1, 1, 1), "codebook_size": CODEBOOK,
              "codebook_dim": CODE_DIM, "patch_nums": PATCH_NUMS, "share_quant_resi": 0}
    return MultiScaleVQTokenizer(MultiScaleVQConfig(**{**config, **overrides})).eval()


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(1)
    config = {"vocab_size": CODEBOOK, "dim": 32, "n_layers": 1, "n_heads": 2, "coord_rank": 3,
              "input_dim": CODE_DIM, "num_classes": 5, "start_token": True, "max_seq_len": 32}
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def tiny_pipe(**kwargs) -> NextScalePipeline:
    pipe = NextScalePipeline(gpt=tiny_gpt(), tokenizer=tiny_tokenizer(), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def count_gpt_forwards(pipe: NextScalePipeline) -> list[int]:
    """Wrap the GPT trunk; the returned list gets each call's sequence length."""
    lengths: list[int] = []
    trunk = pipe.gpt.hidden_states

    def counted(x, **kwargs):
        lengths.append(x.shape[1])
        return trunk(x, **kwargs)

    pipe.gpt.hidden_states = counted
    return lengths


# ---- outputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "tokens"])
def test_output_types_have_the_right_shapes_and_ranges(output_type):
    pipe = tiny_pipe()
    out = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(0), output_type=output_type)
    assert isinstance(out, ARImagePipelineOutput)
    assert out.tokens.shape == (2, NUM_TOKENS) and out.tokens.dtype == torch.long
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < CODEBOOK
    if output_type == "pil":
        assert len(out.images) == 2
        assert all(isinstance(im, PIL.Image.Image) and im.size == (IMAGE, IMAGE) and im.mode == "RGB" for im in out.images)
    elif output_type == "np":
        assert isinstance(out.images, np.ndarray) and out.images.shape == (2, IMAGE, IMAGE, 3)
        assert out.images.min() >= 0 and out.images.max() <= 1
    elif output_type == "pt":
        assert isinstance(out.images, torch.Tensor) and out.images.shape == (2, 3, IMAGE, IMAGE)
        assert out.images.min() >= 0 and out.images.max() <= 1
    else:
        assert out.images is None


def test_images_are_the_tokenizer_decoding_of_the_tokens():
    pipe = tiny_pipe()
    out = pipe(class_labels=[2], generator=torch.Generator().manual_seed(0), output_type="pt")
    with torch.no_grad():
        expected = (pipe.tokenizer.decode(out.tokens) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out.images, expected)


def test_return_dict_false_gives_images_and_tokens():
    pipe = tiny_pipe()
    images, tokens = pipe(class_labels=1, generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False)
    assert images.shape == (1, 3, IMAGE, IMAGE) and tokens.shape == (1, NUM_TOKENS)


def test_unknown_output_type_is_refused():
    with pytest.raises(ValueError, match="output_type must be one of"):
        tiny_pipe()(class_labels=1, output_type="latent")


# ---- seeds -------------------------------------------------------------------------------------------
def test_same_seed_same_output_and_different_seeds_differ():
    pipe = tiny_pipe()
    a = pipe(class_labels=[1, 1], generator=torch.Generator().manual_seed(7), output_type="pt")
    b = pipe(class_labels=[1, 1], generator=torch.Generator().manual_seed(7), output_type="pt")
    c = pipe(class_labels=[1, 1], generator=torch.Generator().manual_seed(8), output_type="tokens")
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens[0], a.tokens[1]), "two samples of one call must not share their draws"


def test_a_sample_does_not_depend_on_the_rest_of_its_batch():
    pipe = tiny_pipe()
    batch = pipe(class_labels=[1, 2, 3], generator=seeded(0, 1, 2), output_type="tokens").tokens
    alone = pipe(class_labels=[2], generator=seeded(1), output_type="tokens").tokens
    assert torch.equal(batch[1], alone[0])


def test_prompts_select_classes_by_name():
    pipe = tiny_pipe(class_names=["a", "b", "c", "d", "e"])
    by_name = pipe(prompt=["b", " D "], generator=seeded(3, 4), output_type="tokens").tokens
    by_id = pipe(class_labels=[1, 3], generator=seeded(3, 4), output_type="tokens").tokens
    assert torch.equal(by_name, by_id)


def test_num_samples_per_prompt_repeats_each_class():
    pipe = tiny_pipe()
    repeated = pipe(class_labels=[0, 3], num_samples_per_prompt=2, generator=seeded(0, 1, 2, 3), output_type="tokens").tokens
    listed = pipe(class_labels=[0, 0, 3, 3], generator=seeded(0, 1, 2, 3), output_type="tokens").tokens
    assert repeated.shape == (4, NUM_TOKENS) and torch.equal(repeated, listed)


# ---- one step per scale ------------------------------------------------------------------------------
def test_one_gpt_forward_and_one_callback_per_scale():
    pipe = tiny_pipe()
    lengths = count_gpt_forwards(pipe)
    calls: list[tuple[int, int, ScaleDraw]] = []

    def callback(p, step, timestep, kwargs):
        calls.append((step, timestep, kwargs["tokens"]))
        return {}

    out = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="tokens",
               callback_on_step_end=callback)
    prefix = 1  # the class token
    assert lengths == [prefix + PATCH_NUMS[0] ** 2] + [pn * pn for pn in PATCH_NUMS[1:]]
    assert [(step, timestep) for step, timestep, _ in calls] == [(k, k) for k in range(len(PATCH_NUMS))]
    drawn = torch.cat([draw.ids_Bn for _, _, draw in calls], dim=1)
    assert torch.equal(drawn, out.tokens)
    assert calls[-1][2].f_hat_BChw.shape == (2, CODE_DIM, PATCH_NUMS[-1], PATCH_NUMS[-1])


def test_callback_sees_the_reconstruction_of_the_scales_so_far():
    pipe = tiny_pipe()
    draws: list[ScaleDraw] = []
    out = pipe(class_labels=[4], generator=torch.Generator().manual_seed(0), output_type="tokens",
               callback_on_step_end=lambda p, step, t, kw: draws.append(kw["tokens"]) or {})
    with torch.no_grad():
        expected = pipe.tokenizer.ids_to_f_hat(out.tokens, every_scale=True)
    for draw, f_hat in zip(draws, expected):
        torch.testing.assert_close(draw.f_hat_BChw, f_hat)


# ---- guidance ----------------------------------------------------------------------------------------
def test_var_guidance_ramp_rises_linearly_over_the_scales():
    pipe = tiny_pipe(null_condition_trained=True)
    scales: list[float] = []
    draw = pipe.draw_group

    def recording(group, hidden, *, guidance, **kwargs):
        scales.append(guidance)
        return draw(group, hidden, guidance=guidance, **kwargs)

    pipe.draw_group = recording
    lengths = count_gpt_forwards(pipe)
    guided = pipe(class_labels=[1, 2], guidance_scale=GuidanceSchedule.from_var(cfg=4.0),
                  generator=seeded(0, 1), output_type="pt")
    assert scales == pytest.approx([1.0, 3.0, 5.0])
    assert len(lengths) == len(PATCH_NUMS)
    assert guided.images.shape == (2, 3, IMAGE, IMAGE)
    plain = pipe(class_labels=[1, 2], generator=seeded(0, 1), output_type="tokens").tokens
    first = PATCH_NUMS[0] ** 2
    assert torch.equal(guided.tokens[:, :first], plain[:, :first]), "VAR's ramp does not guide the first scale"
    assert not torch.equal(guided.tokens, plain)


def test_constant_guidance_changes_the_draws():
    pipe = tiny_pipe(null_condition_trained=True)
    plain = pipe(class_labels=[1, 2], generator=seeded(0, 1), output_type="tokens").tokens
    guided = pipe(class_labels=[1, 2], guidance_scale=6.0, generator=seeded(0, 1), output_type="tokens").tokens
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_guidance_needs_a_null_condition_trained_model():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match="null_condition_trained"):
        pipe(class_labels=[1], guidance_scale=2.0)
    with pytest.raises(ValueError, match="null_condition_trained"):
        pipe(class_labels=[1], guidance_scale=GuidanceSchedule.from_var(cfg=1.5))


# ---- save / load -------------------------------------------------------------------------------------
@pytest.mark.parametrize("load", [
    NextScalePipeline.from_pretrained,
    lambda folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True),
], ids=["NextScalePipeline", "DiffusionPipeline"])
def test_save_and_load_gives_the_same_samples(tmp_path, load):
    pipe = tiny_pipe(class_names=["a", "b", "c", "d", "e"], null_condition_trained=True)
    pipe.save_pretrained(tmp_path)
    expected = pipe(class_labels=[0, 3], guidance_scale=2.0, generator=seeded(5, 6), output_type="pt")
    loaded = load(tmp_path)
    assert isinstance(loaded, NextScalePipeline)
    assert loaded.config.class_names == ["a", "b", "c", "d", "e"] and loaded.config.null_condition_trained
    loaded.set_progress_bar_config(disable=True)
    out = loaded(prompt=["a", "d"], guidance_scale=2.0, generator=seeded(5, 6), output_type="pt")
    assert torch.equal(out.tokens, expected.tokens)
    torch.testing.assert_close(out.images, expected.images)


# ---- training ----------------------------------------------------------------------------------------
def test_tokenize_gives_flat_ids_in_layout_order():
    pipe = tiny_pipe()
    images = torch.rand(3, 3, IMAGE, IMAGE) * 2 - 1
    ids = pipe.tokenize(images)
    assert ids.shape == (3, NUM_TOKENS)
    assert torch.equal(ids, pipe.tokenizer.flatten_ids(pipe.tokenizer.encode(images)))
    assert pipe.body_layout().seq_len == NUM_TOKENS


def test_loss_is_finite_and_falls_with_training():
    pipe = tiny_pipe()
    pipe.gpt.train()
    ids = pipe.tokenize(torch.rand(4, 3, IMAGE, IMAGE) * 2 - 1)
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(pipe.gpt.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, logs = pipe.loss(ids, class_labels=labels, cond_drop_prob=0.0)
        assert torch.isfinite(loss) and set(logs) == {"ce", "accuracy"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert not pipe.config.null_condition_trained


def test_condition_dropout_marks_the_pipeline_null_condition_trained():
    pipe = tiny_pipe()
    ids = pipe.tokenize(torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1)
    loss, _ = pipe.loss(ids, class_labels=torch.tensor([0, 1]), cond_drop_prob=0.5,
                        generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert pipe.config.null_condition_trained


def test_teacher_inputs_are_what_greedy_generation_fed_the_gpt():
    pipe = tiny_pipe()
    fed: list[torch.Tensor] = []
    trunk = pipe.gpt.hidden_states
    pipe.gpt.hidden_states = lambda x, **kw: fed.append(x) or trunk(x, **kw)
    ids = pipe(class_labels=[1, 4], temperature=0.0, output_type="tokens").tokens
    pipe.gpt.hidden_states = trunk

    with torch.no_grad():
        prefix = pipe.gpt.embed_class(torch.tensor([1, 4]))
        inputs_BLD, targets = pipe.teacher_inputs(ids)
        hidden = pipe.gpt.hidden_states(torch.cat([prefix, inputs_BLD], dim=1), layout=pipe.body_layout().with_prefix(1))
    assert torch.equal(targets, ids)
    torch.testing.assert_close(torch.cat(fed, dim=1), torch.cat([prefix, inputs_BLD], dim=1))
    assert torch.equal(pipe.gpt.logits(hidden[:, 1:]).argmax(-1), ids)


def test_teacher_inputs_refuse_ids_of_the_wrong_shape():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match=rf"\[B, {NUM_TOKENS}\]"):
        pipe.teacher_inputs(torch.zeros(2, NUM_TOKENS - 1, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor of ids"):
        pipe.teacher_inputs([torch.zeros(2, 1, 1, dtype=torch.long)])


# ---- bad input ---------------------------------------------------------------------------------------
def test_construction_checks_the_tokenizer_against_the_gpt():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=rf"\(64,\).*codebook of {CODEBOOK}"):
        NextScalePipeline(gpt=tiny_gpt(vocab_size=64), tokenizer=tok)
    with pytest.raises(ValueError, match=rf"input_dim=8 .*codebook_dim={CODE_DIM}"):
        NextScalePipeline(gpt=tiny_gpt(input_dim=8), tokenizer=tok)
    with pytest.raises(ValueError, match="coord_rank=3, got 2"):
        NextScalePipeline(gpt=tiny_gpt(coord_rank=2), tokenizer=tok)
    with pytest.raises(ValueError, match="start_token=True"):
        NextScalePipeline(gpt=tiny_gpt(start_token=False), tokenizer=tok)
    single_scale = VQImageTokenizer(VQConfig(image_size=IMAGE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                             z_channels=8, codebook_size=CODEBOOK, codebook_dim=CODE_DIM))
    with pytest.raises(TypeError, match="MultiScaleVQTokenizer, got VQImageTokenizer"):
        NextScalePipeline(gpt=tiny_gpt(), tokenizer=single_scale)
    with pytest.raises(ValueError, match="class_names has 2 names"):
        NextScalePipeline(gpt=tiny_gpt(), tokenizer=tok, class_names=["a", "b"])


def test_bad_conditions_are_refused_with_a_reason():
    pipe = tiny_pipe(class_names=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="unknown class id 5"):
        pipe(class_labels=[1, 5])
    with pytest.raises(ValueError, match="prompt must not be empty"):
        pipe(prompt="  ")
    with pytest.raises(TypeError, match="got an item of type int"):
        pipe(prompt=["a", 3])
    with pytest.raises(ValueError, match="not one of the class names"):
        pipe(prompt="zebra")
    with pytest.raises(ValueError, match="not both"):
        pipe(prompt="a", class_labels=[0])
