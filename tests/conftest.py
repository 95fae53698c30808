"""Every test runs on CPU with 8 simulated devices, so sharding is always exercised."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's non-partitionable threefry draws the same distributions, and XLA compiles its random bits
# sooner on CPU (test_train, test_text and test_evaluation: 199 s instead of 220). Processes the
# tests start inherit it. The tests that need a run's own stream turn it back on:
# test_fsdp_and_tensor_parallelism_split_the_arrays_themselves, and test_autoencoding.py's.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
# Most tests run a step or two, so their time is XLA's compiling, which is about a fifth quicker
# with little optimisation (test_latents.py alone: 192 s -> 154 s). Processes the tests start
# inherit it. Tests that train to a bar run many steps instead: they are marked `optimized`
# (`optimized` below), since their steps run much slower unoptimised (a DDPM fit: 27 s -> 45 s).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _optimizing(marked: bool):
    """Compiles with XLA's full optimisation while `marked` (a test or module marked `optimized`)."""
    if not marked:
        yield
        return
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module", autouse=True)
def optimized_module(request):
    """A module marked `optimized` (`pytestmark`): its module fixtures too, which train."""
    yield from _optimizing(request.node.get_closest_marker("optimized") is not None)


@pytest.fixture(autouse=True)
def optimized(request):
    """A test marked `optimized` (a module's mark is `optimized_module`'s)."""
    yield from _optimizing(any(m.name == "optimized" for m in request.node.own_markers))


def shipped_config(name: str, defaults: dict, overrides: dict):
    """configs/<name>.py with `defaults`, then `overrides`, applied."""
    from lavin_jax import config as config_lib

    return config_lib.load(str(ROOT / "configs" / f"{name}.py"), {**defaults, **overrides})


def data_config(**fields):
    """config.base("jdit")'s data section with `fields` set (the synthetic sources' tests)."""
    from lavin_jax import config as config_lib

    c = config_lib.base("jdit")
    for key, value in fields.items():
        c.data[key] = value
    return c.data


def iterate(config, process_index: int = 0, process_count: int = 1, start_step: int = 0):
    """The pipeline's iterator over the source of `config`'s objective, as the trainer makes it."""
    from lavin_jax import objectives
    from lavin_jax.data import pipeline

    return pipeline.make_iterator(config, objectives.get(config).source(config.seed), process_index, process_count, start_step)


# configs/tiny.py shrunk further so a test compiles and steps in seconds.
SMALL = {
    "model.hidden": 48,
    "model.depth": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "data.image_size": 16,
    "data.tasks": ("colorization", "edges", "flip", "inpainting"),  # image tasks: fewer step shapes.
    "global_batch_size": 8,
    "sample.num_examples": 2,
    "flow.sample_steps": 3,
    "eval.episodes": 2,
    "compile_cache": "",  # the command lines tests run keep no compiled programs in the user's home.
    "model.scan_layers": True,  # one block to compile, whatever the depth: most of a test's time is compiling.
}


def small_config(**overrides):
    """configs/tiny.py with SMALL, then `overrides`."""
    return shipped_config("tiny", SMALL, overrides)


def fit(config, batch: dict, steps: int):
    """(objective, graphdef, params, mesh, the last step's stats) after `steps` real train steps
    on the one `batch`."""
    import jax
    from lavin_jax import parallel, train
    from lavin_jax import state as state_lib

    mesh = parallel.make_mesh(config)
    s = state_lib.setup(config, mesh)
    state = state_lib.init_state(config, s)
    step_fn = train.make_train_step(config, s)
    constants = state_lib.place_constants(s)
    placed = parallel.global_batch(batch, mesh, config.mesh.rules)  # the step donates only its state.
    for _ in range(steps):
        state, stats = step_fn(state, constants, placed, None)
        # Hundreds of steps queued without a wait can exhaust XLA's CPU runtime; the trainer waits
        # at every log.
        jax.block_until_ready(state["step"])
    return s.objective, s.graphdefs["model"], state["params"]["model"], mesh, jax.device_get(stats)


def one_digit_per_class(config):
    """(images, batch): the first training image of each digit of `config`'s dataset, [10, size,
    size, 3] in [-1, 1], and a train batch of config.global_batch_size of them, labelled."""
    import numpy as np
    from lavin_jax import conditioning

    dataset = conditioning.get(config).dataset("train")
    first = {}
    for i in range(len(dataset)):
        image, label = dataset.read(i)
        first.setdefault(label, image)
        if len(first) == 10:
            break
    images = np.stack([first[k] for k in range(10)]).astype(np.float32) / 127.5 - 1.0
    labels = np.arange(config.global_batch_size, dtype=np.int32) % 10
    return images, {"target": images[labels][:, None], "label": labels, "skipped": np.zeros_like(labels)}


