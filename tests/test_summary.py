import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lavin_jax import config as config_lib
from lavin_jax import summary
from conftest import ROOT


def flops(fn, *shapes):
    args = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
    return summary.jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def test_flop_counter_counts_a_multiply_add_as_two():
    assert flops(lambda a, b: a @ b, (3, 5), (5, 7)) == 2 * 3 * 5 * 7
    assert flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), (4, 3, 5), (4, 5, 7)) == 4 * 2 * 3 * 5 * 7


def test_flop_counter_multiplies_scans_and_enters_nested_calls():
    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (jax.checkpoint(lambda c: jnp.tanh(c @ w))(c), None), x, None, length=6)[0]

    assert flops(scanned, (2, 4), (4, 4)) == 6 * 2 * 2 * 4 * 4
    assert flops(jax.jit(lambda a, b: a @ b), (3, 5), (5, 7)) == 2 * 3 * 5 * 7


def test_flop_counter_counts_convolutions():
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops(conv, (1, 8, 8, 3), (3, 3, 3, 16)) == 2 * 8 * 8 * 16 * 3 * 3 * 3


def test_released_xl_config_has_3_4_billion_parameters():
    config = config_lib.load(str(ROOT / "configs" / "xl.py"))
    result, table = summary.summarize(config)
    assert result["params"] == pytest.approx(3.40e9, rel=0.01)
    assert "blocks/target/mlp" in table
    # By hand: each token meets its own stream's projections and SwiGLU (2 FLOPs a weight), and
    # attention costs 4 * L**2 * D per layer; embeddings and modulation are under 0.1% on top.
    d, kv, mlp, depth = 2304, 8 * 72, 6144, 22
    tokens = (2 * config.data.max_pairs + 2) * (256 // 8 // 2) ** 2
    per_token = 2 * (2 * d * d + 2 * d * kv + 3 * d * mlp)
    expected = depth * (tokens * per_token + 4 * tokens**2 * d)
    assert result["flops_per_example"] == pytest.approx(expected, rel=1e-3)


def test_summary_mode_writes_summary_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lavin_jax.main", "--config=configs/xl.py", f"--workdir={tmp_path}", "--mode=summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["params"] == pytest.approx(3.40e9, rel=0.01)
    assert written["flops_per_example"] > 1e13
    assert "blocks/cond/q" in result.stdout


@pytest.mark.parametrize("variant,params,gmacs", [("XL/2", 675e6, 118.6), ("B/4", 130e6, 5.56)])
def test_dit_variants_summarise_to_the_papers_table_4(variant, params, gmacs):
    """At 256 px on the SD VAE's 32x32x4 latents, as the paper."""
    config = config_lib.load(str(ROOT / "configs" / f"dit.py:{variant}"))
    result, table = summary.summarize(config)
    assert result["params"] == pytest.approx(params, rel=0.01)
    assert result["flops_per_example"] / 2e9 == pytest.approx(gmacs, rel=0.01)  # Table 4 counts multiply-adds.
    assert "blocks/modulation" in table


def test_the_latent_diffit_summarises_to_the_release():
    """561M parameters as released (no pos_embed: it is fixed here); the paper counts 114 GMACs a
    256 px image (ours: every matrix product, 118.5)."""
    result, table = summary.summarize(config_lib.load(str(ROOT / "configs" / "diffit.py:XL/2")))
    assert result["params"] == 561_035_232
    assert result["flops_per_example"] / 2e9 == pytest.approx(114, rel=0.05)
    assert "blocks/attn/qkv_time" in table


def test_a_config_without_a_variant_argument_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"Config file '.*tiny.py' takes no argument, but 'XL/2' was given after ':'"):
        config_lib.load(str(ROOT / "configs" / "tiny.py:XL/2"))
