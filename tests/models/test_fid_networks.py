import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from lavin_jax.models import i3d, inception
from lavin_jax.tools import convert_fid

# The official PyTorch modules, written out as data independent of lavin_jax: (module path, C_in,
# C_out, kernel) of every conv + batch norm unit of pytorch-fid's Inception (torchvision's module
# names) and of piergiaj/pytorch-i3d's InceptionI3d.


def _inception_a(cin, pool):
    return [("branch1x1", cin, 64, (1, 1)), ("branch5x5_1", cin, 48, (1, 1)), ("branch5x5_2", 48, 64, (5, 5)),
            ("branch3x3dbl_1", cin, 64, (1, 1)), ("branch3x3dbl_2", 64, 96, (3, 3)),
            ("branch3x3dbl_3", 96, 96, (3, 3)), ("branch_pool", cin, pool, (1, 1))]


def _inception_b(cin):
    return [("branch3x3", cin, 384, (3, 3)), ("branch3x3dbl_1", cin, 64, (1, 1)),
            ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))]


def _inception_c(cin, c7):
    return [("branch1x1", cin, 192, (1, 1)), ("branch7x7_1", cin, c7, (1, 1)), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", cin, c7, (1, 1)),
            ("branch7x7dbl_2", c7, c7, (7, 1)), ("branch7x7dbl_3", c7, c7, (1, 7)),
            ("branch7x7dbl_4", c7, c7, (7, 1)), ("branch7x7dbl_5", c7, 192, (1, 7)),
            ("branch_pool", cin, 192, (1, 1))]


def _inception_d(cin):
    return [("branch3x3_1", cin, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)),
            ("branch7x7x3_1", cin, 192, (1, 1)), ("branch7x7x3_2", 192, 192, (1, 7)),
            ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, (3, 3))]


def _inception_e(cin):
    return [("branch1x1", cin, 320, (1, 1)), ("branch3x3_1", cin, 384, (1, 1)),
            ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)),
            ("branch3x3dbl_1", cin, 448, (1, 1)), ("branch3x3dbl_2", 448, 384, (3, 3)),
            ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
            ("branch_pool", cin, 192, (1, 1))]