# configs/dit_digits.py made small: 8 px digits, 16 tokens a few steps learn from.
DIGITS_SMALL = {
    "model.hidden": 64,
    "model.patch_size": 2,
    "model.depth": 2,
    "data.image_size": 8,
    "global_batch_size": 16,
    "sample.num_examples": 2,
    "flow.sample_steps": 5,
    "ddpm.sample_steps": 10,
    "eval.episodes": 2,
    "compile_cache": "",
}


def digits_config(**overrides):
    """configs/dit_digits.py with DIGITS_SMALL, then `overrides`."""
    return shipped_config("dit_digits", DIGITS_SMALL, overrides)


# configs/vdt_tiny.py made small: 16 px moving digits, 4-frame clips of 16 tokens each.
VDT_SMALL = {
    "model.hidden": 32,
    "model.num_heads": 2,
    "model.depth": 1,
    "data.image_size": 16,
    "data.video_frames": 4,
    "mask.given_frames": 2,
    "mask.interpolation_step": 2,
    "global_batch_size": 8,
    "sample.num_examples": 2,
    "flow.sample_steps": 3,
    "ddpm.sample_steps": 3,
    "eval.episodes": 2,
    "compile_cache": "",
}


def vdt_config(**overrides):
    """configs/vdt_tiny.py with VDT_SMALL, then `overrides`."""
    return shipped_config("vdt_tiny", VDT_SMALL, overrides)


GENTRON_SMALL = {"model.hidden": 32, "model.num_heads": 2, "model.depth": 1, "model.text_width": 16, "model.text_depth": 1,
                 "model.text_length": 72, "global_batch_size": 8, "eval.episodes": 4, "sample.num_examples": 2, "flow.sample_steps": 2}


GENTRON_FAST = {"optim.lr": 0.01, "optim.warmup_steps": 0, "optim.ema_decay": 0.0}


def gentron_config(**overrides):
    """configs/gentron_tiny.py with GENTRON_SMALL, then `overrides`."""
    return shipped_config("gentron_tiny", GENTRON_SMALL, overrides)


# XLA's CPU backend spends about half of a compile optimising machine code; a function a test runs
# once or a few times on tiny arrays is done sooner without that (what is computed is the same).
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def config_flags(fields: dict) -> list[str]:
    """`fields` as lavin_jax.main's --config.<field>=<value> flags."""
    return [f"--config.{name}={value!r}" if isinstance(value, tuple) else f"--config.{name}={value}" for name, value in fields.items()]


@pytest.fixture
def make_config():
    return small_config


