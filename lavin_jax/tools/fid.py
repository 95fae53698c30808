"""Sample quality as guided-diffusion's evaluator reports it (openai/guided-diffusion,
`evaluations/evaluator.py`, the numbers of ADM, DiT and most class-conditional ImageNet papers):
Inception Score, FID, sFID, precision and recall of a batch of samples against a reference batch.

    python -m lavin_jax.tools.fid --samples=S.npz --reference=R.npz \\
        [--inception=fid_inception.safetensors] [--batch=256] [--out=metrics.json]
    python -m lavin_jax.tools.fid --make_reference --config=configs/dit_digits.py --out=R.npz [--num=N]

The files are the evaluator's: `arr_0`, uint8 images [N, H, W, 3] (what `--mode=sample` writes
with `sample.num`). A reference may hold, beside its images or instead of them, statistics: `mu`
[2048] and `sigma` [2048, 2048] (FID's), `mu_s` [2023] and `sigma_s` [2023, 2023] (sFID's), as
ADM's reference batches do; stored statistics stand in for those of the file's images, as in
the evaluator. Precision and recall compare features, so they need the reference's images.
`--make_reference` writes a run's own held-out images as a reference: the config's class-labelled
'test' split (`config.data.classes`, at `config.data.image_size`), all of it or `--num` images
drawn by `config.seed`, with their `labels`.

The network is pytorch-fid's port of the evaluator's TensorFlow graph (`lavin_jax.models.inception`,
the file `inception.CONVERT_COMMAND` makes), one pass per image for all five metrics: pool3 (FID,
precision, recall), the first 7 channels of Mixed_6d's 1x1 branch (sFID; TensorFlow's
`mixed_6/conv`) and the classifier's logits (Inception Score). A file converted before the
classifier was kept gives all but the Inception Score. Images go in as pytorch-fid feeds them,
x / 127.5 - 1, resized bilinearly to 299 with half-pixel centres; the evaluator's graph instead
resizes with TensorFlow 1's ResizeBilinear (no half-pixel centres) and maps (x - 128) / 128, so
values differ slightly from its own, as pytorch-fid's do from TTUR's. Features are computed in batches sharded
over all devices; the statistics and metrics in float64 numpy, the neighbour distances on the
device.

How each metric follows the evaluator:
- FID, sFID: `evaluation.frechet_distance` of mean and np.cov covariance, by the evaluator's
  `frechet_distance` (scipy sqrtm, eps 1e-6 retry, imaginary parts under 1e-3 dropped), except
  that a side with fewer images than features (a singular covariance) takes the exact low-rank
  form: the evaluator's sqrtm of a singular product is unreliable.
- Inception Score: `inception_score`, splits of 5000.
- Precision, recall: `precision_recall`, the evaluator's ManifoldEstimator: k = 3, blocks of
  10000, float16 distances with float32 where float16 overflows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zipfile
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec

from lavin_jax import config as config_lib
from lavin_jax import evaluation
from lavin_jax.data import labelled
from lavin_jax.models import inception

SPLIT = 5000  # images per Inception Score split (the evaluator's split_size).
NEIGHBOUR = 3  # the k of the k-NN radii (its nhood_sizes=(3,)).
BLOCK = 10000  # rows and columns per distance block (its row_batch_size and col_batch_size).
MIN_IMAGES = NEIGHBOUR + 1  # an image's 3rd neighbour besides itself.

# metric -> (its statistics' names in a file, their width, the network output they fit).
STATISTICS = {
    "fid": ("mu", "sigma", inception.FEATURES, "pool"),
    "sfid": ("mu_s", "sigma_s", inception.SPATIAL_FEATURES, "spatial"),
}
# The report's metrics, in the evaluator's order, with its printed names.
NAMES = {"inception_score": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision", "recall": "Recall"}


# --- the metrics ---------------------------------------------------------------------------------


def inception_score(logits: np.ndarray, split: int = SPLIT) -> float:
    """The evaluator's `compute_inception_score` (improved-gan's Inception Score): over splits of
    `split` consecutive images (the last may be shorter), the mean of exp(mean over the split of
    KL(p(y|x) || p(y))), p(y) the split's mean of p(y|x) = softmax(logits). Computed in float64
    from the logits' log-softmax, so a probability that underflows contributes its limit, 0,
    where the evaluator's float32 0 * log 0 would be NaN."""
    log_p = np.asarray(logits, np.float64)
    log_p = log_p - scipy.special.logsumexp(log_p, axis=1, keepdims=True)
    scores = []
    for start in range(0, len(log_p), split):
        part = log_p[start : start + split]
        log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
    return float(np.mean(scores))


