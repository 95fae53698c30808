"""The ST-VAE's objective: reconstruction, KL, perceptual and adversarial losses.

A batch is {"video": (B, T, H, W, 3)} in [-1, 1]: images (T=1) or clips (T=1+4k), per global batch
by the data curriculum (`synthetic.clip_length`). The generator (the ST-VAE, `"model"`) minimises

    l1 * |x - x̂| + mse * (x - x̂)^2 + lpips * LPIPS(x, x̂) + kl * KL + adaptive * disc * (-D(x̂))

(each a mean: over pixels, frames and latent elements), and the discriminator (`"disc"`, its own
optimizer state) the hinge loss on real clips against stop-gradient reconstructions, both in the
same jitted step. The adaptive weight balances the adversarial gradient against the
reconstruction gradient at the decoder's output conv, ||g_rec|| / ||g_adv||, as taming-transformers
does; both gradients come from one forward pass (`jax.vjp` pulled back twice). Before
`autoencoder.disc_start` the discriminator is not run at all: the step's `phase` is static.
"""

from __future__ import annotations

import os

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lavin_jax import metrics, models, parallel
from lavin_jax.config import require
from lavin_jax.data import synthetic
from lavin_jax.models import discriminator, lpips
from lavin_jax.objectives.base import Objective


def hinge_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def frames(x: jax.Array) -> jax.Array:
    """(B, T, H, W, C) -> (B*T, H, W, C): image metrics and LPIPS judge frame by frame."""
    return x.reshape(-1, *x.shape[2:])


