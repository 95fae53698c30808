"""J-DiT's objective: in-context flow matching on episodes (`lavin_jax.flow` has the math).

A batch is {"cond": [in_1, tgt_1, ..., in_K, tgt_K, query], "target": [answer], "task"}, each item
T frames (1 for image tasks, `data.video_frames` for video tasks); the model learns the velocity
of the noisy answer given the clean condition frames. In latent space each item is encoded as one
ST-VAE clip. Evaluation samples the answers of held-out episodes of every task with guidance and
scores them beside baselines (`lavin_jax.evaluation`); `lavin_jax.inference` prompts the model.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lavin_jax import evaluation, flow, latents, models, parallel
from lavin_jax.config import require
from lavin_jax.data import episodes, synthetic
from lavin_jax.objectives import Objective


def frame_shape(config) -> tuple[int, int]:
    """The side and channel count of one frame as J-DiT sees it: pixels or ST-VAE latents."""
    if config.vae.name == "none":
        return config.data.image_size, 3
    return config.data.image_size // config.vae.downsample, config.model.in_channels


def check_source(source: str) -> None:
    if source not in ("synthetic", "latents"):
        raise ValueError(f"config.data.source={source!r} is unknown; known sources: 'synthetic', 'latents'.")


class FlowMatching(Objective):
    @staticmethod
    def check(config) -> None:
        m, v, d, f = config.model, config.vae, config.data, config.flow
        require(v.name in ("none", "stvae"), f"config.vae.name={v.name!r} must be 'none' or 'stvae'.")
        require(
            v.name != "none" or m.in_channels == 3,
            f"config.model.in_channels={m.in_channels} but config.vae.name='none' trains on RGB "
            "pixels: set config.model.in_channels=3.",
        )
        require(
            v.name == "none" or (v.downsample > 0 and d.image_size % v.downsample == 0),
            f"config.data.image_size={d.image_size} is not divisible by config.vae.downsample={v.downsample}.",
        )
        size, _ = frame_shape(config)
        require(
            size > 0 and size % m.patch_size == 0,
            f"config.data.image_size={d.image_size} gives model inputs of side {size}, not divisible "
            f"by config.model.patch_size={m.patch_size}.",
        )
        check_source(d.source)
        if d.source == "latents":
            require(v.name == "stvae", "config.data.source='latents' needs config.vae.name='stvae' and its config.vae.checkpoint.")
            require(bool(d.latent_dir), "config.data.source='latents' needs config.data.latent_dir, a cache written by --mode=latent_cache.")
        require(
            not d.tasks or (d.image_size >= 16 and d.image_size % 4 == 0),
            f"config.data.image_size={d.image_size}: the synthetic tasks render frames whose side is a multiple of 4, at least 16.",
        )
        require(d.video_frames >= 2, f"config.data.video_frames={d.video_frames} must be at least 2.")
        if v.name == "stvae":
            synthetic.check_clip_frames("config.data.video_frames", int(d.video_frames))
        require(d.max_pairs >= 1, f"config.data.max_pairs={d.max_pairs} must be at least 1.")
        require(0.0 <= d.cond_drop_prob < 1.0, f"config.data.cond_drop_prob={d.cond_drop_prob} must be in [0, 1).")
        require(f.shift > 0, f"config.flow.shift={f.shift} must be positive.")
        require(f.t_std > 0, f"config.flow.t_std={f.t_std} must be positive.")
        require(f.sample_steps >= 1, f"config.flow.sample_steps={f.sample_steps} must be at least 1.")
        require(f.time_grid in flow.TIME_GRIDS, f"config.flow.time_grid={f.time_grid!r} must be one of {', '.join(flow.TIME_GRIDS)}.")
        require(
            f.time_grid != "official" or f.sample_steps == len(flow.OFFICIAL_GRID) - 1,
            f"config.flow.time_grid='official' has {len(flow.OFFICIAL_GRID) - 1} steps but config.flow.sample_steps={f.sample_steps}.",
        )
        require(0.0 < f.min_remaining <= 1.0, f"config.flow.min_remaining={f.min_remaining} must be in (0, 1].")
        require(f.prediction in flow.PREDICTIONS, f"config.flow.prediction={f.prediction!r} must be one of {', '.join(flow.PREDICTIONS)}.")
        require(f.sampler in flow.SAMPLERS, f"config.flow.sampler={f.sampler!r} must be one of {', '.join(flow.SAMPLERS)}.")
        require(config.sample.num_pairs >= 0, f"config.sample.num_pairs={config.sample.num_pairs} must be non-negative.")
        require(config.eval.episodes >= 1, f"config.eval.episodes={config.eval.episodes} must be at least 1.")

    def check_files(self) -> None:
        v = self.config.vae
        if v.name == "stvae" and not v.checkpoint:
            raise ValueError(
                "config.vae.name='stvae' needs config.vae.checkpoint, the workdir of an ST-VAE run "
                "(train one with configs/stvae_tiny.py or configs/stvae.py)."
            )
        if v.name == "stvae" and not os.path.isdir(os.path.join(v.checkpoint, "checkpoints")):
            raise FileNotFoundError(f"config.vae.checkpoint={v.checkpoint!r} is not an ST-VAE run: it has no checkpoints directory.")
        if v.name == "stvae":
            self.autoencoder  # loads it: latent statistics and channels are checked now.

    def check_eval_files(self) -> None:
        evaluation.check_files(self.config)

    def build(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {"model": models.build(self.config.model, rngs)}

    @functools.cached_property
    def autoencoder(self) -> latents.Autoencoder:
        """The frozen ST-VAE of config.vae.checkpoint (latent space only)."""
        autoencoder = latents.load(self.config.vae.checkpoint)
        channels = autoencoder.config.model.latent_channels
        if channels != self.config.model.in_channels:
            raise ValueError(
                f"config.model.in_channels={self.config.model.in_channels} but the ST-VAE of "
                f"config.vae.checkpoint={self.config.vae.checkpoint!r} makes {channels}-channel latents."
            )
        return autoencoder

    def source(self, seed: int):
        check_source(self.config.data.source)
        if self.config.data.source == "latents":
            return latents.LatentEpisodes(self.config)
        return episodes.Episodes(self.config.data, seed, self.config.global_batch_size)

    def constants(self) -> dict:
        if self.config.vae.name == "stvae":  # pixels are encoded (step, sampler), samples decoded.
            return {"vae": self.autoencoder.params}
        return {}

    def abstract_constants(self, mesh) -> dict:
        if self.config.vae.name != "stvae":
            return {}
        # Shapes from the ST-VAE run's config, or the released ST-VAE's where there is no run yet.
        self.autoencoder = latents.load(self.config.vae.checkpoint, abstract=True, mesh=mesh)
        return {"vae": self.autoencoder.params}

    def largest_batch(self, batch_size: int) -> dict:
        """max_pairs pairs of video items if the mixture has video tasks (else images), as the
        pipeline makes them: pixels, or latents from a cache."""
        c = self.config
        mixture = episodes.Episodes(c.data, c.seed, batch_size)
        video = mixture.video_share > 0
        if c.data.source == "latents":
            size, channels = frame_shape(c)
            frames = self.model_frames(c.data.video_frames if video else 1)
            items = (2 * c.data.max_pairs + 1) * frames
            return {
                "cond": jax.ShapeDtypeStruct((batch_size, items, size, size, channels), jnp.float32),
                "target": jax.ShapeDtypeStruct((batch_size, frames, size, size, channels), jnp.float32),
                "task": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            }
        example = mixture.episode(0, c.data.max_pairs, video)
        return {name: jax.ShapeDtypeStruct((batch_size, *x.shape), x.dtype) for name, x in example.items()}

    def encoded(self, batch: dict, constants: dict, frames: int) -> dict:
        """A batch of pixel items of `frames` frames with its `cond` (and `target`, if any) as
        ST-VAE latents, each item encoded as one clip."""
        encode = lambda x: self.autoencoder.encode_frames(constants["vae"], x, frames)
        return {**batch, **{name: encode(batch[name]) for name in ("cond", "target") if name in batch}}

    def model_frames(self, frames: int) -> int:
        """How many frames the model sees for an item of `frames` pixel frames."""
        if self.config.vae.name == "none":
            return frames
        return self.autoencoder.latent_frames(frames)

    def grads(self, graphdefs, params, constants, batch, key, phase):
        if self.config.vae.name == "stvae" and self.config.data.source == "synthetic":
            batch = self.encoded(batch, constants, batch["target"].shape[1])  # a cache holds latents already.
        loss_fn = lambda p: flow.loss(nnx.merge(graphdefs["model"], p), batch, key, self.config.flow)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params["model"])
        return {"model": grads}, {"loss": loss, **aux}

    def example_inputs(self) -> tuple:
        """A batch of one of the config's largest episodes: max_pairs pairs, a query, one target."""
        size, channels = frame_shape(self.config)
        frame = (size, size, channels)
        x = jax.ShapeDtypeStruct((1, 1, *frame), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        cond = jax.ShapeDtypeStruct((1, 2 * self.config.data.max_pairs + 1, *frame), jnp.float32)
        return x, t, {"cond": cond}

    def sampler(self, graphdef, mesh: Mesh):
        """Jitted (params, constants, cond, seed, indices, grid, cfg_scale, frames, guided, method)
        -> the answers, pixels [B, frames, H, W, 3], of the episodes whose pixel items of `frames`
        frames `cond` holds (encoded and decoded here in latent space). Episode b's noise comes
        from (seed, indices[b]) alone. The time `grid` and `cfg_scale` are traced, so another
        guidance scale does not recompile; `frames`, `guided` (scale != 1) and the integration
        `method` are static."""
        c = self.config
        size, channels = frame_shape(c)

        def sample(params, constants, cond, seed, indices, grid, cfg_scale, frames, guided, method):
            with parallel.activation_sharding(mesh, c.mesh.rules):
                model = nnx.merge(graphdef, params)
                context = {"cond": cond}
                if c.vae.name == "stvae":
                    context = self.encoded(context, constants, frames)
                keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(indices)
                shape = (cond.shape[0], self.model_frames(frames), size, size, channels)
                prediction = flow.sample(model, context, keys, shape, grid, cfg_scale=cfg_scale if guided else None,
                                         method=method, prediction=c.flow.prediction, min_remaining=c.flow.min_remaining)
                if c.vae.name == "stvae":
                    prediction = self.autoencoder.decode_frames(constants["vae"], prediction, frames)
                return prediction

        # Replicated, so every host can read every answer.
        return jax.jit(sample, out_shardings=NamedSharding(mesh, PartitionSpec()), static_argnums=(7, 8, 9))

    def evaluate(self, graphdefs, params, constants, mesh):
        """Per-task scores beside the baselines (`lavin_jax.evaluation`), and a grid per task."""
        from lavin_jax import inference  # it builds on this objective.

        # Built once per run (graphdefs, constants and mesh do not change within it): the episodes
        # and the compiled sampler; each evaluation brings newer EMA parameters.
        if not hasattr(self, "_evaluation"):
            self._evaluation = evaluation.Evaluation(self.config)
            self._predictor = inference.Predictor(self, graphdefs["model"], params, constants, mesh)
        self._predictor.params = params
        report = self._evaluation.run(self._predictor)
        return report["grids"], evaluation.scalars(report)