def _squared_distances(u: jax.Array, v: jax.Array) -> jax.Array:
    """max(|u|^2 - 2 u.v + |v|^2, 0) for every row pair in u's dtype, the evaluator's expression;
    the norms' and products' sums accumulate in float32, as GPU kernels sum float16."""
    norm_u = jnp.sum(jnp.square(u), axis=1, dtype=jnp.float32).astype(u.dtype)
    norm_v = jnp.sum(jnp.square(v), axis=1, dtype=jnp.float32).astype(u.dtype)
    dots = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32).astype(u.dtype)
    return jnp.maximum(norm_u[:, None] - 2 * dots + norm_v[None, :], 0)


@jax.jit
def pairwise_distances(u: jax.Array, v: jax.Array) -> jax.Array:
    """The evaluator's DistanceBlock: squared Euclidean distances [N, M] of rows u [N, D] and
    v [M, D], computed in float16 and, where any of the block's overflows, in float32; float32."""
    half = _squared_distances(u.astype(jnp.float16), v.astype(jnp.float16))
    return jax.lax.cond(
        jnp.all(jnp.isfinite(half)),
        lambda: half.astype(jnp.float32),
        lambda: _squared_distances(u.astype(jnp.float32), v.astype(jnp.float32)),
    )


@functools.partial(jax.jit, static_argnums=2)
def _smallest(u: jax.Array, v: jax.Array, count: int) -> jax.Array:
    """The `count` smallest distances from each row of u to the rows of v."""
    return -jax.lax.top_k(-pairwise_distances(u, v), count)[0]


def manifold_radii(features: np.ndarray, k: int = NEIGHBOUR, block: int = BLOCK) -> np.ndarray:
    """The evaluator's `ManifoldEstimator.manifold_radii`: each feature vector's squared distance
    to its k-th nearest neighbour among `features`, itself counted as the 0th (the k-th smallest
    of its row of distances, from 0), distances in `block` x `block` blocks; float32 [N]."""
    features = jnp.asarray(features, jnp.float32)
    if len(features) <= k:
        raise ValueError(f"{len(features)} feature vectors have no {k}th nearest neighbour besides themselves.")
    radii = []
    for start in range(0, len(features), block):
        rows = features[start : start + block]
        columns = [features[c : c + block] for c in range(0, len(features), block)]
        nearest = jnp.concatenate([_smallest(rows, v, min(k + 1, len(v))) for v in columns], axis=1)
        radii.append(np.asarray(jnp.sort(nearest, axis=1)[:, k]))
    return np.concatenate(radii)


@jax.jit
def _covered(real: jax.Array, real_radii: jax.Array, fake: jax.Array, fake_radii: jax.Array):
    """(each real vector within some fake one's radius, each fake vector within some real one's)."""
    distances = pairwise_distances(real, fake)
    return jnp.any(distances <= fake_radii[None, :], axis=1), jnp.any(distances <= real_radii[:, None], axis=0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOUR, block: int = BLOCK) -> tuple[float, float]:
    """The evaluator's `compute_prec_recall` (Kynkäänniemi et al. 2019, improved precision and
    recall): each set's manifold is the union of balls around its vectors of their k-NN radii
    (`manifold_radii`); precision is the share of `fake` inside the manifold of `real`, recall
    the share of `real` inside that of `fake`, distance <= radius, all squared."""
    real, fake = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
    real_radii, fake_radii = manifold_radii(real, k, block), manifold_radii(fake, k, block)
    real_in, fake_in = np.zeros(len(real), bool), np.zeros(len(fake), bool)
    for i in range(0, len(real), block):
        for j in range(0, len(fake), block):
            a, b = _covered(real[i : i + block], real_radii[i : i + block], fake[j : j + block], fake_radii[j : j + block])
            real_in[i : i + block] |= np.asarray(a)
            fake_in[j : j + block] |= np.asarray(b)
    return float(fake_in.mean()), float(real_in.mean())