def randomized(build, seed=0, scale=lambda shape: 0.2):
    """The module `build()` makes, with every parameter redrawn as scale(shape) * N(0, 1), so
    zero-initialised layers and unit norm scales cannot hide a bug. Built abstractly: an eager
    build compiles one initialiser per parameter shape, seconds on CPU."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    graphdef, params = nnx.split(nnx.eval_shape(build), nnx.Param)
    shapes, treedef = jax.tree.flatten(params.to_pure_dict())
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(scale(x.shape) * rng.standard_normal(x.shape), jnp.float32) for x in shapes]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def logical_axis_names(build) -> set:
    """The logical axis names of the parameters of `build()`, asserting every axis has one."""
    import jax
    from flax import nnx

    params = nnx.state(nnx.eval_shape(build), nnx.Param)
    specs = jax.tree.leaves(
        nnx.get_partition_spec(params).to_pure_dict(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    shapes = jax.tree.leaves(params.to_pure_dict())
    assert len(specs) == len(shapes) > 0
    names = set()
    for spec, shape in zip(specs, shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec), (spec, shape.shape)
        names.update(spec)
    return names


def write_inverted_pairs(directory, count=6, frames=1, size=16, task="negate", bad=()):
    """A record directory of one task of random size x size frames whose targets are 255 - input
    (-input in [-1, 1]), the pairs at indices `bad` stored with undecodable PNG bytes."""
    import numpy as np
    from lavin_jax.data import records

    broken = lambda x, _: {"encoding": "png", "shape": list(x.shape), "data": [b"\x89PNG broken"] * len(x)}
    rng = np.random.default_rng(0)
    with records.RecordWriter(str(directory), encoding="raw") as writer:
        for i in range(count):
            x = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
            with pytest.MonkeyPatch.context() as patch:
                if i in bad:
                    patch.setattr(records, "encode_frames", broken)
                writer.add(task, x, 255 - x, f"pair{i}.png")
    return str(directory)


# The trained J-DiT that inference, --mode=eval/sample and the notebooks load: image and video tasks.
TRAINED = {
    "data.tasks": ("flip", "edges", "frame_prediction"),
    "data.video_frames": 2,
    "data.max_pairs": 1,
    "data.cond_drop_prob": 0.0,  # with max_pairs=1, one train step shape.
    "total_steps": 1,
    "checkpoint_every": 1,
    "eval_every": 0,
}


@pytest.fixture(scope="session")
def trained_jdit(tmp_path_factory):
    """(config, workdir) of a one-step J-DiT run: a real checkpoint, metrics.jsonl and summary."""
    from lavin_jax import train

    workdir = tmp_path_factory.mktemp("trained_jdit")
    config = small_config(**TRAINED)
    train.train(config, str(workdir))
    return config, workdir


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """The workdir of a two-step class-conditional DiT run on the digits (configs/dit_digits.py)."""
    from lavin_jax import train

    workdir = tmp_path_factory.mktemp("trained_digits")
    train.train(digits_config(**{"total_steps": 2, "checkpoint_every": 2, "eval_every": 0}), str(workdir))
    return workdir


@pytest.fixture(scope="session")
def trained_vdt(tmp_path_factory):
    """The workdir of a two-step VDT run on moving digits (configs/vdt_tiny.py)."""
    from lavin_jax import train

    workdir = tmp_path_factory.mktemp("trained_vdt")
    train.train(vdt_config(**{"total_steps": 2, "checkpoint_every": 2, "eval_every": 0}), str(workdir))
    return workdir


@pytest.fixture(scope="session")
def trained_gentron(tmp_path_factory):
    """The workdir of a two-step text-to-image GenTron run on captioned scenes, its steps large
    and kept whole by the EMA (GENTRON_FAST) so that its zero-initialised layers have moved: the
    first step moves the final layer alone (the others' gradients pass through it), the second
    the layers before it, the caption's cross-attention among them."""
    from lavin_jax import train

    workdir = tmp_path_factory.mktemp("trained_gentron")
    train.train(gentron_config(**{"total_steps": 2, "checkpoint_every": 2, "eval_every": 0, **GENTRON_FAST}), str(workdir))
    return workdir


# --- torch.save archives without torch ---------------------------------------------------------
# A stand-in `torch` module, present only while pickling, makes pickle name the globals that
# torch's own files name (torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...).


def _stand_in_torch():
    import types

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2, torch._utils = _rebuild_tensor_v2, utils
    for name in ("FloatStorage", "BFloat16Storage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    return torch, utils


_TORCH, _TORCH_UTILS = _stand_in_torch()


class TorchView:
    """A tensor pickled as a view (element offset, size, stride) of `base`'s storage."""

    def __init__(self, base, offset, size, stride):
        self.base, self.offset, self.size, self.stride = base, offset, size, stride


def save_torch_archive(path, obj):
    """`obj` written as torch.save writes it (a zip of data.pkl and raw storages), numpy arrays
    and TorchViews as tensors."""
    import collections
    import io
    import pickle
    import sys
    import zipfile

    import ml_dtypes
    import numpy as np

    storage_types = {np.dtype(np.float32): "FloatStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage"}
    storages = {}  # id(base array) -> (key, array)

    def storage(base):
        base = np.ascontiguousarray(base)
        key, _ = storages.setdefault(id(base), (str(len(storages)), base))
        return ("storage", getattr(_TORCH, storage_types[base.dtype]), key, "cpu", base.size)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, _Storage) else None

        def reducer_override(self, obj):
            if isinstance(obj, np.ndarray):
                obj = TorchView(obj, 0, obj.shape, tuple(int(np.prod(obj.shape[i + 1 :])) for i in range(obj.ndim)))  # C order
            if isinstance(obj, TorchView):
                return _TORCH_UTILS._rebuild_tensor_v2, (_Storage(storage(obj.base)), obj.offset, tuple(obj.size), tuple(obj.stride), False, collections.OrderedDict())
            return NotImplemented

    buffer = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", _TORCH)
        patch.setitem(sys.modules, "torch._utils", _TORCH_UTILS)
        Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for key, array in storages.values():
            archive.writestr(f"archive/data/{key}", array.tobytes())


class _Storage:
    def __init__(self, pid):
        self.pid = pid


# --- released Hugging Face directories (models/released.py: t5, clip_text) ------------------------


def release_factory(module, layouts, tmp_path_factory):
    """layout -> (directory, the tensors written) of `module.write_random(*layouts[layout])`,
    each written on first use."""
    written = {}

    def get(layout):
        if layout not in written:
            directory = str(tmp_path_factory.mktemp(layout.replace("/", "_")))
            config, options = layouts[layout]
            written[layout] = directory, module.write_random(directory, config, seed=len(written), **options)
        return written[layout]

    return get


def rewrite_weights(directory, change):
    """A release's model.safetensors rewritten as change(its tensors)."""
    import safetensors.numpy
    from lavin_jax.models import released

    path = os.path.join(directory, released.WEIGHTS)
    safetensors.numpy.save_file(change(safetensors.numpy.load_file(path)), path)


def refused_before_reading(module, written, spoil, directory, monkeypatch, message):
    """A release written as `written` (config.json, write_random's options), then spoilt by
    `spoil(directory)`: `module.load` raises `message`, one sentence, before any tensor is read."""
    from lavin_jax.models import released

    config, options = written
    module.write_random(directory, config, **options)
    spoil(directory)

    def no_reading(self):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(released.Checkpoint, "reader", no_reading)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        module.load(directory)