INCEPTION_UNITS = [
    ("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)), ("Conv2d_2b_3x3", 32, 64, (3, 3)),
    ("Conv2d_3b_1x1", 64, 80, (1, 1)), ("Conv2d_4a_3x3", 80, 192, (3, 3)),
] + [
    (f"{block}.{unit}", cin, cout, kernel)
    for block, units in (
        ("Mixed_5b", _inception_a(192, 32)), ("Mixed_5c", _inception_a(256, 64)),
        ("Mixed_5d", _inception_a(288, 64)), ("Mixed_6a", _inception_b(288)),
        ("Mixed_6b", _inception_c(768, 128)), ("Mixed_6c", _inception_c(768, 160)),
        ("Mixed_6d", _inception_c(768, 160)), ("Mixed_6e", _inception_c(768, 192)),
        ("Mixed_7a", _inception_d(768)), ("Mixed_7b", _inception_e(1280)), ("Mixed_7c", _inception_e(2048)),
    )
    for unit, cin, cout, kernel in units
]

# (name, C_in, widths of b0, b1a, b1b, b2a, b2b, b3b), as piergiaj's InceptionI3d lists them.
I3D_MIXED = [
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
]
I3D_UNITS = [("Conv3d_1a_7x7", 3, 64, (7, 7, 7)), ("Conv3d_2b_1x1", 64, 64, (1, 1, 1)),
             ("Conv3d_2c_3x3", 64, 192, (3, 3, 3))] + [
    (f"{name}.{unit}", unit_in, cout, (k, k, k))
    for name, cin, w in I3D_MIXED
    for unit, unit_in, cout, k in (("b0", cin, w[0], 1), ("b1a", cin, w[1], 1), ("b1b", w[1], w[2], 3),
                                   ("b2a", cin, w[3], 1), ("b2b", w[3], w[4], 3), ("b3b", cin, w[5], 1))
]


def fake_state(units, conv, extra, seed):
    """A random state dict with the official names and layouts: He-normal (O, I, *kernel) convs and
    batch norms whose statistics and affine terms all differ from the identity."""
    rng = np.random.default_rng(seed)
    state = {}
    for path, cin, cout, kernel in units:
        std = np.sqrt(2.0 / (cin * np.prod(kernel)))
        state[f"{path}.{conv}.weight"] = (std * rng.standard_normal((cout, cin, *kernel), np.float32)).astype(np.float32)
        state[f"{path}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        state[f"{path}.bn.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        state[f"{path}.bn.running_mean"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        state[f"{path}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        state[f"{path}.bn.num_batches_tracked"] = np.array(0, np.int64)
    for name, shape in extra.items():
        state[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    return state


def fake_inception_state(seed=0):
    return fake_state(INCEPTION_UNITS, "conv", {"fc.weight": (1008, 2048), "fc.bias": (1008,)}, seed)


def fake_i3d_state(seed=0):
    extra = {"logits.conv3d.weight": (400, 1024, 1, 1, 1), "logits.conv3d.bias": (400,)}
    return fake_state(I3D_UNITS, "conv3d", extra, seed)


class CountingState(dict):
    """A state dict that counts how often each tensor is read."""

    def __init__(self, state):
        super().__init__(state)
        self.reads = dict.fromkeys(state, 0)

    def __getitem__(self, key):
        self.reads[key] += 1
        return super().__getitem__(key)


def images(seed, size=32, batch=2):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def clips(seed, frames=9, size=16, batch=2):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def inception_state():
    return fake_inception_state()


@pytest.fixture(scope="module")
def i3d_state():
    return fake_i3d_state()


def _saved_and_loaded(module, weights, path):
    safetensors.numpy.save_file(weights, str(path))
    return module.load(str(path))


@pytest.fixture(scope="module")
def inception_weights(inception_state, tmp_path_factory):
    """The fake official weights through the whole path: convert, save, load."""
    path = tmp_path_factory.mktemp("fid") / "fid_inception.safetensors"
    return _saved_and_loaded(inception, convert_fid.convert_inception(inception_state), path)


@pytest.fixture(scope="module")
def i3d_weights(i3d_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("fvd") / "fvd_i3d.safetensors"
    return _saved_and_loaded(i3d, convert_fid.convert_i3d(i3d_state), path)


def test_tensors_layout():
    assert len(inception.TENSORS) == 2 * len(INCEPTION_UNITS) + 1 == 189 and inception.FEATURES == 2048
    assert inception.TENSORS["fc/kernel"] == (2048, 1008)  # the classifier, for the Inception Score
    assert inception.TENSORS["Conv2d_1a_3x3/kernel"] == (3, 3, 3, 32)
    assert inception.TENSORS["Mixed_6b/branch7x7_2/kernel"] == (1, 7, 128, 128)
    assert inception.TENSORS["Mixed_7c/branch_pool/kernel"] == (1, 1, 2048, 192)
    # torchvision's inception_v3 has 27,161,264 parameters; less AuxLogits (3,326,696) and the
    # 1000-way fc (2,049,000), its convs and their batch norms' gamma and beta hold 21,785,568.
    kernels = sum(np.prod(s) for n, s in inception.TENSORS.items() if n.endswith("/kernel") and n != "fc/kernel")
    biases = sum(np.prod(s) for n, s in inception.TENSORS.items() if n.endswith("/bias"))
    assert kernels + 2 * biases == 21_785_568

    assert len(i3d.TENSORS) == 2 * len(I3D_UNITS) + 2 == 116 and i3d.WIDTH == 1024
    assert i3d.TENSORS["Conv3d_1a_7x7/kernel"] == (7, 7, 7, 3, 64)
    assert i3d.TENSORS["Mixed_5c/b3b/kernel"] == (1, 1, 1, 832, 128)
    assert i3d.TENSORS["logits/kernel"] == (1024, 400) and i3d.TENSORS["logits/bias"] == (400,)


@pytest.mark.parametrize(
    "convert, module, fixture, unused",
    [
        (convert_fid.convert_inception, inception, "inception_state", {"fc.bias"}),
        (convert_fid.convert_i3d, i3d, "i3d_state", set()),
    ],
    ids=["inception", "i3d"],
)
def test_convert_reads_every_official_tensor_once(convert, module, fixture, unused, request):
    state = CountingState(request.getfixturevalue(fixture))
    out = convert(state)
    assert {k: v.shape for k, v in out.items()} == module.TENSORS
    assert all(v.dtype == np.float32 for v in out.values())
    never = {k for k in state if k in unused or k.endswith(".num_batches_tracked")}
    assert {k for k, n in state.reads.items() if n == 0} == never
    assert {n for k, n in state.reads.items() if k not in never} == {1}


def test_convert_folds_batch_norm_and_transposes(inception_state, i3d_state):
    out = convert_fid.convert_inception(inception_state)
    # A (1, 7) conv: HWIO[h, w, i, o] == OIHW[o, i, h, w] * gamma[o] / sqrt(var[o] + 1e-3).
    path = "Mixed_6b.branch7x7_2"
    w, g, b, m, v = (inception_state[f"{path}.{p}"].astype(np.float64) for p in
                     ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"))
    scale = g / np.sqrt(v + 1e-3)
    kernel, bias = out["Mixed_6b/branch7x7_2/kernel"], out["Mixed_6b/branch7x7_2/bias"]
    assert kernel[0, 5, 17, 101] == pytest.approx(w[101, 17, 0, 5] * scale[101], rel=1e-6)
    np.testing.assert_allclose(kernel, w.transpose(2, 3, 1, 0) * scale, rtol=1e-6)
    # conv then batch norm == the folded conv, on one input window.
    window = np.random.default_rng(0).standard_normal((1, 7, 128))
    unfolded = (np.einsum("hwi,oihw->o", window, w) - m) * scale + b
    np.testing.assert_allclose(np.einsum("hwi,hwio->o", window, kernel) + bias, unfolded, rtol=1e-5, atol=1e-6)

    out = convert_fid.convert_i3d(i3d_state)
    w = i3d_state["Mixed_4c.b1b.conv3d.weight"]  # (224, 112, 3, 3, 3)
    scale = i3d_state["Mixed_4c.b1b.bn.weight"] / np.sqrt(i3d_state["Mixed_4c.b1b.bn.running_var"] + 1e-3)
    assert out["Mixed_4c/b1b/kernel"][0, 1, 2, 100, 200] == pytest.approx(w[200, 100, 0, 1, 2] * scale[200], rel=1e-6)
    np.testing.assert_array_equal(out["logits/kernel"], i3d_state["logits.conv3d.weight"][:, :, 0, 0, 0].T)
    np.testing.assert_array_equal(out["logits/bias"], i3d_state["logits.conv3d.bias"])


def test_convert_lists_every_mismatch(inception_state, i3d_state):
    state = {k: v for k, v in inception_state.items() if k != "Mixed_5b.branch1x1.bn.running_var"}
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    with pytest.raises(ValueError) as error:
        convert_fid.convert_inception(state)
    message = str(error.value)
    assert "1 missing: 'Mixed_5b.branch1x1.bn.running_var';" in message
    assert "1 unexpected: 'AuxLogits.fc.weight';" in message
    assert "1 misshapen: 'Mixed_7c.branch_pool.conv.weight' has shape (192, 2048, 3, 3), expected (192, 2048, 1, 1)" in message

    state = {k: v for k, v in i3d_state.items() if not k.startswith("logits.")}
    with pytest.raises(ValueError, match=r"\(2 missing: 'logits\.conv3d\.weight', 'logits\.conv3d\.bias'\)"):
        convert_fid.convert_i3d(state)


def test_resize_is_torch_bilinear_without_antialiasing():
    def torch_bilinear(x, size):  # F.interpolate(mode="bilinear", align_corners=False), one axis at a time
        for axis in (1, 2):
            n = x.shape[axis]
            src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
            lo = np.floor(src).astype(int)
            hi = np.minimum(lo + 1, n - 1)
            frac = (src - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
            x = np.take(x, lo, axis) * (1 - frac) + np.take(x, hi, axis) * frac
        return x

    rng = np.random.default_rng(0)
    for shape, size in (((2, 5, 7, 3), 4), ((1, 3, 3, 2), 8), ((1, 30, 12, 1), 7)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(inception.resize(x, size), torch_bilinear(x, size), rtol=1e-5, atol=1e-6)


def test_pools_and_padding():
    x = np.arange(1.0, 13.0, dtype=np.float32).reshape(1, 3, 4, 1)
    # pytorch-fid's average pool divides by the in-image count: a corner averages 4 values.
    avg = inception.pool(inception.Pool("avg", (3, 3)), x)
    assert avg[0, 0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert avg[0, 1, 1, 0] == pytest.approx(np.mean(x[0, :3, :3]))
    # TensorFlow's SAME puts the odd padding cell at the end: windows {0, 1, 2} and {2, 3} of 4.
    line = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 4, 1, 1, 1)
    assert inception.pool(inception.Pool("max", (3, 1, 1), (2, 1, 1)), line).ravel().tolist() == [3.0, 4.0]
    weights = {"c/kernel": np.ones((3, 1, 1, 1, 1), np.float32), "c/bias": np.zeros(1, np.float32)}
    conv = inception.conv_relu(weights, inception.Conv("c", 1, (3, 1, 1), (2, 1, 1)), line)
    assert conv.ravel().tolist() == [6.0, 7.0]


@pytest.fixture(scope="module")
def inception_features():
    return jax.jit(inception.features)


@pytest.fixture(scope="module")
def i3d_features():
    return jax.jit(i3d.features)


# pytorch-fid 0.3.0's InceptionV3([3]) (torch 2.13, CPU) on fake_inception_state(0) and
# images(0) mapped to [0, 1]: its pool3 features at INCEPTION_PROBE, and their mean over the 2048.
INCEPTION_PROBE = [0, 1, 2, 3, 511, 1024, 1500, 2047]
INCEPTION_GOLDEN = [
    [10.078241, 10.751444, 3.776353, 0.556683, 0.596761, 3.845701, 0.027544, 0.0],
    [10.591829, 10.759882, 3.903343, 0.636994, 0.530692, 3.91529, 0.047984, 0.0],
]
INCEPTION_GOLDEN_MEAN = [6.0084253, 6.1113719]


def test_inception_features(inception_weights, inception_features):
    x = images(0)  # 32x32: resized to 299x299 inside
    f = inception_features(inception_weights, x)
    assert f.shape == (2, 2048) and f.dtype == jnp.float32
    np.testing.assert_allclose(f[:, INCEPTION_PROBE], INCEPTION_GOLDEN, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.mean(axis=1), INCEPTION_GOLDEN_MEAN, rtol=1e-4)
    # Each image's features are its own: the same computed one at a time.
    for i in range(2):
        np.testing.assert_allclose(inception_features(inception_weights, x[i : i + 1])[0], f[i], rtol=1e-5, atol=1e-6)


# piergiaj's InceptionI3d (pytorch_i3d.py, BatchNorm3d eps 1e-3; torch 2.13, CPU) on
# fake_i3d_state(0) and clips(0) resized by F.interpolate(bilinear, align_corners=False) to 224:
# its logits averaged over time, at I3D_PROBE, and their mean over the 400.
I3D_PROBE = [0, 1, 2, 3, 200, 399]
I3D_GOLDEN = [
    [-2.66883, -0.59298, -1.93013, -3.72746, 0.29352, -2.75536],
    [-2.59156, -0.52894, -1.80795, -3.67535, 0.27139, -2.64891],
]
I3D_GOLDEN_MEAN = [0.097448, 0.099422]


def test_i3d_features(i3d_weights, i3d_features):
    x = clips(0)  # 9 frames, the fewest the head allows, 16x16: resized to 224x224 inside
    f = i3d_features(i3d_weights, x)
    assert f.shape == (2, 400) and f.dtype == jnp.float32
    np.testing.assert_allclose(f[:, I3D_PROBE], I3D_GOLDEN, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f.mean(axis=1), I3D_GOLDEN_MEAN, rtol=1e-4, atol=1e-5)
    # The second clip alone (one clip keeps the test short): anything mixed in from the first shows.
    np.testing.assert_allclose(i3d_features(i3d_weights, x[1:])[0], f[1], rtol=1e-5, atol=1e-5)


def test_shapes_are_checked(i3d_weights):
    with pytest.raises(ValueError, match=r"at least 9 frames.*\(1, 8, 16, 16, 3\)"):
        i3d.features(i3d_weights, clips(0, frames=8, batch=1))
    with pytest.raises(ValueError, match=r"\(N, T, H, W, 3\) clips"):
        i3d.features(i3d_weights, images(0))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) images"):
        inception.features({}, clips(0))