class Autoencoding(Objective):
    @staticmethod
    def check(config) -> None:
        a, d, m = config.autoencoder, config.data, config.model
        for field in ("l1_weight", "mse_weight", "kl_weight", "lpips_weight", "disc_weight"):
            require(a[field] >= 0, f"config.autoencoder.{field}={a[field]} must be non-negative.")
        require(
            a.l1_weight + a.mse_weight + a.lpips_weight > 0,
            "config.autoencoder: l1_weight, mse_weight and lpips_weight are all 0, so nothing asks "
            "for a reconstruction.",
        )
        require(a.disc_start >= 0, f"config.autoencoder.disc_start={a.disc_start} must be non-negative.")
        require(a.eval_examples >= 1, f"config.autoencoder.eval_examples={a.eval_examples} must be at least 1.")
        require(d.source == "synthetic", f"config.data.source={d.source!r}: the ST-VAE trains on 'synthetic' images and clips.")
        synthetic.check_clip_frames("config.data.clip_frames", int(d.clip_frames))
        space = 2 ** (len(m.channels) - 1)
        require(
            d.image_size % space == 0,
            f"config.data.image_size={d.image_size} is not divisible by the ST-VAE's spatial factor {space}.",
        )
        require(d.video_start >= 0, f"config.data.video_start={d.video_start} must be non-negative.")
        require(0.0 <= d.video_share <= 1.0, f"config.data.video_share={d.video_share} must be in [0, 1].")
        if a.disc_weight > 0:
            discriminator.check_config(a.disc)
            require(
                d.image_size >= discriminator.min_size(a.disc),
                f"config.data.image_size={d.image_size} is below the discriminator's smallest input "
                f"{discriminator.min_size(a.disc)} px (config.autoencoder.disc.layers={a.disc.layers}).",
            )

    def check_files(self, data: bool = True) -> None:
        a = self.config.autoencoder
        if a.lpips_weight <= 0:
            return
        require(bool(a.lpips_file), "config.autoencoder.lpips_weight > 0 needs config.autoencoder.lpips_file, "
                 f"a weights file made by: {lpips.CONVERT_COMMAND}.")
        if not os.path.exists(a.lpips_file):
            raise FileNotFoundError(
                f"config.autoencoder.lpips_file={a.lpips_file!r} does not exist; make it with: "
                f"{lpips.CONVERT_COMMAND}."
            )
        lpips.check_file(a.lpips_file)  # names a missing or misshapen tensor now, not mid-run.

    def build(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        modules = {"model": models.build(self.config.model, rngs)}
        if self.config.autoencoder.disc_weight > 0:
            modules["disc"] = discriminator.PatchDiscriminator3D(
                self.config.autoencoder.disc, in_channels=self.config.model.in_channels, rngs=rngs
            )
        return modules

    def source(self, seed: int) -> synthetic.SyntheticClips:
        return synthetic.SyntheticClips(self.config.data, seed, global_batch_size=self.config.global_batch_size)

    def constants(self) -> dict:
        if self.config.autoencoder.lpips_weight > 0:
            return {"lpips": lpips.load(self.config.autoencoder.lpips_file)}
        return {}

    def abstract_constants(self, mesh) -> dict:
        if self.config.autoencoder.lpips_weight > 0:  # the shapes are VGG16's, file or not.
            return {"lpips": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), lpips.random_weights(0))}
        return {}

    def largest_batch(self, batch_size: int) -> dict:
        d = self.config.data
        shape = (batch_size, d.clip_frames, d.image_size, d.image_size, self.config.model.in_channels)
        return {"video": jax.ShapeDtypeStruct(shape, jnp.float32)}

    def phase(self, step: int) -> bool:
        """Whether the adversarial game is on at `step`."""
        a = self.config.autoencoder
        return a.disc_weight > 0 and step >= a.disc_start

    def reconstruction_terms(self, x, recon, constants) -> dict[str, jax.Array]:
        a = self.config.autoencoder
        x, recon = x.astype(jnp.float32), recon.astype(jnp.float32)
        terms = {"l1": jnp.mean(jnp.abs(x - recon)), "mse": jnp.mean(jnp.square(x - recon))}
        if "lpips" in constants:
            terms["lpips"] = jnp.mean(lpips.distance(constants["lpips"], frames(x), frames(recon)))
        terms["rec"] = a.l1_weight * terms["l1"] + a.mse_weight * terms["mse"] + a.lpips_weight * terms.get("lpips", 0.0)
        return terms

    def grads(self, graphdefs, params, constants, batch, key, adversarial):
        a = self.config.autoencoder
        x = batch["video"]
        disc = (lambda p: nnx.merge(graphdefs["disc"], p)) if "disc" in graphdefs else None

        def generator(vae_params):
            recon, posterior = nnx.merge(graphdefs["model"], vae_params)(x, key)
            terms = self.reconstruction_terms(x, recon, constants)
            terms["kl"] = jnp.mean(posterior.kl()) / np.prod(posterior.mean.shape[1:])  # per latent element
            g_loss = -jnp.mean(disc(params["disc"])(recon).astype(jnp.float32)) if adversarial else jnp.zeros(())
            return (terms["rec"] + a.kl_weight * terms["kl"], g_loss), (recon, terms)

        (vae_loss, g_loss), pull_back, (recon, stats) = jax.vjp(generator, params["model"], has_aux=True)
        (g_vae,) = pull_back((jnp.ones(()), jnp.zeros(())))
        grads, loss = {"model": g_vae}, vae_loss  # no "disc" before the game: it stays as it is.
        if adversarial:
            (g_adv,) = pull_back((jnp.zeros(()), jnp.ones(())))
            last = lambda g: optax.tree.norm(g["decoder"]["conv_out"])
            adaptive = jnp.clip(last(g_vae) / (last(g_adv) + 1e-4), 0.0, 1e4)
            weight = a.disc_weight * adaptive
            grads["model"] = jax.tree.map(lambda r, g: r + weight * g, g_vae, g_adv)
            loss = vae_loss + weight * g_loss

            def disc_loss(disc_params):
                d = disc(disc_params)
                real = d(x).astype(jnp.float32)
                fake = d(jax.lax.stop_gradient(recon)).astype(jnp.float32)
                return hinge_loss(real, fake), (jnp.mean(real), jnp.mean(fake))

            (d_loss, (real, fake)), grads["disc"] = jax.value_and_grad(disc_loss, has_aux=True)(params["disc"])
            stats.update(g_loss=g_loss, adaptive_weight=adaptive, disc_loss=d_loss, logits_real=real, logits_fake=fake)
        return grads, {"loss": loss, **stats}

    def example_inputs(self) -> tuple:
        """One clip of data.clip_frames frames, and the posterior's sampling key."""
        d = self.config.data
        clip = jax.ShapeDtypeStruct((1, d.clip_frames, d.image_size, d.image_size, self.config.model.in_channels), jnp.float32)
        return clip, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def held_out(self) -> dict[str, np.ndarray]:
        """Fixed evaluation images and clips, from a seed no training batch uses."""
        c = self.config
        held = {}
        for name, length in (("images", 1), ("clips", c.data.clip_frames)):
            source = synthetic.SyntheticClips(c.data, c.seed + 1, frames=length)
            held[name] = np.stack([source[i]["video"] for i in range(c.autoencoder.eval_examples)])
        return held

    def evaluate(self, graphdefs, params, constants, mesh):
        """PSNR and SSIM of posterior-mode reconstructions (pixels mapped to [0, 1]), and grids
        of originals above reconstructions."""
        if not hasattr(self, "_reconstruct"):  # built once per run: the data and the compiled call.
            self._held_out = self.held_out()
            self._inputs = {name: parallel.replicate(x, mesh) for name, x in self._held_out.items()}

            def reconstruct(params, x):
                vae = nnx.merge(graphdefs["model"], params)
                recon = jnp.clip(vae.decode(vae.encode(x).mode()).astype(jnp.float32), -1.0, 1.0)
                unit = lambda v: frames(v + 1.0) / 2.0
                return recon, dm_pix.psnr(unit(x), unit(recon)), dm_pix.ssim(unit(x), unit(recon))

            self._reconstruct = jax.jit(reconstruct)
        images, scalars = {}, {}
        for name, x in self._inputs.items():
            recon, psnr, ssim = jax.device_get(self._reconstruct(params, x))
            scalars[f"eval/psnr_{name}"] = float(np.mean(psnr))
            scalars[f"eval/ssim_{name}"] = float(np.mean(ssim))
            original = self._held_out[name]
            rows = np.stack([original, recon], axis=1).reshape(-1, *original.shape[1:])
            scale = max(1, 64 // original.shape[2])
            images[f"reconstructions_{name}"] = metrics.frame_grid(rows, scale=scale)
        return images, scalars
