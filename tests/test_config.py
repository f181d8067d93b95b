"""TrainConfig: the seed's modelConfig verbatim, file round trips, one-line errors, overrides, devices."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit.config import TrainConfig, apply_overrides, resolve_device
from diffkit.errors import DiffkitError

# /work/shared/seeds/000_*.txt, "DIFFUSION的训练参数", copied verbatim (Python's None for None).
SEED_MODEL_CONFIG = {
    "state": "train",  # or eval
    "epoch": 200,
    "batch_size": 80,
    "T": 1000,
    "channel": 128,
    "channel_mult": [1, 2, 3, 4],
    "attn": [2],
    "num_res_blocks": 2,
    "dropout": 0.15,
    "lr": 1e-4,
    "multiplier": 2.,
    "beta_1": 1e-4,
    "beta_T": 0.02,
    "img_size": 32,
    "grad_clip": 1.,
    "device": "cuda:0",
    "training_load_weight": None,
    "save_weight_dir": "./Checkpoints/",
    "test_load_weight": "ckpt_199.pt",
    "sampled_dir": "./SampledImgs/",
    "sampledNoisyImgName": "NoisyNoGuidanceImgs.png",
    "sampledImgName": "SampledNoGuidanceImgs.png",
    "nrow": 8
}

UNET_KEYS = {"channel", "channel_mult", "attn", "num_res_blocks", "dropout", "img_size", "in_channels",
             "learned_variance", "num_classes", "scale_shift_norm", "num_heads"}


def one_line_error(func, *needles) -> str:
    with pytest.raises(DiffkitError) as excinfo:
        func()
    message = str(excinfo.value)
    assert message and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_seed_model_config_is_accepted_verbatim():
    cfg = TrainConfig.from_dict(SEED_MODEL_CONFIG)
    as_dict = cfg.to_dict()
    for key, value in SEED_MODEL_CONFIG.items():
        assert as_dict[key] == value and type(as_dict[key]) is type(value), key
    assert cfg.dataset == "digits" and cfg.ema_decay == 0.9999 and cfg.hybrid_lambda == 0.001
    # The seed's values are also TrainConfig's defaults (except device: "auto" instead of "cuda:0").
    defaults = TrainConfig().to_dict()
    assert {k: defaults[k] for k in SEED_MODEL_CONFIG if k != "device"} == \
        {k: v for k, v in SEED_MODEL_CONFIG.items() if k != "device"}
    assert defaults["device"] == "auto"


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml", ".yml"])
def test_round_trip_through_files(tmp_path, suffix):
    cfg = apply_overrides(TrainConfig.from_dict(SEED_MODEL_CONFIG),
                          {"min_snr_gamma": 5.0, "attn": [], "dataset": "mnist", "data_dir": 'C:\\data "quoted"',
                           "hflip": True})  # data_dir with the default digits is refused
    path = cfg.to_file(tmp_path / f"config{suffix}")
    assert TrainConfig.from_file(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_seed_dict_written_by_standard_dumpers_loads(tmp_path):
    import yaml

    (tmp_path / "seed.json").write_text(json.dumps(SEED_MODEL_CONFIG))
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(SEED_MODEL_CONFIG))
    expected = TrainConfig.from_dict(SEED_MODEL_CONFIG)
    assert TrainConfig.from_file(tmp_path / "seed.json") == expected
    assert TrainConfig.from_file(tmp_path / "seed.yaml") == expected
    # Hand-written files: YAML's 1e-4 (no dot) and TOML's own syntax.
    (tmp_path / "hand.yaml").write_text("lr: 1e-4\nbeta_1: 2e-4\nT: 500\nchannel_mult: [1, 2]\nattn: [1]\n")
    cfg = TrainConfig.from_file(tmp_path / "hand.yaml")
    assert (cfg.lr, cfg.beta_1, cfg.T, cfg.channel_mult) == (1e-4, 2e-4, 500, [1, 2])
    (tmp_path / "hand.toml").write_text('lr = 2e-4\ndevice = "cpu"\nchannel_mult = [1, 2, 2]\nattn = [1]\n')
    cfg = TrainConfig.from_file(tmp_path / "hand.toml")
    assert (cfg.lr, cfg.device, cfg.channel_mult) == (2e-4, "cpu", [1, 2, 2])


def test_file_errors(tmp_path):
    one_line_error(lambda: TrainConfig.from_file(tmp_path / "absent.json"), "absent.json")
    (tmp_path / "c.ini").write_text("x")
    one_line_error(lambda: TrainConfig.from_file(tmp_path / "c.ini"), ".ini", ".json")
    (tmp_path / "broken.json").write_text("{lr: ")
    one_line_error(lambda: TrainConfig.from_file(tmp_path / "broken.json"), "broken.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    one_line_error(lambda: TrainConfig.from_file(tmp_path / "list.yaml"), "mapping")
    (tmp_path / "evil.yaml").write_text("lr: !!python/object/apply:os.system ['true']\n")
    one_line_error(lambda: TrainConfig.from_file(tmp_path / "evil.yaml"), "evil.yaml")
    # a setting given twice (JSON and YAML kept the last one silently)
    for name, text in (("dup.json", '{"lr": 1e-4, "lr": 2e-4}'), ("dup.yaml", "lr: 1.0e-4\nlr: 2.0e-4\n"),
                       ("dup.toml", "lr = 1e-4\nlr = 2e-4\n")):
        (tmp_path / name).write_text(text)
        one_line_error(lambda: TrainConfig.from_file(tmp_path / name), name)
    assert "given twice" in one_line_error(lambda: TrainConfig.from_file(tmp_path / "dup.yaml"))
    # TOML has no null: a None whose default is not None cannot be written.
    cfg = TrainConfig(grad_clip=None)
    one_line_error(lambda: cfg.to_file(tmp_path / "c.toml"), "grad_clip")


def test_unknown_keys_are_named_with_a_suggestion():
    message = one_line_error(lambda: TrainConfig.from_dict({**SEED_MODEL_CONFIG, "learning_rate": 1e-4}),
                             "'learning_rate'")
    message = one_line_error(lambda: TrainConfig.from_dict({"bach_size": 8, "chanel": 64}), "'bach_size'",
                             "'batch_size'", "'chanel'", "'channel'")
    assert "unknown" in message
    one_line_error(lambda: TrainConfig.from_dict([("lr", 1)]), "mapping")


def test_the_channels_last_key_of_older_configs_reads_as_memory_format():
    """Configs and checkpoints before 4 December 2026 had ``channels_last: bool`` (true forced
    that layout, false left the preferred one)."""
    assert TrainConfig.from_dict({**SEED_MODEL_CONFIG, "channels_last": True}).memory_format == "channels_last"
    assert TrainConfig.from_dict({**SEED_MODEL_CONFIG, "channels_last": False}).memory_format == "auto"
    assert TrainConfig.from_dict({"channels_last": False, "memory_format": "contiguous"}).memory_format == "contiguous"
    one_line_error(lambda: TrainConfig.from_dict({"channels_last": True, "memory_format": "contiguous"}),
                   "channels_last=True", "'contiguous'")
    one_line_error(lambda: TrainConfig.from_dict({"channels_last": "yes"}), "channels_last='yes'", "memory_format")
    one_line_error(lambda: apply_overrides(TrainConfig(), ["channels_last=true"]), "'channels_last'",
                   "memory_format = 'channels_last'")
    assert "channels_last" not in TrainConfig().to_dict()


BAD_VALUES = [
    ("objective", "flow", "objective='flow'"), ("teacher", 5, "teacher=5"),
    ("consistency_skip", 0, "consistency_skip=0"),
    ("consistency_distance", "l1", "consistency_distance='l1'"),
    ("consistency_sigma_data", 0.0, "consistency_sigma_data=0.0"),
    ("consistency_timestep_scaling", -1.0, "consistency_timestep_scaling=-1.0"),
    ("consistency_guidance", -1.0, "consistency_guidance=-1.0"),
    ("consistency_guidance_range", [3.0], "consistency_guidance_range=[3.0]"),
    ("guidance_embedding_dim", -4, "guidance_embedding_dim=-4"),
    ("consistency_curriculum", "edm", "consistency_curriculum='edm'"),
    ("consistency_target_ema", 1.0, "consistency_target_ema=1.0"), ("consistency_s0", 0, "consistency_s0=0"),
    ("consistency_s1", 0.5, "consistency_s1=0.5"),
    ("state", "test", "'test'"), ("epoch", 0, "epoch=0"), ("epoch", 2.0, "epoch=2.0"), ("epoch", True, "epoch=True"),
    ("batch_size", 0, "batch_size=0"), ("batch_size", "80", "batch_size='80'"), ("T", 0, "T=0"),
    ("channel", -1, "channel=-1"), ("channel_mult", [1, "2"], "channel_mult="), ("channel_mult", [], "channel_mult=[]"),
    ("channel_mult", [1, 0], "channel_mult=[1, 0]"), ("channel_mult", 2, "channel_mult=2"),
    ("attn", [4], "attn=[4]"), ("attn", [-1], "attn=[-1]"), ("attn", [1.0], "attn=[1.0]"),
    ("num_res_blocks", -1, "num_res_blocks=-1"), ("dropout", 1.0, "dropout=1.0"), ("dropout", -0.1, "dropout=-0.1"),
    ("lr", 0.0, "lr=0.0"), ("lr", float("nan"), "lr=nan"), ("lr", "1e-4", "lr='1e-4'"), ("lr", 10 ** 400, "lr="),
    ("multiplier", 0.5, "multiplier=0.5"), ("beta_1", 0.0, "beta_1=0.0"), ("beta_T", 1.0, "beta_T=1.0"),
    ("beta_1", 0.05, "beta_1=0.05"), ("img_size", 30, "img_size=30"), ("img_size", 0, "img_size=0"),
    ("grad_clip", 0.0, "grad_clip=0.0"), ("grad_clip", -1, "grad_clip=-1"), ("device", "gpu", "device='gpu'"),
    ("device", "cuda:x", "device='cuda:x'"), ("device", "cuda:0\n", "device="), ("training_load_weight", 3, "=3"),
    ("save_weight_dir", None, "save_weight_dir=None"), ("nrow", 0, "nrow=0"), ("dataset", "imagenet", "'imagenet'"),
    ("in_channels", 0, "in_channels=0"), ("schedule", "quadratic", "'quadratic'"),
    ("prediction_type", "eps", "'eps'"), ("learned_variance", 1, "learned_variance=1"), ("loss", "l1", "'l1'"),
    ("hybrid_lambda", 0.0, "hybrid_lambda=0.0"), ("fixed_variance", "learned_range", "'learned_range'"),
    ("timestep_sampler", "importance", "'importance'"),
    ("min_snr_gamma", 0.0, "min_snr_gamma=0.0"), ("offset_noise", -0.1, "offset_noise=-0.1"),
    ("p2_gamma", 0.0, "p2_gamma=0.0"), ("p2_k", -1.0, "p2_k=-1.0"),
    ("input_perturbation", 1.5, "input_perturbation=1.5"),
    ("ema_decay", 1.0, "ema_decay=1.0"), ("ema_warmup", "yes", "ema_warmup='yes'"),
    ("ema_power", 0.0, "ema_power=0.0"), ("ema_inv_gamma", 0.0, "ema_inv_gamma=0.0"),
    ("posthoc_ema", [0.05, 0.3], "posthoc_ema=0.3 is out of range"), ("posthoc_ema", "0.1", "posthoc_ema='0.1'"),
    ("posthoc_ema", [], "posthoc_ema=[] tracks nothing"), ("posthoc_ema_every", 5, "posthoc_ema_every=5 sets"),
    ("posthoc_ema_every", 0, "posthoc_ema_every=0"),
    ("weight_decay", -1e-4, "weight_decay=-0.0001"), ("warmup_fraction", 1.0, "warmup_fraction=1.0"),
    ("lr_schedule", "cosine", "'cosine'"), ("num_classes", 0, "num_classes=0"), ("p_uncond", 1.5, "p_uncond=1.5"),
    ("conditional", None, "conditional=None"), ("hflip", 0, "hflip=0"), ("seed", -1, "seed=-1"),
    ("num_workers", -1, "num_workers=-1"), ("max_steps", 0, "max_steps=0"), ("save_every_epochs", 0, "=0"),
    ("keep_last", 0, "keep_last=0"), ("log_every", 0, "log_every=0"), ("sample_steps", 0, "sample_steps=0"),
    ("sample_steps", 1001, "sample_steps=1001"), ("sampler", "", "sampler=''"),
    ("mixed_precision", "fp8", "'fp8'"), ("grad_accum", 0, "grad_accum=0"), ("compile", "no", "compile='no'"),
    ("memory_format", "nhwc", "'nhwc'"), ("deterministic", 1.0, "deterministic=1.0"),
    ("scale_shift_norm", "true", "scale_shift_norm='true'"), ("num_heads", 0, "num_heads=0"),
    ("num_heads", 7, "num_heads=7"), ("network", "vit", "network='vit'"), ("patch_size", 0, "patch_size=0"),
    ("num_layers", 0, "num_layers=0"), ("attention_head_dim", 0, "attention_head_dim=0"),
    ("zero_terminal_snr", "on", "zero_terminal_snr='on'"),
    ("autoencoder", "", "autoencoder=''"), ("autoencoder", 3, "autoencoder=3"),
    ("text_conditioning", "yes", "text_conditioning='yes'"), ("text_pooled", 1, "text_pooled=1"),
    ("context_dim", 0, "context_dim=0"),
    ("text_width", 0, "text_width=0"), ("text_layers", -1, "text_layers=-1"), ("text_heads", 0, "text_heads=0"),
    ("max_prompt_tokens", 2, "max_prompt_tokens=2"),
    ("save_weight_dir", "", "save_weight_dir=''"), ("data_dir", "", "data_dir=''"), ("in_channels", 2, "in_channels=2"),
    ("channel", 1, "channel=1"), ("num_res_blocks", 0, "num_res_blocks=0"), ("num_workers", 100000, "num_workers="),
    ("seq_length", 1, "seq_length=1"), ("seq_length", 16, "seq_length=16 applies to time series"),
    ("num_series", 1, "num_series=1"), ("num_series", 5.0, "num_series=5.0"),
    ("test_fraction", 1.0, "test_fraction=1.0"),
    ("test_fraction", 0.2, "test_fraction=0.2 applies to dataset='series'"),
    ("drop_columns", "date", "drop_columns='date' applies to dataset='series'"),
    ("drop_columns", 3, "drop_columns=3"),
    ("label_column", "state", "label_column='state' applies to dataset='series'"),
    ("label_column", 3, "label_column=3"),
    ("super_res_from", 1, "super_res_from=1"),
    ("super_res_from", 5, "super_res_from=5 is not allowed with img_size=32"),
    ("super_res_from", 32, "super_res_from=32"), ("super_res_from", 8.0, "super_res_from=8.0"),
    ("super_res_noise", -1, "super_res_noise=-1"), ("super_res_noise", 5, "super_res_noise=5 augments"),
    ("super_res_noise", 0.5, "super_res_noise=0.5"),
    ("init_from", "", "init_from=''"), ("init_from", 3, "init_from=3"), ("lora_rank", -1, "lora_rank=-1"),
    ("lora_rank", 1.5, "lora_rank=1.5"), ("lora_rank", 4, "--init-from"), ("lora_alpha", 0.0, "lora_alpha=0.0"),
    ("lora_alpha", 8.0, "lora_alpha=8.0 belongs to LoRA"), ("lora_targets", "mlp", "lora_targets='mlp'"),
    ("lora_targets", 3, "lora_targets=3"),
    ("flow_shift", 0.0, "flow_shift=0.0"), ("flow_shift", 3.0, "flow_shift=3.0 shifts schedule='flow'"),
    ("logit_mean", "0", "logit_mean='0'"), ("logit_mean", 0.5, "logit_mean=0.5 belongs to timestep_sampler"),
    ("logit_std", 0.0, "logit_std=0.0"), ("prediction_type", "flow_prediction", "with schedule='flow'"),
    ("schedule", "flow", "flow matching is prediction_type='flow_prediction'"),
    ("timestep_sampler", "logit-normal", "needs prediction_type='flow_prediction'"),
    ("edm_sigma_min", 0.0, "edm_sigma_min=0.0"), ("edm_sigma_max", -1.0, "edm_sigma_max=-1.0"),
    ("edm_sigma_data", 0.7, "edm_sigma_data=0.7 belongs to prediction_type='edm'"),
    ("edm_p_mean", "0", "edm_p_mean='0'"),
    ("edm_p_std", 0.0, "edm_p_std=0.0"), ("prediction_type", "edm", "EDM is prediction_type='edm' with schedule='edm'"),
    ("schedule", "edm", "EDM is prediction_type='edm' with schedule='edm'"),
]


@pytest.mark.parametrize("key,value,needle", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_each_bad_value_is_a_one_line_error(key, value, needle):
    one_line_error(lambda: TrainConfig.from_dict({**SEED_MODEL_CONFIG, key: value}), needle)


def test_every_field_has_a_bad_value_case():
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {k for k, _, _ in BAD_VALUES} <= {
        "test_load_weight", "sampled_dir", "sampledNoisyImgName", "sampledImgName", "data_dir"}  # any string is fine


def test_cross_field_rules():
    one_line_error(lambda: TrainConfig(learned_variance=True), "learned_variance", "hybrid")
    assert TrainConfig(learned_variance=True, loss="hybrid").learned_variance
    assert TrainConfig(learned_variance=True, loss="vlb").learned_variance
    one_line_error(lambda: TrainConfig(zero_terminal_snr=True), "zero_terminal_snr", "v_prediction")
    one_line_error(lambda: TrainConfig(loss="hybrid"), "loss='hybrid' needs learned_variance=True")
    assert TrainConfig(zero_terminal_snr=True, prediction_type="v_prediction").zero_terminal_snr
    one_line_error(lambda: TrainConfig(img_size=28, channel_mult=[1, 2, 2, 2]), "img_size=28", "8")
    assert TrainConfig(img_size=28, channel_mult=[1, 2, 2], attn=[1]).img_size == 28
    one_line_error(lambda: TrainConfig(channel_mult=[1, 2], attn=[2]), "attn=[2]", "0..1")
    one_line_error(lambda: TrainConfig(beta_1=0.02, beta_T=0.02), "beta_1=0.02", "beta_T=0.02")
    one_line_error(lambda: TrainConfig(channel=96, num_heads=5), "num_heads=5")


def test_int_float_coercion():
    cfg = TrainConfig(lr=1, multiplier=2, grad_clip=3)
    assert (cfg.lr, cfg.multiplier, cfg.grad_clip) == (1.0, 2.0, 3.0) and type(cfg.lr) is float
    assert TrainConfig(channel_mult=(1, 2, 2, 2)).channel_mult == [1, 2, 2, 2]


def test_apply_overrides_parses_cli_strings():
    base = TrainConfig.from_dict(SEED_MODEL_CONFIG)
    cfg = apply_overrides(base, ["lr=2e-4", "epoch=3", "attn=[1]", "channel_mult=1,2,2", "hflip=yes",
                                 "grad_clip=none", "device=cpu", "dataset=mnist", "min_snr_gamma=5",
                                 "img_size= 28 ", "data_dir=a=b"])
    assert cfg.lr == 2e-4 and type(cfg.lr) is float and cfg.epoch == 3 and type(cfg.epoch) is int
    assert (cfg.attn, cfg.channel_mult, cfg.hflip, cfg.grad_clip) == ([1], [1, 2, 2], True, None)
    assert (cfg.device, cfg.dataset, cfg.min_snr_gamma, cfg.img_size, cfg.data_dir) == \
        ("cpu", "mnist", 5.0, 28, "a=b")
    assert base.lr == 1e-4  # the original is unchanged
    assert apply_overrides(base, {"lr": 3e-4, "attn": ""}).attn == []
    one_line_error(lambda: apply_overrides(base, ["epoch=2.5"]), "epoch='2.5'", "integer")
    one_line_error(lambda: apply_overrides(base, ["hflip=maybe"]), "hflip='maybe'")
    one_line_error(lambda: apply_overrides(base, ["lrr=1"]), "'lrr'", "'lr'")
    one_line_error(lambda: apply_overrides(base, ["lr"]), "key=value")
    one_line_error(lambda: apply_overrides(base, ["epoch=none"]), "epoch")
    one_line_error(lambda: apply_overrides(base, ["lr=-1"]), "lr=-1.0")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    message = one_line_error(lambda: resolve_device(SEED_MODEL_CONFIG["device"]), "cuda:0", "--device cpu", "auto")
    assert "CUDA" in message
    one_line_error(lambda: resolve_device("mps"), "mps", "--device cpu")
    one_line_error(lambda: resolve_device("tpu"), "tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    one_line_error(lambda: resolve_device("cuda:2"), "cuda:2", "cuda:0..cuda:1")


def test_unet_and_dataset_kwargs():
    cfg = TrainConfig.from_dict(SEED_MODEL_CONFIG)
    kwargs = cfg.to_unet_kwargs()
    assert set(kwargs) == UNET_KEYS
    assert kwargs["in_channels"] == 1 and kwargs["num_classes"] is None  # digits, unconditional
    assert {k: kwargs[k] for k in ("channel", "channel_mult", "attn", "num_res_blocks", "dropout", "img_size")} == \
        {k: SEED_MODEL_CONFIG[k] for k in ("channel", "channel_mult", "attn", "num_res_blocks", "dropout", "img_size")}
    assert apply_overrides(cfg, {"dataset": "cifar10", "conditional": True}).to_unet_kwargs()["in_channels"] == 3
    assert apply_overrides(cfg, {"dataset": "cifar10", "conditional": True}).to_unet_kwargs()["num_classes"] == 10
    folder = apply_overrides(cfg, {"dataset": "folder", "conditional": True})
    one_line_error(folder.to_unet_kwargs, "num_classes")

    class Loaded:
        channels, num_classes = 1, 4

    assert folder.to_unet_kwargs(Loaded())["num_classes"] == 4 and folder.to_unet_kwargs(Loaded())["in_channels"] == 1
    assert cfg.dataset_kwargs(train=False) == {"name": "digits", "data_dir": None, "img_size": 32, "train": False,
                                               "hflip": False, "channels": None}


# ------------------------------------------------------------------------- property tests
FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
any_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-3, 40) | st.floats(allow_nan=True)
    | st.floats(0, 1) | st.text(max_size=12) | st.sampled_from(["cpu", "auto", "cosine", "hybrid", "mnist"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
any_key = st.sampled_from(FIELD_NAMES) | st.text(max_size=15) | st.integers()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(any_key, any_value, max_size=6))
def test_random_dicts_raise_only_diffkit_errors(data):
    try:
        cfg = TrainConfig.from_dict(data)
    except DiffkitError as err:
        assert "\n" not in str(err)
        return
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), st.text(max_size=12), max_size=4))
def test_random_cli_overrides_raise_only_diffkit_errors(overrides):
    try:
        cfg = apply_overrides(TrainConfig(), [f"{k}={v}" for k, v in overrides.items()])
    except DiffkitError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(cfg, TrainConfig)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELD_NAMES), any_value, min_size=1, max_size=3))
def test_seed_with_random_fields_raises_only_diffkit_errors(changes):
    """Valid elsewhere, so each random value reaches the type, range and cross-field checks."""
    try:
        cfg = TrainConfig.from_dict({**SEED_MODEL_CONFIG, **changes})
    except DiffkitError as err:
        assert "\n" not in str(err)
        return
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_t_is_bounded_by_max_timesteps_as_train_classifier_t_is(tmp_path, capsys):
    """T had no upper limit: T = 10^9 passed the config and its noise schedule needed about 80 GB. T takes
    1..MAX_TIMESTEPS (100000, the bound of train-classifier --T), as a field, a config key and through --set;
    beyond it a one-line error before any folder is made."""
    from diffkit.cli import main
    from diffkit.config import MAX_TIMESTEPS
    assert MAX_TIMESTEPS == 100_000 and TrainConfig(T=MAX_TIMESTEPS).T == MAX_TIMESTEPS
    for make in (lambda: TrainConfig(T=MAX_TIMESTEPS + 1), lambda: TrainConfig.from_dict({"T": 10**9})):
        one_line_error(make, "is out of range; allowed: an integer in [1, 100000]")
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "T=1000000000", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == ("diffkit train: error: T=1000000000 is out of range; allowed: an "
                                               "integer in [1, 100000]")
    assert list(tmp_path.iterdir()) == []
