"""Bad input to the core library's public API (issue 11): each is a clear error naming the argument.

One row per check: ``(id, call, error, fragment)``. ``call(tmp)`` makes the call with one bad input
(``tmp`` is an empty folder); it must raise ``error`` whose message contains ``fragment``, the name of
the argument (case-sensitive). Ids are ``entry point/what is wrong``. Nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmgen import (
    GPT,
    ByteTextConditioner,
    CategoricalHead,
    CategoricalHeadConfig,
    ClassConditioner,
    ContinuousContent,
    Decoder,
    DepthHead,
    DepthHeadConfig,
    DiscreteContent,
    FlowHead,
    FlowHeadConfig,
    GPTConfig,
    GroupRequest,
    GuidanceSchedule,
    SamplingConfig,
    TextEncoderConditioner,
    TokenLayout,
    apply_guidance,
    filtered_probs,
    generate,
    sample,
)
from mmgen.conditioning import ByteTextConditionerConfig, ClassConditionerConfig, TextEncoderConditionerConfig
from mmgen.data import (
    AudioFolder,
    ImageFolder,
    PhotoCrops,
    ShapesDataset,
    SpeechClips,
    TonesDataset,
    class_id,
    class_parts,
    parse_caption,
    parse_tone_caption,
    render_shape,
    render_tone,
    resample,
    tone_class_id,
    tone_class_parts,
)
from mmgen.generation import draw_seeds
from mmgen.metrics import (codebook_usage, codebook_usage_per_level, feature_statistics, frechet_distance, judge_shape,
                           judge_shapes, judge_tone, judge_tones, mel_distance, prompt_adherence, psnr, si_sdr, ssim,
                           stft_distance, tone_adherence)
from mmgen.patterns import Cells, DelayCodebooks, FlattenCodebooks, Frames, Raster, Scales, Subsample
from mmgen.programs import PatternProgram, PreviousGroupInputs
from mmgen.text_encoders import write_word_level_bert

X = torch.zeros(3, 10)  # logits [N, V]
META = torch.device("meta")
LONG = torch.long
BOOL = torch.bool
DIM = 8


# ---- small builders (each row builds what it needs) ---------------------------------------------------
def gpt(**kwargs) -> GPT:
    return GPT(GPTConfig(**{"vocab_size": 5, "dim": DIM, "n_layers": 1, "n_heads": 2, "max_seq_len": 32,
                            "start_token": True, **kwargs}))


def categorical() -> CategoricalHead:
    return CategoricalHead(CategoricalHeadConfig(dim=DIM, codebook_sizes=[5]))


def flow() -> FlowHead:
    return FlowHead(FlowHeadConfig(latent_dim=4, cond_dim=DIM, width=8, depth=1, time_freq_dim=8))


def classes(dim: int = DIM) -> ClassConditioner:
    return ClassConditioner(ClassConditionerConfig(dim=dim, num_classes=3))


def byte_text() -> ByteTextConditioner:
    return ByteTextConditioner(ByteTextConditionerConfig(dim=DIM, max_len=4))


def head_sample(**kwargs):
    args = {"hidden_RnD": torch.zeros(1, 2, DIM), "sampling": SamplingConfig(), "guidance_scale": 1.0,
            "seeds_Bn": torch.zeros(1, 2, dtype=LONG), **kwargs}
    return categorical().sample(args.pop("hidden_RnD"), **args)


def request(rows: int = 1, n: int = 1) -> GroupRequest:
    return GroupRequest(torch.zeros(rows, n, DIM), torch.zeros(rows, n, 1), torch.ones(rows, n, dtype=BOOL))


def decoder(capacity: int = 4, cond_dim: int = DIM) -> Decoder:
    return Decoder(gpt(), classes(cond_dim).condition(class_labels=[0]), capacity=capacity)


def run_generate(**kwargs):
    model, head = gpt(), categorical()
    program = PatternProgram(gpt=model, pattern=Raster((3,)), rule=PreviousGroupInputs(gpt=model, head=head))
    args = {"cond": classes().condition(class_labels=[0]), "sampling": SamplingConfig(),
            "seeds_B": torch.zeros(1, dtype=LONG), "capacity": 3, **kwargs}
    return generate(model, head, program, args.pop("cond"), **args)


def shapes(n: int = 2) -> torch.Tensor:
    return ShapesDataset(length=21).batch(range(n))["image"]


def tone() -> torch.Tensor:
    """One C4 tone ``[1, 1, T]``, 1 s at 16 kHz."""
    return render_tone("tone", "C4")[None]


def wave(*shape: int) -> torch.Tensor:
    return torch.sin(torch.arange(shape[-1]) / 5.0).expand(*shape) * 0.5


# ---- the table -------------------------------------------------------------------------------------------
ROWS = [
    # mmgen.sampling.sample
    ("sample/logits=list", lambda tmp: sample([[0.0, 1.0]]), TypeError, "logits"),
    ("sample/logits=3-D", lambda tmp: sample(torch.zeros(2, 3, 10)), ValueError, "logits"),
    ("sample/logits=ints", lambda tmp: sample(torch.zeros(3, 10, dtype=LONG)), TypeError, "logits"),
    ("sample/logits=NaN", lambda tmp: sample(torch.full((2, 4), float("nan"))), ValueError, "logits"),
    ("sample/uncond_logits=other-device", lambda tmp: sample(X, uncond_logits=torch.zeros(3, 10, device=META),
                                                             guidance_scale=2.0), ValueError, "uncond_logits"),
    ("sample/guidance_scale=str", lambda tmp: sample(X, uncond_logits=X, guidance_scale="high"), TypeError, "guidance_scale"),
    ("sample/guidance_scale-without-uncond", lambda tmp: sample(X, guidance_scale=2.0), ValueError, "uncond_logits"),
    ("sample/top_k>V", lambda tmp: sample(X, top_k=11), ValueError, "top_k"),
    ("sample/top_k=float", lambda tmp: sample(X, top_k=2.0), TypeError, "top_k"),
    ("sample/top_p=0", lambda tmp: sample(X, top_p=0.0), ValueError, "top_p"),
    ("sample/min_p-row-out-of-range", lambda tmp: sample(X, min_p=torch.tensor([0.0, 2.0, 0.0])), ValueError, "min_p"),
    ("sample/temperature-rows=4-for-3", lambda tmp: sample(X, temperature=torch.ones(4)), ValueError, "temperature"),
    ("sample/temperature-rows=ints", lambda tmp: sample(X, temperature=torch.ones(3, dtype=LONG)), TypeError, "temperature"),
    ("sample/seed=float", lambda tmp: sample(X, seed=1.5), TypeError, "seed"),
    ("sample/seed-and-generator", lambda tmp: sample(X, seed=1, generator=torch.Generator()), ValueError, "generator"),
    ("sample/num_samples=0", lambda tmp: sample(X, num_samples=0), ValueError, "num_samples"),
    ("sample/backend=gpu", lambda tmp: sample(X, backend="gpu"), ValueError, "backend"),
    # mmgen.sampling.filtered_probs
    ("filtered_probs/logits-row-all-masked", lambda tmp: filtered_probs(torch.full((2, 4), float("-inf"))), ValueError, "logits"),
    ("filtered_probs/guidance_scale=list", lambda tmp: filtered_probs(X, uncond_logits=X, guidance_scale=[2.0]),
     TypeError, "guidance_scale"),
    # SamplingConfig
    ("SamplingConfig/guidance_scale=str", lambda tmp: SamplingConfig(guidance_scale="high"), TypeError, "guidance_scale"),
    ("SamplingConfig/guidance_scale=tensor", lambda tmp: SamplingConfig(guidance_scale=torch.ones(3)), TypeError,
     "guidance_scale"),
    ("SamplingConfig/top_k<0", lambda tmp: SamplingConfig(top_k=-1), ValueError, "top_k"),
    ("SamplingConfig/guidance_schedule=cosine", lambda tmp: SamplingConfig(guidance_schedule="cosine"), ValueError,
     "guidance_schedule"),
    ("SamplingConfig/guidance_power=0", lambda tmp: SamplingConfig(guidance_power=0), ValueError, "guidance_power"),
    ("SamplingConfig/guidance_power=str", lambda tmp: SamplingConfig(guidance_power="2"), TypeError, "guidance_power"),
    ("SamplingConfig/guidance_interval=reversed", lambda tmp: SamplingConfig(guidance_interval=(0.5, 0.2)), ValueError,
     "guidance_interval"),
    ("SamplingConfig/guidance_interval=float", lambda tmp: SamplingConfig(guidance_interval=0.5), TypeError,
     "guidance_interval"),
    ("SamplingConfig/num_flow_steps=float", lambda tmp: SamplingConfig(num_flow_steps=2.5), ValueError, "num_flow_steps"),
    ("SamplingConfig/backend=gpu", lambda tmp: SamplingConfig(backend="gpu"), ValueError, "backend"),
    ("SamplingConfig.sample/guided-without-uncond", lambda tmp: SamplingConfig(guidance_scale=2.0).sample(X), ValueError,
     "uncond_logits"),
    ("SamplingConfig.guidance_scale_at/step=float", lambda tmp: SamplingConfig().guidance_scale_at(1.5, 3), ValueError,
     "step"),
    # GuidanceSchedule
    ("GuidanceSchedule/scale=str", lambda tmp: GuidanceSchedule(scale="high"), TypeError, "scale"),
    ("GuidanceSchedule/interval=one-value", lambda tmp: GuidanceSchedule(interval=(0.2,)), TypeError, "interval"),
    ("GuidanceSchedule.scale_at/num_steps=float", lambda tmp: GuidanceSchedule().scale_at(0, 2.5), ValueError, "num_steps"),
    ("GuidanceSchedule.scale_at/step=num_steps", lambda tmp: GuidanceSchedule().scale_at(4, 4), ValueError, "step"),
    ("GuidanceSchedule.from_llamagen/num_steps=0",
     lambda tmp: GuidanceSchedule.from_llamagen(cfg_scale=2.0, cfg_interval=1, num_steps=0), ValueError, "num_steps"),
    ("GuidanceSchedule.from_llamagen/cfg_interval=float",
     lambda tmp: GuidanceSchedule.from_llamagen(cfg_scale=2.0, cfg_interval=1.5, num_steps=8), TypeError, "cfg_interval"),
    ("GuidanceSchedule.from_var/cfg=str", lambda tmp: GuidanceSchedule.from_var(cfg="4"), TypeError, "cfg"),
    ("GuidanceSchedule.from_rar/guidance_scale_pow=0",
     lambda tmp: GuidanceSchedule.from_rar(guidance_scale=2.0, guidance_scale_pow=0), ValueError, "guidance_scale_pow"),
    # apply_guidance
    ("apply_guidance/scale=str", lambda tmp: apply_guidance(X, X, "high"), TypeError, "scale"),
    ("apply_guidance/scale-rows=4-for-3", lambda tmp: apply_guidance(X, X, torch.ones(4)), ValueError, "scale"),
    ("apply_guidance/uncond_NV-broadcasts", lambda tmp: apply_guidance(X, torch.zeros(1, 10), 2.0), ValueError, "uncond_NV"),
    ("apply_guidance/cond_NV=list", lambda tmp: apply_guidance([[0.0]], X, 2.0), TypeError, "cond_NV"),
    # TokenLayout
    ("TokenLayout.grid/shape=int", lambda tmp: TokenLayout.grid(16), TypeError, "shape"),
    ("TokenLayout.grid/shape=0", lambda tmp: TokenLayout.grid((4, 0)), ValueError, "shape[1]"),
    ("TokenLayout.scales/patch_nums=fine-to-coarse", lambda tmp: TokenLayout.scales([4, 2, 1]), ValueError, "patch_nums"),
    ("TokenLayout.scales/patch_nums=int", lambda tmp: TokenLayout.scales(4), TypeError, "patch_nums"),
    ("TokenLayout.cells/cell-does-not-divide", lambda tmp: TokenLayout.cells((4, 6), 4), ValueError, "cell"),
    ("TokenLayout.sequence/length=0", lambda tmp: TokenLayout.sequence(0), ValueError, "length"),
    ("TokenLayout.sequence/content=int", lambda tmp: TokenLayout.sequence(3, content=512), TypeError, "content"),
    ("TokenLayout.from_coords/coords=list", lambda tmp: TokenLayout.from_coords([[0.0]]), TypeError, "coords"),
    ("TokenLayout.from_coords/groups-too-short",
     lambda tmp: TokenLayout.from_coords(torch.zeros(3, 1), torch.zeros(2, dtype=LONG)), ValueError, "groups"),
    ("TokenLayout/groups=float", lambda tmp: TokenLayout(torch.zeros(1, 2, 1), torch.zeros(1, 2), torch.ones(1, 2, dtype=BOOL)),
     TypeError, "groups"),
    ("TokenLayout/groups-decreasing",
     lambda tmp: TokenLayout(torch.zeros(1, 2, 1), torch.tensor([[1, 0]]), torch.ones(1, 2, dtype=BOOL)), ValueError, "groups"),
    ("TokenLayout/valid=ints", lambda tmp: TokenLayout(torch.zeros(1, 2, 1), torch.zeros(1, 2, dtype=LONG),
                                                       torch.ones(1, 2, dtype=LONG)), TypeError, "valid"),
    ("TokenLayout.stack/layouts=[]", lambda tmp: TokenLayout.stack([]), ValueError, "layouts"),
    ("TokenLayout.stack/pad_to-too-short", lambda tmp: TokenLayout.stack([TokenLayout.sequence(3)], pad_to=2), ValueError,
     "pad_to"),
    ("TokenLayout.expand/batch_size=0", lambda tmp: TokenLayout.sequence(3).expand(0), ValueError, "batch_size"),
    ("TokenLayout.with_prefix/length<0", lambda tmp: TokenLayout.sequence(3).with_prefix(-1), ValueError, "length"),
    ("TokenLayout.with_prefix/valid-wrong-length",
     lambda tmp: TokenLayout.sequence(3).with_prefix(2, valid=torch.ones(1, 3, dtype=BOOL)), ValueError, "valid"),
    ("TokenLayout.attention_mask/start>end", lambda tmp: TokenLayout.sequence(3).attention_mask(2, 1), ValueError, "start"),
    # DiscreteContent / ContinuousContent
    ("DiscreteContent/codebook_sizes=int", lambda tmp: DiscreteContent(512), TypeError, "codebook_sizes"),
    ("DiscreteContent/codebook_sizes-has-0", lambda tmp: DiscreteContent((512, 0)), ValueError, "codebook_sizes"),
    ("DiscreteContent.check_ids/ids=float", lambda tmp: DiscreteContent((4,)).check_ids(torch.zeros(1, 2)), TypeError, "ids"),
    ("DiscreteContent.check_ids/ids-missing-codebook-axis",
     lambda tmp: DiscreteContent((4, 4)).check_ids(torch.zeros(1, 2, dtype=LONG)), ValueError, "ids"),
    ("DiscreteContent.check_ids/ids-out-of-vocabulary",
     lambda tmp: DiscreteContent((4,)).check_ids(torch.tensor([[4]])), ValueError, "ids"),
    ("ContinuousContent/dim=float", lambda tmp: ContinuousContent(8.5), ValueError, "dim"),
    # patterns
    ("Raster/shape=int", lambda tmp: Raster(16), TypeError, "shape"),
    ("Cells/shape=3-D", lambda tmp: Cells((4, 4, 4), 2), ValueError, "shape"),
    ("Subsample/stride-does-not-divide", lambda tmp: Subsample((4, 6), 4), ValueError, "stride"),
    ("Frames/per_frame=str", lambda tmp: Frames(2, (4,), per_frame="yes"), TypeError, "per_frame"),
    ("Frames/frame_shape=int", lambda tmp: Frames(2, 4), TypeError, "frame_shape"),
    ("FlattenCodebooks/steps=0", lambda tmp: FlattenCodebooks(0, 2), ValueError, "steps"),
    ("DelayCodebooks/empty_id=float", lambda tmp: DelayCodebooks(4, 2, empty_id=4.0), TypeError, "empty_id"),
    ("Scales/sides=fine-to-coarse", lambda tmp: Scales((4, 2, 1)), ValueError, "sides"),
    ("Scales/rank=0", lambda tmp: Scales((1, 2), rank=0), ValueError, "rank"),
    ("Raster.to_sequence/native-wrong-grid", lambda tmp: Raster((4, 4)).to_sequence(torch.zeros(2, 4, 5)), ValueError,
     "native"),
    ("Raster.from_sequence/seq-wrong-length", lambda tmp: Raster((4, 4)).from_sequence(torch.zeros(2, 15)), ValueError,
     "seq"),
    ("Scales.to_sequence/native=tensor", lambda tmp: Scales((1, 2)).to_sequence(torch.zeros(1, 5)), TypeError, "native"),
    ("Scales.to_sequence/native-one-scale-short",
     lambda tmp: Scales((1, 2)).to_sequence([torch.zeros(1, 1, 1)]), ValueError, "native"),
    # GPTConfig
    ("GPTConfig/vocab_size=float", lambda tmp: GPTConfig(vocab_size=1024.0), ValueError, "vocab_size"),
    ("GPTConfig/vocab_size=0-without-inputs", lambda tmp: GPTConfig(vocab_size=0), ValueError, "vocab_size"),
    ("GPTConfig/n_heads-does-not-divide-dim", lambda tmp: GPTConfig(dim=16, n_heads=3), ValueError, "n_heads"),
    ("GPTConfig/n_kv_heads-does-not-divide", lambda tmp: GPTConfig(n_heads=4, n_kv_heads=3), ValueError, "n_kv_heads"),
    ("GPTConfig/norm_eps<0", lambda tmp: GPTConfig(norm_eps=-1e-5), ValueError, "norm_eps"),
    ("GPTConfig/rope_theta=0", lambda tmp: GPTConfig(rope_theta=0.0), ValueError, "rope_theta"),
    ("GPTConfig/init_std<0", lambda tmp: GPTConfig(init_std=-0.02), ValueError, "init_std"),
    ("GPTConfig/qk_norm=str", lambda tmp: GPTConfig(qk_norm="yes"), TypeError, "qk_norm"),
    ("GPTConfig/adaln_dim<0", lambda tmp: GPTConfig(adaln_dim=-1), ValueError, "adaln_dim"),
    ("GPTConfig/max_seq_len=0", lambda tmp: GPTConfig(max_seq_len=0), ValueError, "max_seq_len"),
    # GPT
    ("GPT/config=int", lambda tmp: GPT(5), TypeError, "config"),
    ("GPT/config-unknown-key", lambda tmp: GPT({"dimm": 8}), ValueError, "dimm"),
    ("GPT.forward/layout-longer-than-ids", lambda tmp: gpt()(torch.zeros(1, 4, dtype=LONG), layout=TokenLayout.sequence(5)),
     ValueError, "layout"),
    ("GPT.forward/layout=str", lambda tmp: gpt()(torch.zeros(1, 4, dtype=LONG), layout="raster"), TypeError, "layout"),
    ("GPT.forward/start_pos=float", lambda tmp: gpt()(torch.zeros(1, 4, dtype=LONG), start_pos=1.5), ValueError, "start_pos"),
    ("GPT.forward/input_ids=float", lambda tmp: gpt()(torch.zeros(1, 4)), TypeError, "input_ids"),
    ("GPT.forward/input_ids-out-of-vocabulary", lambda tmp: gpt()(torch.tensor([[5]])), ValueError, "input_ids"),
    ("GPT.forward/no-input", lambda tmp: gpt()(), ValueError, "input_ids"),
    ("GPT.forward/condition-without-adaln", lambda tmp: gpt()(torch.zeros(1, 4, dtype=LONG), condition=torch.zeros(1, 4)),
     ValueError, "condition"),
    ("GPT.forward/attention_mask=float",
     lambda tmp: gpt()(torch.zeros(1, 4, dtype=LONG), attention_mask=torch.ones(1, 4, 4)), TypeError, "attention_mask"),
    ("GPT.hidden_states/inputs_embeds-wrong-width", lambda tmp: gpt().hidden_states(torch.zeros(1, 4, DIM + 1)), ValueError,
     "inputs_embeds"),
    ("GPT.embed_inputs/x_BTC-wrong-width", lambda tmp: gpt(input_dim=3).embed_inputs(torch.zeros(1, 2, 4)), ValueError,
     "x_BTC"),
    ("GPT.setup_cache/max_seq_len=float", lambda tmp: gpt().setup_cache(1, max_seq_len=8.5), ValueError, "max_seq_len"),
    ("GPT.setup_cache/batch_size=0", lambda tmp: gpt().setup_cache(0), ValueError, "batch_size"),
    ("GPT.from_pretrained/unknown-repo-offline", lambda tmp: GPT.from_pretrained("nobody/nothing"), ValueError,
     "pretrained_model_name_or_path"),
    ("GPT.from_pretrained/neither-folder-nor-repo", lambda tmp: GPT.from_pretrained(str(tmp / "missing")), ValueError,
     "pretrained_model_name_or_path"),
    # heads
    ("CategoricalHeadConfig/codebook_sizes=int", lambda tmp: CategoricalHeadConfig(dim=DIM, codebook_sizes=16), ValueError,
     "codebook_sizes"),
    ("CategoricalHeadConfig/dim=0", lambda tmp: CategoricalHeadConfig(dim=0, codebook_sizes=[4]), ValueError, "dim"),
    ("DepthHeadConfig/width-not-divisible", lambda tmp: DepthHeadConfig(dim=DIM, codebook_sizes=[4], width=10, n_heads=4),
     ValueError, "n_heads"),
    ("FlowHeadConfig/time_freq_dim=odd", lambda tmp: FlowHeadConfig(latent_dim=4, cond_dim=DIM, time_freq_dim=7), ValueError,
     "time_freq_dim"),
    ("FlowHeadConfig/latent_dim=float", lambda tmp: FlowHeadConfig(latent_dim=4.0, cond_dim=DIM), ValueError, "latent_dim"),
    ("CategoricalHead.sample/sampling=None", lambda tmp: head_sample(sampling=None), TypeError, "sampling"),
    ("CategoricalHead.sample/guidance_scale=str", lambda tmp: head_sample(guidance_scale="2"), ValueError, "guidance_scale"),
    ("CategoricalHead.sample/seeds_Bn=int32", lambda tmp: head_sample(seeds_Bn=torch.zeros(1, 2, dtype=torch.int32)),
     TypeError, "seeds_Bn"),
    ("CategoricalHead.sample/hidden_RnD-wrong-width", lambda tmp: head_sample(hidden_RnD=torch.zeros(1, 2, DIM + 1)),
     ValueError, "hidden_RnD"),
    ("CategoricalHead.loss/targets-other-positions",
     lambda tmp: categorical().loss(torch.zeros(1, 2, DIM), torch.zeros(1, 3, dtype=LONG)), ValueError, "targets"),
    ("CategoricalHead.loss/mask-keeps-nothing",
     lambda tmp: categorical().loss(torch.zeros(1, 2, DIM), torch.zeros(1, 2, dtype=LONG), mask=torch.zeros(1, 2, dtype=BOOL)),
     ValueError, "mask"),
    ("CategoricalHead.embed/noise_level-for-ids",
     lambda tmp: categorical().embed(gpt(), torch.zeros(1, 2, dtype=LONG), noise_level=torch.ones(1)), ValueError, "noise_level"),
    ("DepthHead.logits/ids-other-positions",
     lambda tmp: DepthHead(DepthHeadConfig(dim=DIM, codebook_sizes=[4, 4], width=8, depth=1, n_heads=2)).logits(
         torch.zeros(1, 2, DIM), torch.zeros(1, 3, 2, dtype=LONG)), ValueError, "ids"),
    ("FlowHead.sample/guidance=str",
     lambda tmp: flow().sample(torch.zeros(2, DIM), num_steps=2, noise_NC=torch.zeros(2, 4), guidance="2",
                               z_uncond_ND=torch.zeros(2, DIM)), TypeError, "guidance"),
    ("FlowHead.sample/num_steps=0", lambda tmp: flow().sample(torch.zeros(2, DIM), num_steps=0, noise_NC=torch.zeros(2, 4)),
     ValueError, "num_steps"),
    ("FlowHead.velocity/x_t-wrong-width",
     lambda tmp: flow().velocity(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, DIM)), ValueError, "x_t"),
    ("FlowHead.set_latent_statistics/latents=ints",
     lambda tmp: flow().set_latent_statistics(torch.zeros(2, 4, 2, 2, dtype=LONG)), TypeError, "latents"),
    ("FlowHead.embed/noise_level-per-position",
     lambda tmp: flow().embed(gpt(vocab_size=0, input_dim=4), torch.zeros(2, 3, 4), noise_level=torch.ones(2, 3)),
     ValueError, "noise_level"),
    # conditioners
    ("ClassConditionerConfig/num_classes=0", lambda tmp: ClassConditionerConfig(dim=DIM, num_classes=0), ValueError,
     "num_classes"),
    ("ClassConditionerConfig/prefix=False-without-adaln",
     lambda tmp: ClassConditionerConfig(dim=DIM, num_classes=3, prefix=False), ValueError, "prefix"),
    ("ClassConditioner.condition/class_labels-out-of-range", lambda tmp: classes().condition(class_labels=3), ValueError,
     "class_labels"),
    ("ClassConditioner.condition/class_labels=float-tensor",
     lambda tmp: classes().condition(class_labels=torch.tensor([1.0])), TypeError, "class_labels"),
    ("ClassConditioner.condition/class_labels=[]", lambda tmp: classes().condition(class_labels=[]), ValueError,
     "class_labels"),
    ("ClassConditioner.condition/prompt-and-class_labels",
     lambda tmp: classes().condition(prompt="a", class_labels=0), ValueError, "class_labels"),
    ("ClassConditioner.condition/num_samples_per_prompt=0",
     lambda tmp: classes().condition(class_labels=0, num_samples_per_prompt=0), ValueError, "num_samples_per_prompt"),
    ("ClassConditioner.condition/guided=1", lambda tmp: classes().condition(class_labels=0, guided=1), TypeError, "guided"),
    ("ClassConditioner.condition/prompt-without-class_names", lambda tmp: classes().condition(prompt="a"), ValueError,
     "class_names"),
    ("ClassConditioner.condition/class_names-too-few",
     lambda tmp: classes().condition(prompt="a", class_names=["a", "b"]), ValueError, "class_names"),
    ("ClassConditioner.training_condition/cond_drop_prob=1",
     lambda tmp: classes().training_condition(class_labels=[0], batch_size=1, cond_drop_prob=1.0), ValueError,
     "cond_drop_prob"),
    ("ClassConditioner.training_condition/batch_size-mismatch",
     lambda tmp: classes().training_condition(class_labels=[0, 1], batch_size=3, cond_drop_prob=0.1), ValueError,
     "batch_size"),
    ("ByteTextConditionerConfig/max_len=0", lambda tmp: ByteTextConditionerConfig(dim=DIM, max_len=0), ValueError, "max_len"),
    ("ByteTextConditioner.condition/prompt-too-long", lambda tmp: byte_text().condition(prompt="hello"), ValueError,
     "max_len"),
    ("ByteTextConditioner.condition/prompt=[]", lambda tmp: byte_text().condition(prompt=[]), TypeError, "prompt"),
    ("ByteTextConditioner.condition/prompt=blank", lambda tmp: byte_text().condition(prompt="  "), ValueError, "prompt"),
    ("ByteTextConditioner.condition/class_labels", lambda tmp: byte_text().condition(class_labels=0), ValueError,
     "class_labels"),
    ("ByteTextConditioner.encode/prompts=str", lambda tmp: byte_text().encode("abc"), TypeError, "prompts"),
    ("ByteTextConditioner.training_condition/prompt=str",
     lambda tmp: byte_text().training_condition(prompt="abc", batch_size=1, cond_drop_prob=0.0), TypeError, "prompt"),
    ("TextEncoderConditionerConfig/encoder_config={}",
     lambda tmp: TextEncoderConditionerConfig(dim=DIM, max_len=4, encoder_config={}, tokenizer_json="{}"), ValueError,
     "encoder_config"),
    ("TextEncoderConditionerConfig/tokenizer_json=''",
     lambda tmp: TextEncoderConditionerConfig(dim=DIM, max_len=4, encoder_config={"model_type": "bert"}, tokenizer_json=""),
     ValueError, "tokenizer_json"),
    ("TextEncoderConditioner.from_encoder/unknown-repo-offline",
     lambda tmp: TextEncoderConditioner.from_encoder("nobody/nothing", dim=DIM, max_len=4), ValueError, "name_or_path"),
    ("TextEncoderConditioner.from_encoder/folder-missing",
     lambda tmp: TextEncoderConditioner.from_encoder(tmp / "missing", dim=DIM, max_len=4), ValueError, "name_or_path"),
    ("write_word_level_bert/words-with-space", lambda tmp: write_word_level_bert(tmp, words=["a b"]), ValueError, "words"),
    ("write_word_level_bert/num_heads-does-not-divide", lambda tmp: write_word_level_bert(tmp, num_heads=3), ValueError,
     "num_heads"),
    ("write_word_level_bert/hidden_size=0", lambda tmp: write_word_level_bert(tmp, hidden_size=0), ValueError, "hidden_size"),
    # generation
    ("GroupRequest/valid_Bn=1-D", lambda tmp: GroupRequest(torch.zeros(1, 2, DIM), torch.zeros(1, 2, 1),
                                                           torch.ones(2, dtype=BOOL)), ValueError, "valid_Bn"),
    ("GroupRequest/valid_Bn=ints", lambda tmp: GroupRequest(torch.zeros(1, 2, DIM), torch.zeros(1, 2, 1),
                                                            torch.ones(1, 2, dtype=LONG)), TypeError, "valid_Bn"),
    ("GroupRequest/coords_BnC-without-C", lambda tmp: GroupRequest(torch.zeros(1, 2, DIM), torch.zeros(1, 2),
                                                                   torch.ones(1, 2, dtype=BOOL)), ValueError, "coords_BnC"),
    ("GroupRequest/inputs_BnD=list", lambda tmp: GroupRequest([0.0], torch.zeros(1, 2, 1), torch.ones(1, 2, dtype=BOOL)),
     TypeError, "inputs_BnD"),
    ("GroupRequest/inputs_BnD-other-n", lambda tmp: GroupRequest(torch.zeros(1, 3, DIM), torch.zeros(1, 2, 1),
                                                                 torch.ones(1, 2, dtype=BOOL)), ValueError, "inputs_BnD"),
    ("draw_seeds/batch_size<0", lambda tmp: draw_seeds(None, -1), ValueError, "batch_size"),
    ("draw_seeds/generator-list-too-short", lambda tmp: draw_seeds([torch.Generator()], 2), ValueError, "generator"),
    ("draw_seeds/generator=int", lambda tmp: draw_seeds(5, 1), TypeError, "generator"),
    ("Decoder/capacity=0", lambda tmp: decoder(capacity=0), ValueError, "capacity"),
    ("Decoder/cond-other-width", lambda tmp: decoder(cond_dim=16), ValueError, "cond"),
    ("Decoder/cond=None", lambda tmp: Decoder(gpt(), None, capacity=4), TypeError, "cond"),
    ("Decoder.forward/requests=[]", lambda tmp: decoder().forward([]), ValueError, "requests"),
    ("Decoder.forward/requests-other-batch", lambda tmp: decoder().forward([request(rows=2)]), ValueError, "requests"),
    ("Decoder.rollback/num_positions-beyond-generated", lambda tmp: decoder().rollback(1), ValueError, "num_positions"),
    ("generate/seeds_B=list", lambda tmp: run_generate(seeds_B=[1]), TypeError, "seeds_B"),
    ("generate/seeds_B=float", lambda tmp: run_generate(seeds_B=torch.zeros(1)), TypeError, "seeds_B"),
    ("generate/seeds_B-per-row-count", lambda tmp: run_generate(seeds_B=torch.zeros(2, dtype=LONG)), ValueError, "seeds_B"),
    ("generate/sampling=dict", lambda tmp: run_generate(sampling={"temperature": 0.0}), TypeError, "sampling"),
    ("generate/callback=str", lambda tmp: run_generate(callback="print"), TypeError, "callback"),
    ("generate/progress=int", lambda tmp: run_generate(progress=1), TypeError, "progress"),
    ("generate/cond=None", lambda tmp: run_generate(cond=None), TypeError, "cond"),
    ("generate/capacity-too-small", lambda tmp: run_generate(capacity=2), ValueError, "capacity"),
    ("generate/prefill-other-batch", lambda tmp: run_generate(prefill=torch.zeros(2, 1, dtype=LONG)), ValueError, "prefill"),
    ("generate/prefill-longer-than-program", lambda tmp: run_generate(prefill=torch.zeros(1, 4, dtype=LONG)), ValueError,
     "prefill"),
    # mmgen.metrics, images
    ("psnr/a-and-b=uint8", lambda tmp: psnr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.ones(1, 3, 8, 8, dtype=torch.uint8)),
     TypeError, "a and b"),
    ("psnr/a-and-b-other-shapes", lambda tmp: psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9)), ValueError, "a and b"),
    ("psnr/a-and-b=5-D", lambda tmp: psnr(torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 3, 8, 8)), ValueError, "a and b"),
    ("ssim/window_size=0", lambda tmp: ssim(shapes(), shapes(), window_size=0), ValueError, "window_size"),
    ("ssim/sigma=0", lambda tmp: ssim(shapes(), shapes(), sigma=0.0), ValueError, "sigma"),
    ("ssim/images-smaller-than-window_size", lambda tmp: ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError,
     "window_size"),
    ("codebook_usage/codebook_size=True", lambda tmp: codebook_usage(torch.zeros(3, dtype=LONG), True), ValueError,
     "codebook_size"),
    ("codebook_usage/ids=float", lambda tmp: codebook_usage(torch.zeros(3), 4), TypeError, "ids"),
    ("codebook_usage/ids-empty", lambda tmp: codebook_usage(torch.zeros(0, dtype=LONG), 4), ValueError, "ids"),
    ("codebook_usage/ids-outside-codebook", lambda tmp: codebook_usage(torch.tensor([4]), 4), ValueError, "ids"),
    ("frechet_distance/mu2-other-dim", lambda tmp: frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)),
     ValueError, "mu2"),
    ("feature_statistics/images-one-sample",
     lambda tmp: feature_statistics(shapes(1), feature_extractor=lambda x: x.flatten(1)), ValueError, "images"),
    ("feature_statistics/batch_size=0",
     lambda tmp: feature_statistics(shapes(), feature_extractor=lambda x: x.flatten(1), batch_size=0), ValueError,
     "batch_size"),
    ("feature_statistics/feature_extractor=None", lambda tmp: feature_statistics(shapes(), feature_extractor=None), TypeError,
     "feature_extractor"),
    ("feature_statistics/feature_extractor-drops-rows",
     lambda tmp: feature_statistics(shapes(), feature_extractor=lambda x: x[:1].flatten(1)), ValueError, "feature_extractor"),
    ("judge_shapes/images-in-0-255", lambda tmp: judge_shapes((shapes() + 1) * 127.5), ValueError, "images"),
    ("judge_shapes/images=uint8", lambda tmp: judge_shapes(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "images"),
    ("judge_shapes/images-not-square", lambda tmp: judge_shapes(torch.zeros(1, 3, 32, 16)), ValueError, "images"),
    ("judge_shape/image=batch", lambda tmp: judge_shape(shapes(1)), ValueError, "image"),
    ("prompt_adherence/images-in-0-255", lambda tmp: prompt_adherence((shapes() + 1) * 127.5, [0, 1]), ValueError, "images"),
    ("prompt_adherence/class_ids=str", lambda tmp: prompt_adherence(shapes(), ["a red circle", "a red square"]), TypeError,
     "class_ids"),
    ("prompt_adherence/class_ids-too-few", lambda tmp: prompt_adherence(shapes(), [0]), ValueError, "class_ids"),
    ("prompt_adherence/class_ids-out-of-range", lambda tmp: prompt_adherence(shapes(), [0, 21]), ValueError, "class_ids"),
    # mmgen.metrics, audio
    ("si_sdr/estimate=list", lambda tmp: si_sdr([0.1, 0.2], wave(2)), TypeError, "estimate"),
    ("si_sdr/estimate-and-reference-other-shapes", lambda tmp: si_sdr(wave(1, 1, 100), wave(1, 1, 99)), ValueError,
     "estimate"),
    ("si_sdr/estimate-int16-scale", lambda tmp: si_sdr(wave(1, 1, 100) * 32768, wave(1, 1, 100)), ValueError, "estimate"),
    ("si_sdr/estimate=stereo", lambda tmp: si_sdr(wave(1, 2, 100), wave(1, 2, 100)), ValueError, "estimate"),
    ("si_sdr/reference-NaN", lambda tmp: si_sdr(wave(1, 1, 100), torch.full((1, 1, 100), float("nan"))), ValueError,
     "reference"),
    ("si_sdr/reference-silent", lambda tmp: si_sdr(wave(1, 1, 100), torch.zeros(1, 1, 100)), ValueError, "reference"),
    ("mel_distance/sample_rate=0", lambda tmp: mel_distance(wave(1, 1, 4000), wave(1, 1, 4000), sample_rate=0), ValueError,
     "sample_rate"),
    ("stft_distance/estimate-empty", lambda tmp: stft_distance(torch.zeros(1, 1, 0), torch.zeros(1, 1, 0)), ValueError,
     "estimate"),
    ("codebook_usage_per_level/ids_BtK=1-D", lambda tmp: codebook_usage_per_level(torch.zeros(5, dtype=LONG), 4), ValueError,
     "ids_BtK"),
    ("codebook_usage_per_level/ids_BtK=float", lambda tmp: codebook_usage_per_level(torch.zeros(2, 3), 4), TypeError,
     "ids_BtK"),
    ("judge_tones/audio_B1T=stereo", lambda tmp: judge_tones(tone().expand(1, 2, -1)), ValueError, "audio_B1T"),
    ("judge_tones/audio_B1T-too-short", lambda tmp: judge_tones(tone()[..., :1000]), ValueError, "audio_B1T"),
    ("judge_tones/sample_rate=float", lambda tmp: judge_tones(tone(), sample_rate=16000.0), ValueError, "sample_rate"),
    ("judge_tone/audio=batch", lambda tmp: judge_tone(tone()), ValueError, "audio"),
    ("tone_adherence/class_ids=float", lambda tmp: tone_adherence(tone(), [0.5]), TypeError, "class_ids"),
    ("tone_adherence/class_ids-too-many", lambda tmp: tone_adherence(tone(), [0, 1]), ValueError, "class_ids"),
    # mmgen.data, images
    ("ShapesDataset/size=4", lambda tmp: ShapesDataset(size=4), ValueError, "size"),
    ("ShapesDataset/length=True", lambda tmp: ShapesDataset(length=True), ValueError, "length"),
    ("ShapesDataset/split=test", lambda tmp: ShapesDataset(split="test"), ValueError, "split"),
    ("ShapesDataset/seed=float", lambda tmp: ShapesDataset(seed=1.5), TypeError, "seed"),
    ("ShapesDataset[]/index-out-of-range", lambda tmp: ShapesDataset(length=5)[5], IndexError, "index"),
    ("ShapesDataset.batch/indices=[]", lambda tmp: ShapesDataset(length=5).batch([]), ValueError, "indices"),
    ("class_id/shape-unknown", lambda tmp: class_id("hexagon", "red"), ValueError, "shape"),
    ("class_parts/class_id-out-of-range", lambda tmp: class_parts(21), ValueError, "class_id"),
    ("parse_caption/text-unparsable", lambda tmp: parse_caption("a red"), ValueError, "text"),
    ("render_shape/size=float", lambda tmp: render_shape("circle", "red", size=32.5, centre=(16, 16), radius=5), ValueError,
     "size"),
    ("render_shape/centre-three-values", lambda tmp: render_shape("circle", "red", size=32, centre=(16, 16, 3), radius=5),
     ValueError, "centre"),
    ("render_shape/radius=0", lambda tmp: render_shape("circle", "red", size=32, centre=(16, 16), radius=0), ValueError,
     "radius"),
    ("PhotoCrops/photos=str", lambda tmp: PhotoCrops(photos="astronaut"), ValueError, "photos"),
    ("PhotoCrops/num_crops=0", lambda tmp: PhotoCrops(num_crops=0), ValueError, "num_crops"),
    ("ImageFolder/root-missing", lambda tmp: ImageFolder(tmp / "missing"), FileNotFoundError, "root"),
    ("ImageFolder/root=int", lambda tmp: ImageFolder(5), TypeError, "root"),
    ("ImageFolder/size=0", lambda tmp: ImageFolder(tmp, size=0), ValueError, "size"),
    # mmgen.data, audio
    ("TonesDataset/length=0", lambda tmp: TonesDataset(length=0), ValueError, "length"),
    ("TonesDataset/seconds=0", lambda tmp: TonesDataset(length=3, seconds=0), ValueError, "seconds"),
    ("TonesDataset/sample_rate=float", lambda tmp: TonesDataset(length=3, sample_rate=16000.0), ValueError, "sample_rate"),
    ("TonesDataset/seed=str", lambda tmp: TonesDataset(length=3, seed="a"), TypeError, "seed"),
    ("TonesDataset[]/index-out-of-range", lambda tmp: TonesDataset(length=3)[3], IndexError, "index"),
    ("tone_class_id/kind-unknown", lambda tmp: tone_class_id("hum", "C4"), ValueError, "kind"),
    ("tone_class_parts/class_id-out-of-range", lambda tmp: tone_class_parts(28), ValueError, "class_id"),
    ("parse_tone_caption/text-unparsable", lambda tmp: parse_tone_caption("a C4 hum"), ValueError, "text"),
    ("render_tone/rng=int", lambda tmp: render_tone("tone", "C4", rng=5), TypeError, "rng"),
    ("SpeechClips/voices-not-str", lambda tmp: SpeechClips(voices=["en-us", 5]), ValueError, "voices"),
    ("SpeechClips/speeds-too-slow", lambda tmp: SpeechClips(speeds=[50]), ValueError, "speeds"),
    ("SpeechClips/sentences=[]", lambda tmp: SpeechClips(sentences=[]), ValueError, "sentences"),
    ("AudioFolder/path-missing", lambda tmp: AudioFolder(tmp / "missing"), FileNotFoundError, "path"),
    ("AudioFolder/path=int", lambda tmp: AudioFolder(5), TypeError, "path"),
    ("resample/orig_rate=0", lambda tmp: resample(wave(1, 100), orig_rate=0, target_rate=16000), ValueError, "orig_rate"),
    ("resample/audio=ints", lambda tmp: resample(torch.zeros(3, dtype=LONG), orig_rate=8000, target_rate=16000), TypeError,
     "audio"),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No row may reach the hub: huggingface_hub reads HF_HUB_OFFLINE once, at import, so set both."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("call,error,fragment", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input_is_a_clear_error_naming_the_argument(call, error, fragment, tmp_path: Path):
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert fragment in str(caught.value), f"the message does not name {fragment!r}: {caught.value}"


def test_the_table_has_one_row_per_check():
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 100
