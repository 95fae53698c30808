import itertools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lavin_jax import config as config_lib
from lavin_jax.checkpoint import Checkpointer, Unreadable, latest_step

TINY = pathlib.Path(__file__).parent.parent / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def make_state(mesh):
    """A train-state-like pytree: nested dicts with int keys, tuples, an optax state, counters."""
    rng = np.random.default_rng(0)

    def put(shape, spec):
        return jax.device_put(
            jnp.asarray(rng.normal(size=shape), jnp.float32), NamedSharding(mesh, spec)
        )

    params = {
        "embed": put((8, 4), P("data", "fsdp")),
        "layers": {
            0: {"w": put((4, 8), P(None, "tensor"))},
            1: {"w": put((4, 8), P("fsdp", "tensor"))},
        },
        "bias": put((16,), P(("data", "fsdp", "tensor"))),
        "scale": put((3,), P()),
    }
    replicated = NamedSharding(mesh, P())
    return {
        "params": params,
        "opt": optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).init(params),
        "step": jax.device_put(jnp.int32(7), replicated),
        "rng": jax.device_put(jax.random.key_data(jax.random.key(0)), replicated),
        "pair": (put((2, 2), P("tensor")), put((2,), P())),
    }


def abstract_like(state, sharding_for):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_for(x)), state
    )


def relayout(abstract, mesh):
    """`abstract` with the leading axis of its arrays put on other mesh axes, by turns."""
    specs = itertools.cycle([P("tensor"), P(), P(("data", "fsdp"))])

    def spec_for(x):
        spec = next(specs)
        return NamedSharding(mesh, spec if x.ndim and x.shape[0] % 4 == 0 else P())

    return abstract_like(abstract, spec_for)


@pytest.fixture
def config():
    return config_lib.load(str(TINY))


@pytest.mark.parametrize("reshard", [False, True], ids=["same_layout", "new_layout"])
def test_round_trip_restores_values_onto_abstract_shardings(tmp_path, mesh, config, reshard):
    state = make_state(mesh)
    expected = jax.tree.map(np.asarray, state)
    saved_layout = abstract_like(state, lambda x: x.sharding)
    checkpointer = Checkpointer(str(tmp_path), keep=3, save_every=1)
    assert checkpointer.save(1, state, config)
    # The save must have copied everything it needs: the caller may donate the arrays at once.
    for leaf in jax.tree.leaves(state):
        leaf.delete()
    checkpointer.wait()
    checkpointer.close()

    abstract = relayout(saved_layout, mesh) if reshard else saved_layout
    moved = [
        new.sharding != old.sharding
        for new, old in zip(jax.tree.leaves(abstract), jax.tree.leaves(saved_layout))
    ]
    assert any(moved) == reshard
    restored = Checkpointer(str(tmp_path), keep=3, save_every=1).restore(
        1, abstract, config
    )
    assert jax.tree.structure(restored) == jax.tree.structure(abstract)
    for got, want, spec in zip(
        jax.tree.leaves(restored), jax.tree.leaves(expected), jax.tree.leaves(abstract)
    ):
        assert got.dtype == want.dtype
        assert got.sharding == spec.sharding
        np.testing.assert_array_equal(np.asarray(got), want)


def test_saves_on_interval_keeps_newest_and_reports_latest(tmp_path, mesh, config, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # a relative directory, as `--workdir=runs/x` gives.
    checkpointer = Checkpointer(tmp_path.name, keep=2, save_every=10)
    assert latest_step(tmp_path.name) is None
    state = make_state(mesh)
    started = {step: checkpointer.save(step, state, config) for step in (3, 10, 15, 20, 30)}
    assert started == {3: False, 10: True, 15: False, 20: True, 30: True}
    assert checkpointer.save(35, state, config, force=True)
    # The last step of a run is force-saved even when the interval has just saved it.
    assert not checkpointer.save(35, state, config, force=True)
    checkpointer.wait()
    assert not checkpointer.save(30, state, config, force=True)
    checkpointer.close()

    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [30, 35]
    assert latest_step(tmp_path.name) == 35
    assert latest_step(str(tmp_path / "nowhere")) is None


def test_restoring_a_save_in_flight_waits_for_it(tmp_path, mesh, config):
    checkpointer = Checkpointer(str(tmp_path), keep=2, save_every=5)
    state = make_state(mesh)
    expected = jax.tree.map(np.asarray, state)
    assert checkpointer.save(5, state, config)
    restored = checkpointer.restore(5, abstract_like(state, lambda x: x.sharding), config)  # no wait()
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), want)
    checkpointer.close()


@pytest.fixture
def saved(tmp_path, mesh, config):
    """A finished checkpoint at step 2; returns (directory, abstract state)."""
    state = make_state(mesh)
    checkpointer = Checkpointer(str(tmp_path), keep=2, save_every=2)
    checkpointer.save(2, state, config)
    checkpointer.close()
    return tmp_path, abstract_like(state, lambda x: x.sharding)