# --- the files -----------------------------------------------------------------------------------

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclasses.dataclass(frozen=True)
class BatchFile:
    """An evaluator's .npz, checked: `count` images in arr_0 (0: none) and the statistics it
    stores, {"fid" or "sfid": (mean, covariance)} in float64."""

    path: str
    count: int
    statistics: dict

    def images(self, size: int) -> Iterator[np.ndarray]:
        """arr_0 in chunks of `size` images, streamed from the archive: a 50,000-image batch
        is never in memory whole."""
        with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as member:
            shape, fortran, _ = _HEADER_READERS[np.lib.format.read_magic(member)](member)
            if fortran:  # stored column-major: an image's bytes are not contiguous.
                whole = np.load(self.path)["arr_0"]
                yield from (whole[i : i + size] for i in range(0, len(whole), size))
                return
            per_image = int(np.prod(shape[1:]))
            for start in range(0, shape[0], size):
                count = min(size, shape[0] - start)
                data = member.read(count * per_image)
                if len(data) != count * per_image:
                    raise ValueError(f"{self.path}'s arr_0 ends after {start + len(data) // per_image} of its {shape[0]} images.")
                yield np.frombuffer(data, np.uint8).reshape(count, *shape[1:])


def read_batch_file(path: str, role: str) -> BatchFile:
    """The .npz at `path` (`role` "samples" or "reference", for messages) checked from its
    headers and statistics, no image read; one sentence naming the file if it cannot be used.
    Samples must be images (the Inception Score, precision and recall are theirs)."""
    what = f"{role.capitalize()} file {path}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {name.removesuffix(".npy") for name in archive.namelist() if name.endswith(".npy")}
            count = _image_count(archive, what) if "arr_0" in arrays else 0
    except zipfile.BadZipFile:
        raise ValueError(f"{what} is not an .npz file (a zip of .npy arrays, as np.savez writes).") from None
    if not count and role == "samples":
        raise ValueError(f"{what} has no arr_0: samples are uint8 images [N, H, W, 3] in arr_0.")
    statistics = {}
    with np.load(path) as held:
        for metric, (mean_name, covariance_name, width, _) in STATISTICS.items():
            present = [name for name in (mean_name, covariance_name) if name in arrays]
            if len(present) == 1:
                missing = covariance_name if present[0] == mean_name else mean_name
                raise ValueError(f"{what} holds {present[0]} without {missing}.")
            if present:
                mean, covariance = held[mean_name], held[covariance_name]
                floats = all(np.issubdtype(array.dtype, np.floating) for array in (mean, covariance))
                if mean.shape != (width,) or covariance.shape != (width, width) or not floats:
                    raise ValueError(
                        f"{what} holds {mean_name} {mean.dtype} {list(mean.shape)} and {covariance_name} {list(covariance.shape)}, "
                        f"not FID Inception's {metric} statistics, float [{width}] and [{width}, {width}]."
                    )
                statistics[metric] = (mean.astype(np.float64), covariance.astype(np.float64))
    if not count and not statistics:
        raise ValueError(f"{what} holds neither images (arr_0) nor statistics (mu and sigma).")
    return BatchFile(path, count, statistics)


def _image_count(archive: zipfile.ZipFile, what: str) -> int:
    """The number of images in arr_0, from its .npy header; ValueError unless uint8 [N, H, W, 3]
    of at least MIN_IMAGES."""
    with archive.open("arr_0.npy") as member:
        try:
            reader = _HEADER_READERS.get(np.lib.format.read_magic(member))
            if reader is None:
                raise ValueError("an .npy format version np.savez does not write")
            shape, _, dtype = reader(member)
        except ValueError as error:
            raise ValueError(f"{what}'s arr_0 cannot be read as an .npy array ({error}).") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or 0 in shape[1:]:
        raise ValueError(f"{what}'s arr_0 is {dtype} {list(shape)}, not uint8 images [N, H, W, 3].")
    if shape[0] < MIN_IMAGES:
        raise ValueError(
            f"{what} holds {shape[0]} images; the metrics need at least {MIN_IMAGES} "
            f"(precision and recall read each image's {NEIGHBOUR}rd nearest neighbour)."
        )
    return int(shape[0])


