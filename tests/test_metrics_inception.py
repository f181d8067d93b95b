"""The FID InceptionV3: layout equals the standard weights file, strict loading, error messages."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffkit.errors import DiffkitError
from diffkit.metrics import inception as inc
from diffkit.metrics.inception import FIDInceptionV3, load_inception, read_manifest


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # 75x75 is the smallest input the network takes; skipping the 299x299 resize keeps tests fast
    return FIDInceptionV3(resize_input=False).eval()


@pytest.fixture(scope="module")
def weights_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / inc.WEIGHTS_FILE_NAME
    torch.save(model.state_dict(), path)
    return path


def test_manifest_counts_match_the_published_architecture():
    manifest = json.loads(inc.MANIFEST_PATH.read_text())
    keys = read_manifest()
    # torchvision Inception3 has 94 conv+BN units (6 keys each) plus fc weight and bias.
    assert len(keys) == manifest["num_keys"] == 94 * 6 + 2 == 566
    assert len({name for name, _ in keys}) == 566
    assert not any(name.startswith("AuxLogits") for name, _ in keys)
    shapes = dict(keys)
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_1a_3x3.bn.num_batches_tracked"] == ()
    assert shapes["Mixed_5b.branch1x1.conv.weight"] == (64, 192, 1, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    # Parameter count: torchvision's inception_v3 has 27,161,264 parameters with AuxLogits and
    # 1000 classes; AuxLogits holds 768*128 + 2*128 + 128*768*25 + 2*768 + 768*1000 + 1000.
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    expected = 27_161_264 - aux + 8 * 2048 + 8
    params = sum(math.prod(s) for n, s in keys
                 if not n.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == expected == manifest["num_parameters"]


def test_state_dict_matches_manifest_exactly(model):
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == read_manifest()


def test_outputs_have_feature_and_logit_shapes(model):
    with torch.no_grad():
        out = model(torch.rand(2, 3, 75, 75) * 2 - 1)
        grey = FIDInceptionV3().eval()(torch.rand(1, 1, 28, 28) * 2 - 1)  # resized to 299x299
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    assert grey.features.shape == (1, 2048) and grey.logits.shape == (1, 1008)
    assert torch.isfinite(out.features).all() and torch.isfinite(out.logits).all()


def test_logits_drop_the_fc_bias_unless_asked(model):
    # the original IS code (Salimans et al. 2016, openai/improved-gan) multiplies pool3 by the
    # softmax weights only; unbiased_logits=False gives the classification logits
    biased = FIDInceptionV3(resize_input=False, unbiased_logits=False).eval()
    biased.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        a, b = model(x), biased(x)
    torch.testing.assert_close(a.logits, a.features @ model.fc.weight.T)
    torch.testing.assert_close(b.logits - a.logits, model.fc.bias[None].expand(1, -1))


def test_uint8_inputs_are_scaled_to_the_float_range(model):
    pixels = torch.randint(0, 256, (1, 3, 75, 75), dtype=torch.uint8)
    torch.testing.assert_close(model.preprocess(pixels), pixels.float() / 127.5 - 1)
    with pytest.raises(DiffkitError, match="dtype int32"):
        model.preprocess(pixels.int())


def test_resize_is_bilinear_to_299_without_corner_alignment(model):
    x = torch.rand(1, 3, 20, 30)
    y = FIDInceptionV3().preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    # align_corners=False maps output pixel i to input coordinate (i + 0.5) * in/out - 0.5
    i, j = 150, 77
    u, v = (i + 0.5) * 20 / 299 - 0.5, (j + 0.5) * 30 / 299 - 0.5
    u0, v0 = int(math.floor(u)), int(math.floor(v))
    du, dv = u - u0, v - v0
    expected = ((1 - du) * (1 - dv) * x[0, :, u0, v0] + (1 - du) * dv * x[0, :, u0, v0 + 1]
                + du * (1 - dv) * x[0, :, u0 + 1, v0] + du * dv * x[0, :, u0 + 1, v0 + 1])
    torch.testing.assert_close(y[0, :, i, j], expected, rtol=1e-5, atol=1e-6)


def test_tf_average_pool_ignores_padding():
    # A constant map stays constant at the borders only if padded zeros are not counted.
    x = torch.full((1, 2, 5, 5), 3.0)
    torch.testing.assert_close(inc._tf_avg_pool(x), x)
    assert F.avg_pool2d(x, 3, 1, 1)[0, 0, 0, 0] == pytest.approx(3.0 * 4 / 9)


def test_mixed_7c_max_pools_and_mixed_7b_average_pools(model):
    seen = {}
    hooks = [getattr(model, name).branch_pool.register_forward_pre_hook(
        lambda mod, args, name=name: seen.__setitem__(name, args[0])) for name in ("Mixed_7b", "Mixed_7c")]
    block_inputs = {}
    hooks += [getattr(model, name).register_forward_pre_hook(
        lambda mod, args, name=name: block_inputs.__setitem__(name, args[0])) for name in ("Mixed_7b", "Mixed_7c")]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 75, 75) * 2 - 1)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(seen["Mixed_7c"], F.max_pool2d(block_inputs["Mixed_7c"], 3, 1, 1))
    torch.testing.assert_close(seen["Mixed_7b"], F.avg_pool2d(block_inputs["Mixed_7b"], 3, 1, 1,
                                                              count_include_pad=False))


def test_strict_loading_round_trip(model, weights_file):
    loaded = load_inception(weights_file)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded.resize_input = False
    x = torch.rand(2, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        got, expected = loaded(x), model(x)
    torch.testing.assert_close(got.features, expected.features)
    torch.testing.assert_close(got.logits, expected.logits)


def test_missing_extra_and_misshapen_keys_fail_with_one_line(model):
    state = dict(model.state_dict())
    missing = {k: v for k, v in state.items() if k != "fc.bias"}
    with pytest.raises(DiffkitError, match="missing keys: fc.bias") as err:
        load_inception(missing)
    assert "\n" not in str(err.value)
    extra = {**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}
    with pytest.raises(DiffkitError, match="unexpected keys: AuxLogits.fc.weight"):
        load_inception(extra)
    wrong = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    with pytest.raises(DiffkitError, match=r"wrong shapes: fc.weight \(1000, 2048\) != \(1008, 2048\)"):
        load_inception(wrong)


def test_weights_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": _Unpicklable()}, path)
    with pytest.raises(DiffkitError, match="could not read Inception weights"):
        load_inception(path)


class _Unpicklable:
    """A class that weights_only loading must refuse to construct."""


def test_missing_weights_message_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(DiffkitError) as err:
        inc.find_inception_weights()
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "diffkit" / inc.WEIGHTS_FILE_NAME) in message
    assert inc.WEIGHTS_ENV_VAR in message and "download_inception_weights()" in message
    assert inc.WEIGHTS_URL in message
    with pytest.raises(DiffkitError, match="does not exist"):
        inc.find_inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(tmp_path / "nope.pth"))
    with pytest.raises(DiffkitError, match=inc.WEIGHTS_ENV_VAR):
        inc.find_inception_weights()


def test_weights_are_found_via_env_var_then_cache(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(weights_file))
    assert inc.find_inception_weights() == weights_file
    monkeypatch.delenv(inc.WEIGHTS_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "diffkit" / inc.WEIGHTS_FILE_NAME
    cached.parent.mkdir()
    cached.write_bytes(weights_file.read_bytes())
    assert inc.find_inception_weights() == cached
    assert inc.find_inception_weights(weights_file) == weights_file  # explicit path wins


def test_download_checks_the_hash_prefix(tmp_path):
    # a local file:// URL stands in for the release URL; its digest does not start with 6726825d
    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not the inception weights")
    target = tmp_path / "cache" / inc.WEIGHTS_FILE_NAME
    with pytest.raises(DiffkitError, match="neither starts with 6726825d"):
        inc.download_inception_weights(target, url=fake.as_uri())
    assert not target.exists() and not list(target.parent.glob("*.part"))
