import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lavin_jax.models import lpips
from lavin_jax.tools import convert_lpips

SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features
TAPS = (1, 3, 6, 9, 12)  # the 0-based conv after whose ReLU LPIPS reads a feature map
POOLS = (2, 4, 7, 10)  # the 0-based convs a max-pool precedes
CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def fake_torch_states(seed=0):
    """Random state dicts laid out like torchvision's VGG16 (OIHW, plus its classifier, which the
    conversion ignores) and lpips' vgg.pth: He-normal convs, non-zero biases, heads >= 0."""
    rng = np.random.default_rng(seed)
    vgg, cin = {"classifier.0.weight": rng.standard_normal((4, 2)).astype(np.float32)}, 3
    for index, cout in zip(CONV_INDICES, CHANNELS):
        std = np.sqrt(2.0 / (9 * cin))
        vgg[f"features.{index}.weight"] = (std * rng.standard_normal((cout, cin, 3, 3))).astype(np.float32)
        vgg[f"features.{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        cin = cout
    lin = {
        f"lin{k}.model.1.weight": rng.uniform(size=(1, CHANNELS[t], 1, 1)).astype(np.float32)
        for k, t in enumerate(TAPS)
    }
    return vgg, lin


def reference_lpips(vgg, lin, x, y):
    """LPIPS v0.1 in float64 numpy straight from the torch-layout state dicts, NCHW like lpips."""

    def conv(a, w, b):  # torch Conv2d(3x3, padding=1): a cross-correlation over padded windows
        h, wd = a.shape[2:]
        p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.stack([p[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], -1)
        return np.einsum("bihwk,oik->bohw", windows, w.reshape(*w.shape[:2], 9)) + b[None, :, None, None]

    def features(img):
        a = ((img.transpose(0, 3, 1, 2) - SHIFT[:, None, None]) / SCALE[:, None, None])
        taps = []
        for n, index in enumerate(CONV_INDICES):
            if n in POOLS:
                bsz, c, h, w = a.shape
                a = a.reshape(bsz, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
            w, b = (vgg[f"features.{index}.{p}"].astype(np.float64) for p in ("weight", "bias"))
            a = np.maximum(conv(a, w, b), 0.0)
            if n in TAPS:
                taps.append(a)
        return taps

    total = 0.0
    for k, (fx, fy) in enumerate(zip(features(x.astype(np.float64)), features(y.astype(np.float64)))):
        unit = lambda f: f / (np.sqrt((f**2).sum(axis=1, keepdims=True)) + 1e-10)
        diff = (unit(fx) - unit(fy)) ** 2
        w = lin[f"lin{k}.model.1.weight"].astype(np.float64)
        total = total + (diff * w).sum(axis=1).mean(axis=(1, 2))
    return total


@pytest.fixture(scope="module")
def weights():
    return {k: jnp.asarray(v) for k, v in lpips.random_weights(0).items()}


@pytest.fixture(scope="module")
def dist():
    return jax.jit(lpips.distance)


def images(seed, size=16, batch=2):
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1.0, maxval=1.0)


def test_tensors_layout():
    assert len(lpips.TENSORS) == 13 * 2 + 5
    assert lpips.TENSORS["vgg/conv1_1/kernel"] == (3, 3, 3, 64)
    assert lpips.TENSORS["vgg/conv3_3/bias"] == (256,)
    assert lpips.TENSORS["vgg/conv5_3/kernel"] == (3, 3, 512, 512)
    assert [lpips.TENSORS[f"lin/{k}"] for k in range(5)] == [(64,), (128,), (256,), (512,), (512,)]
    assert {k: v.shape for k, v in lpips.random_weights(1).items()} == lpips.TENSORS


def test_convert_names_shapes_and_transposition():
    vgg, lin = fake_torch_states()
    out = convert_lpips.convert(vgg, lin)
    assert {k: v.shape for k, v in out.items()} == lpips.TENSORS
    # HWIO[h, w, i, o] == OIHW[o, i, h, w], on a conv with distinct sizes on every axis.
    torch_kernel, kernel = vgg["features.5.weight"], out["vgg/conv2_1/kernel"]
    assert kernel[0, 2, 17, 101] == torch_kernel[101, 17, 0, 2]
    np.testing.assert_array_equal(kernel, torch_kernel.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(out["vgg/conv5_3/bias"], vgg["features.28.bias"])
    np.testing.assert_array_equal(out["lin/3"], lin["lin3.model.1.weight"][0, :, 0, 0])


def test_convert_errors():
    vgg, lin = fake_torch_states()
    with pytest.raises(ValueError, match=r"'features\.12\.weight'"):
        convert_lpips.convert({k: v for k, v in vgg.items() if k != "features.12.weight"}, lin)
    with pytest.raises(ValueError, match=r"'lin2\.model\.1\.weight' has shape \(1, 128, 1, 1\)"):
        convert_lpips.convert(vgg, {**lin, "lin2.model.1.weight": lin["lin1.model.1.weight"]})


def test_distance_matches_numpy_reference():
    vgg, lin = fake_torch_states(3)
    x, y = np.asarray(images(1)), np.asarray(images(2))
    got = jax.jit(lpips.distance)(convert_lpips.convert(vgg, lin), x, y)
    want = reference_lpips(vgg, lin, x, y)
    assert got.shape == (2,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_distance_properties(weights, dist):
    x, y = images(1), images(2)
    noise = jax.random.normal(jax.random.key(3), x.shape)
    # Not exactly 0: x and y share one conv batch, whose rows may round differently.
    np.testing.assert_allclose(dist(weights, x, x), np.zeros(2), atol=1e-9)
    d = dist(weights, x, y)
    assert np.all(d > 0)
    np.testing.assert_allclose(dist(weights, y, x), d, rtol=1e-6)
    near, far = dist(weights, x, x + 0.05 * noise), dist(weights, x, x + 0.5 * noise)
    assert np.all(near > 0) and np.all(far > 2 * near)
    # Each row of the batch is its own pair: the batch is not mixed.
    np.testing.assert_allclose(dist(weights, x[:1], y[:1]), d[:1], rtol=1e-5)
    # jit changes nothing.
    np.testing.assert_allclose(lpips.distance(weights, x, y), d, rtol=1e-5)


def test_distance_bfloat16(weights, dist):
    x, y = images(4), images(5)
    full = dist(weights, x, y)
    half = dist(weights, x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
    assert half.dtype == jnp.float32 and np.all(np.isfinite(half))
    np.testing.assert_allclose(half, full, rtol=0.01)


def test_gradient_finite_where_a_feature_map_is_zero():
    # A very negative conv5_3 bias makes relu5_3 zero everywhere: the norm there is sqrt(0), whose
    # gradient is infinite; the loss's gradient must still be finite (and flow through blocks 1-4).
    weights = lpips.random_weights(6)
    weights["vgg/conv5_3/bias"] = np.full(512, -1e3, np.float32)
    x, y = images(7), images(8)
    grad = jax.jit(jax.grad(lambda x: lpips.distance(weights, x, y).sum()))(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_shape_mismatch_is_rejected(weights):
    with pytest.raises(ValueError, match=r"\(2, 16, 16, 3\) and \(2, 8, 8, 3\)"):
        lpips.distance(weights, images(0), images(1, size=8))