def test_model_config_mismatch_names_fields_and_both_values(saved, config):
    directory, abstract = saved
    config.model.hidden = 128
    config.model.depth = 2
    with pytest.raises(ValueError) as error:
        Checkpointer(str(directory), keep=2, save_every=2).restore(
            2, abstract, config
        )
    message = str(error.value)
    assert str(directory / "2") in message
    assert "model.hidden=96, model.depth=4 but the config has model.hidden=128, model.depth=2" in (
        message
    )


@pytest.mark.parametrize("field,value", [("seed", 7), ("global_batch_size", 24), ("data.max_pairs", 1)])
def test_checkpoint_of_another_data_stream_is_refused(saved, config, field, value):
    directory, abstract = saved
    node, leaf = (config.data, field[5:]) if field.startswith("data.") else (config, field)
    node[leaf] = value
    with pytest.raises(ValueError, match=rf"{field}=.* but the config has {field}={value}"):
        Checkpointer(str(directory), keep=2, save_every=2).restore(2, abstract, config)


def test_fields_that_keep_parameter_shapes_may_change(saved, config):
    directory, abstract = saved
    config.model.dtype = "bfloat16"
    config.model.remat = "full"
    config.model.attention = "xla"
    config.model.scan_layers = not config.model.scan_layers
    config.optim.lr = 0.5
    config.data.num_threads = 0
    restored = Checkpointer(str(directory), keep=2, save_every=2).restore(
        2, abstract, config
    )
    assert jax.tree.structure(restored) == jax.tree.structure(abstract)


def test_a_field_newer_than_the_checkpoint_reads_as_its_default(saved, config, monkeypatch):
    """A run saved before a field existed ran as the field's default does: it resumes under newer
    code, unless the config sets the new field otherwise."""
    directory, abstract = saved
    checkpointer = Checkpointer(str(directory), keep=2, save_every=2)
    older = checkpointer.read_config(2)
    del older["data"]["image_share"]
    monkeypatch.setattr(Checkpointer, "read_config", lambda self, step: older)
    assert jax.tree.structure(checkpointer.restore(2, abstract, config)) == jax.tree.structure(abstract)
    config.data.image_share = 0.5
    with pytest.raises(ValueError, match=r"data.image_share=0.0 but the config has data.image_share=0.5"):
        checkpointer.restore(2, abstract, config)
    checkpointer.close()


def _remove_state_item(step_dir):
    shutil.rmtree(step_dir / "state")


def _corrupt_config_item(step_dir):
    (step_dir / "config" / "metadata").write_text("{not json")


def _remove_state_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize(
    "damage, item, cause",
    [
        (_remove_state_item, "state", "is missing"),
        (_corrupt_config_item, "config", "cannot be read: JSONDecodeError: Expecting property name"),
        (_remove_state_metadata, "state", "cannot be read: "),
    ],
)
def test_damaged_item_error_names_its_path_and_cause(saved, config, damage, item, cause):
    directory, abstract = saved
    damage(directory / "2")
    with pytest.raises(Unreadable) as error:
        Checkpointer(str(directory), keep=2, save_every=2).restore(
            2, abstract, config
        )
    assert str(error.value).startswith(f"Checkpoint item {directory / '2' / item} {cause}")
    assert "\n" not in str(error.value)


def test_a_step_set_aside_leaves_orbax_view_and_keeps_its_files(tmp_path, mesh, config):
    state = make_state(mesh)
    checkpointer = Checkpointer(str(tmp_path), keep=3, save_every=2)
    for step in (2, 4):
        checkpointer.save(step, state, config)
    checkpointer.wait()
    files = sorted(p.relative_to(tmp_path / "4") for p in (tmp_path / "4").rglob("*"))
    assert checkpointer.set_aside(4) == tmp_path / "4.corrupt"
    checkpointer.reload()
    assert checkpointer.steps() == [2] and latest_step(str(tmp_path)) == 2
    assert sorted(p.relative_to(tmp_path / "4.corrupt") for p in (tmp_path / "4.corrupt").rglob("*")) == files
    # The step is saved again, and goes bad again: the copy set aside first keeps its name.
    assert checkpointer.save(4, state, config)
    checkpointer.wait()
    assert checkpointer.set_aside(4) == tmp_path / "4.corrupt.1"
    checkpointer.reload()
    checkpointer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "4.corrupt", "4.corrupt.1"]
    assert latest_step(str(tmp_path)) == 2


def test_missing_step_error_names_its_path(saved, config):
    directory, abstract = saved
    with pytest.raises(FileNotFoundError, match=str(directory / "4")):
        Checkpointer(str(directory), keep=2, save_every=2).restore(
            4, abstract, config
        )


def test_saved_config_is_the_run_config(saved, config):
    directory, _ = saved
    saved_config = json.loads((directory / "2" / "config" / "metadata").read_text())
    assert saved_config == json.loads(config.to_json_best_effort())