def check_out(path: str) -> None:
    """FileNotFoundError unless the folder `--out=path` goes into exists."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out={path}: the folder {folder} does not exist.")


def check_inputs(samples: str, reference: str, weights_path: str) -> tuple[BatchFile, BatchFile]:
    """Everything an evaluation reads, checked before the network runs: the two .npz files and
    the converted Inception (every tensor present and of its shape, from the header)."""
    samples_file, reference_file = read_batch_file(samples, "samples"), read_batch_file(reference, "reference")
    inception.check_file(weights_path)
    return samples_file, reference_file


# --- the network ---------------------------------------------------------------------------------


@jax.jit
def _outputs(weights, images: jax.Array) -> dict[str, jax.Array]:
    # uint8 crosses to the device (a quarter of float32's bytes); pytorch-fid's x / 255 * 2 - 1 here.
    return inception.outputs(weights, images.astype(jnp.float32) / 127.5 - 1.0)


def network_outputs(weights, chunks: Iterable[np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """`inception.outputs` of uint8 image chunks (each at most `batch` images, `batch` a multiple
    of the device count) -> {"pool", "spatial"[, "logits"]: float32 [N, D]}. Each batch is
    sharded over a 1-D mesh of all devices; the last is padded to `batch` (one compiled shape)
    and its padding dropped. One batch is computed while the one before comes back."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    weights = jax.device_put(weights, NamedSharding(mesh, PartitionSpec()))
    parts, pending = [], None
    for chunk in chunks:
        count = len(chunk)
        if count < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - count, *chunk.shape[1:]), np.uint8)])
        computed = (_outputs(weights, jax.device_put(chunk, rows)), count)
        if pending is not None:
            parts.append({name: np.asarray(value)[: pending[1]] for name, value in pending[0].items()})
        pending = computed
    parts.append({name: np.asarray(value)[: pending[1]] for name, value in pending[0].items()})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def device_batch(batch: int) -> int:
    """`batch` rounded up to a multiple of the device count, so each device gets equal rows."""
    devices = jax.device_count()
    return -(-batch // devices) * devices


# --- the evaluation ------------------------------------------------------------------------------


def evaluate(samples: BatchFile, reference: BatchFile, weights_path: str, batch: int) -> dict:
    """The five metrics of `samples` against `reference` (both checked by `check_inputs`), with
    the Inception converted at `weights_path`: {metric: value or None for each of NAMES,
    "unavailable": {metric: why}, "samples", "reference": paths, "num_samples", "num_reference"}."""
    weights = inception.load(weights_path)
    batch = device_batch(batch)
    fake = network_outputs(weights, samples.images(batch), batch)
    real = network_outputs(weights, reference.images(batch), batch) if reference.count else None
    values, unavailable = dict.fromkeys(NAMES), {}
    if "logits" in fake:
        values["inception_score"] = inception_score(fake["logits"])
    else:
        unavailable["inception_score"] = (
            f"{weights_path} was converted without the classifier the Inception Score reads; "
            f"convert it again with `{inception.CONVERT_COMMAND}`."
        )
    for metric, (mean_name, covariance_name, _, output) in STATISTICS.items():
        # A file's stored statistics stand in for its images', as in the evaluator.
        sides = [
            file.statistics.get(metric, None if outputs is None else outputs[output])
            for file, outputs in ((samples, fake), (reference, real))
        ]
        if sides[1] is None:
            unavailable[metric] = f"{reference.path} holds neither images (arr_0) nor {mean_name} and {covariance_name}."
        else:
            values[metric] = evaluation.frechet_distance(*sides)
    if real is None:
        why = f"{reference.path} holds statistics only, not the images (arr_0) whose features precision and recall compare."
        unavailable.update(precision=why, recall=why)
    else:
        values["precision"], values["recall"] = precision_recall(real["pool"], fake["pool"])
    return {
        **values,
        "unavailable": unavailable,
        "samples": samples.path,
        "reference": reference.path,
        "num_samples": samples.count,
        "num_reference": reference.count,
    }


def report_lines(report: dict) -> list[str]:
    """`Name: value` per metric as the evaluator prints them, or `Name: unavailable (why)`."""
    return [
        f"{name}: {report[metric]}" if report[metric] is not None else f"{name}: unavailable ({report['unavailable'][metric]})"
        for metric, name in NAMES.items()
    ]


# --- a reference from a run's held-out images ----------------------------------------------------


def reference_source(config, out: str, num: int) -> tuple[labelled.Dataset, np.ndarray]:
    """(the config's class-labelled 'test' split, the indices of the images to write), checked
    before any image is read: all of the split for `num` 0, else `num` drawn by config.seed."""
    if config.conditioning != "class":
        raise ValueError(
            f"--make_reference writes a class-labelled test split, but the config's conditioning is "
            f"{config.conditioning!r}, not 'class'."
        )
    if not out.endswith(".npz"):
        raise ValueError(f"--out={out} must name an .npz file.")
    check_out(out)
    d = config.data
    dataset = labelled.open_dataset(d.classes, "test", int(d.image_size), seed=int(config.seed))
    if num and not MIN_IMAGES <= num <= len(dataset):
        raise ValueError(f"--num={num} must be in [{MIN_IMAGES}, {len(dataset)}], the images of {dataset.name}.")
    if not num or num == len(dataset):
        return dataset, np.arange(len(dataset))
    # Drawn, not the first `num`: a split stored class by class would give a few classes only.
    return dataset, np.sort(np.random.default_rng(int(config.seed)).choice(len(dataset), num, replace=False))


def write_reference(dataset: labelled.Dataset, indices: np.ndarray, out: str) -> str:
    """The images at `indices` of `dataset` into `out` as the evaluator reads them: `arr_0` uint8
    [N, S, S, 3], and their `labels`."""
    images, labels = zip(*(dataset.read(i) for i in indices))
    np.savez(out, arr_0=np.stack(images), labels=np.asarray(labels, np.int32))
    return f"Wrote {len(indices)} images of {dataset.name} ({dataset.size} px) to {out}."


# --- the command ---------------------------------------------------------------------------------


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (imported as a
    library, it must not claim --config or --out)."""
    flags.DEFINE_string("samples", None, "The samples: an .npz with arr_0, uint8 images [N, H, W, 3].")
    flags.DEFINE_string("reference", None, "The reference: an .npz with arr_0 images and/or mu, sigma (mu_s, sigma_s).")
    flags.DEFINE_string("inception", "fid_inception.safetensors", f"The converted FID Inception ({inception.CONVERT_COMMAND}).")
    flags.DEFINE_integer("batch", 256, "Images per network batch, over all devices (rounded up to a multiple of their count).")
    flags.DEFINE_string("out", None, "Where to write the metrics as JSON; with --make_reference, the reference .npz.")
    flags.DEFINE_bool("make_reference", False, "Write the --config's class-labelled test split as a reference .npz.")
    flags.DEFINE_string("config", None, "With --make_reference: a config file (file.py or file.py:argument).")
    flags.DEFINE_integer("num", 0, "With --make_reference: images to write, drawn by config.seed; 0: the whole split.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    # A person's mistakes are found before anything is computed: one sentence each.
    if f.make_reference:
        if f.samples or f.reference:
            raise ValueError("--make_reference writes a reference from --config; it takes no --samples or --reference.")
        if not (f.config and f.out):
            raise ValueError("--make_reference needs --config=CONFIG and --out=R.npz.")
        dataset, indices = reference_source(config_lib.load(f.config), f.out, f.num)
    else:
        if f.config or f.num:
            raise ValueError("--config and --num go with --make_reference.")
        if not (f.samples and f.reference):
            raise ValueError("Give --samples=S.npz and --reference=R.npz (or --make_reference --config=CONFIG --out=R.npz).")
        if f.batch < 1:
            raise ValueError(f"--batch={f.batch} must be positive.")
        if f.out:
            check_out(f.out)
        samples, reference = check_inputs(f.samples, f.reference, f.inception)
    if f.make_reference:
        print(write_reference(dataset, indices, f.out))
        return
    report = evaluate(samples, reference, f.inception, f.batch)
    print("\n".join(report_lines(report)))
    if f.out:
        with open(f.out, "w") as file:
            json.dump(report, file, indent=2)
        print(f"Wrote the metrics to {f.out}.")


if __name__ == "__main__":
    define_flags()
    config_lib.for_people(lambda: app.run(main))  # a mistake: `error: <sentence>`, exit 1; a bug: its traceback.
