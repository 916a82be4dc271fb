"""Representational comparison of mouse visual areas (and Cre lines) with DNN layers and units.

Three families of measures, as in Qazi, Jalil & Iqbal, "Mice to Machines" (arXiv 2505.06886), plus
the field's two standard population measures:

1. Neural representations. A neuron's representation is its response-weighted stimulus average,
   ``N = T^T . F_S`` with ``T (n_trials, n_neurons)`` the trial responses and ``F_S (n_trials, P)``
   the flattened, resized stimulus of each trial: a 2-D map per neuron, the spike-triggered average
   of natural-image experiments. With ``center=True`` (default) responses are centred per neuron
   first, so the map is the cross-covariance of response and pixel (what a linear neuron's
   receptive field produces for stimuli with white pixel statistics; a neuron whose responses do
   not depend on the image gets a map of ~0). Neurons are embedded (UMAP when ``umap`` imports,
   else PCA) and clustered (k-means); the members closest to each centroid are kept.

2. RMSE between normalised maps. DNN "feature detectors" are mapped into the same pixel space as
   neurons: first-layer kernels (``kernel_detectors``) and, for any layer, each unit's
   response-weighted stimulus average over the same images (``unit_representations``, the unit
   being a channel read at the centre of the feature map, or at a grid of positions). Every map is
   normalised (z-scored over pixels by default, so ``RMSE^2 = 2 - 2 r`` with ``r`` the pixel
   correlation). Two levels:
   - bottom-up (single neuron vs single unit): each neuron's RMSE to its best-matching unit
     (chosen on other images than the RMSE is measured on, see below);
   - top-down (population): the same best match for the group's k-means central representations
     (its typical representations), averaged.
   Both are summarised per area and per Cre line (``grouped_rmse``).

3. RSA and linear CKA between every group and every layer, on image x neuron (repeat-averaged
   responses) and image x feature matrices, columns z-scored (``standardize``). RDMs use the
   correlation distance between images (rsatoolbox's ``correlation``) and are compared by the
   Spearman correlation of their upper triangles; linear CKA (Kornblith et al. 2019) uses centred
   Gram matrices. Both reduce each representation to an ``(n_images, n_images)`` matrix first, so
   a whole groups x layers table is one matrix product (``rsa_matrix``, ``cka_matrix``). Two
   forms:
   - ``layer``: the group against the whole layer (every channel at every position), the field's
     standard;
   - ``matched``: the group against its best-matching single units of the layer (each neuron's
     most correlated channel-at-a-position, chosen on half of the images, RSA / CKA computed on
     the other half; ``matched_rsa_cka``). Mouse neurons read a small part of a layer at their
     own receptive-field position; a whole layer also holds every other position and its
     geometry is dominated by what all positions share, so on a simulated mouse whose areas read
     single units of known layers the ``layer`` form drifts to deeper layers (RSA most) while the
     ``matched`` form recovers the planted layer (tests/test_compare.py).

Choosing and scoring on different images. A best-matching unit is the minimum over thousands of
candidates, and a best layer the extreme over layers: scored on the images they were chosen on,
both are inflated (more so for wider layers). ``compare_dataset`` therefore splits the images
once (``split_images``): the ``select`` images choose each neuron's best unit (RMSE) and matched
unit (RSA / CKA) and each group's central representations, and give every row the criterion a
best layer is chosen on (``value_select``, ``rmse_select``; for unit-level measures a unit chosen
on one half of ``select`` scored on the other, so wide layers gain nothing from having more
candidates); the ``evaluate`` images only score (``value``, ``rmse``).

Ceilings and uncertainty (``jaxmouse.reliability``). Every RSA / CKA row also carries the group's
noise ceiling (split halves of each image's repeats, Spearman-Brown corrected), the score as a
fraction of it, and percentile intervals from resampling the evaluate images; all of them are
computed on the evaluate images, like the scores.

Everything here is a pure function of arrays; ``compare_dataset`` strings them together for a
``NeuralDataset`` and a network, the only function that calls the feature extractor.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ---- neural representations ------------------------------------------------------------------


def _sum_by_image(responses: np.ndarray, trial_image: np.ndarray,
                  n_images: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-image sums of responses (n_images, n) float64 and trial counts (n_images,)."""
  from scipy import sparse

  t = trial_image.size
  onehot = sparse.csr_matrix((np.ones(t), (trial_image, np.arange(t))), shape=(n_images, t))
  return onehot @ np.asarray(responses, np.float64), np.bincount(trial_image, minlength=n_images)


def image_average(responses: np.ndarray, trial_image: np.ndarray, n_images: int) -> np.ndarray:
  """Mean response per image over its trials.

  Args:
    responses: (n_trials, n_neurons).
    trial_image: (n_trials,) int index of the image shown in each trial.
    n_images: number of images; images never shown get NaN rows.

  Returns:
    (n_images, n_neurons) float32.
  """
  responses = np.asarray(responses)
  trial_image = np.asarray(trial_image)
  if responses.ndim != 2 or trial_image.shape != responses.shape[:1]:
    raise ValueError(f"image_average: expected responses (n_trials, n_neurons) and trial_image "
                     f"(n_trials,), got {responses.shape} and {trial_image.shape}")
  sums, counts = _sum_by_image(responses, trial_image, n_images)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (sums / counts[:, None]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("center",))
def response_weighted_average(responses: jax.Array, stimuli: jax.Array, *,
                              center: bool = True) -> jax.Array:
  """``N = T^T . F_S``: each neuron's response-weighted stimulus average.

  Args:
    responses: (n_trials, n_neurons) responses ``T``.
    stimuli: (n_trials, P) flattened stimulus of each trial ``F_S``.
    center: subtract each neuron's mean response first and divide by ``n_trials`` (the
      response-pixel cross-covariance); otherwise divide by each neuron's summed response (the
      plain weighted average, meaningful for non-negative responses).

  Returns:
    (n_neurons, P).
  """
  responses = jnp.asarray(responses, jnp.float32)
  stimuli = jnp.asarray(stimuli, jnp.float32)
  if center:
    weights = (responses - responses.mean(0)) / responses.shape[0]
  else:
    total = responses.sum(0)
    weights = responses / jnp.where(total == 0, 1.0, total)
  return jnp.einsum("tn,tp->np", weights, stimuli)  # (n_trials, n) x (n_trials, P) -> (n, P)


def resize_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """(n, H, W) -> (n, h, w) float32, antialiased linear interpolation."""
  images = np.asarray(images, np.float32)
  h, w = (int(s) for s in shape)
  if images.shape[1:] == (h, w):
    return images
  return np.asarray(jax.image.resize(images, (images.shape[0], h, w), method="linear",
                                     antialias=True))


def neural_representations(responses: np.ndarray, trial_image: np.ndarray, images: np.ndarray, *,
                           shape: Sequence[int] | None = None, center: bool = True) -> np.ndarray:
  """Response-weighted stimulus average of every neuron, over trials.

  Args:
    responses: (n_trials, n_neurons).
    trial_image: (n_trials,) index into ``images``.
    images: (n_images, H, W) stimuli (grayscale).
    shape: (h, w) the stimuli are resized to first (default: unchanged).
    center: see ``response_weighted_average``.

  Returns:
    (n_neurons, h, w) float32. Trials of the same image are summed through the image's average
    (the result is identical to using every trial, and costs n_images instead of n_trials rows).
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 3:
    raise ValueError(f"neural_representations: expected images (n_images, H, W), got "
                     f"{images.shape}")
  small = resize_images(images, shape) if shape is not None else images
  n_images, h, w = small.shape
  responses = np.asarray(responses, np.float32)
  trial_image = np.asarray(trial_image)
  if responses.ndim != 2 or trial_image.shape != responses.shape[:1]:
    raise ValueError(f"neural_representations: expected responses (n_trials, n_neurons) and "
                     f"trial_image (n_trials,), got {responses.shape} and {trial_image.shape}")
  # sum_t r_t s_{i(t)} = sum_i (sum_{t: i(t)=i} r_t) s_i: aggregate trials per image first.
  sums, counts = _sum_by_image(responses, trial_image, n_images)
  used = counts > 0
  counts, sums, stim = counts[used], sums[used], small[used].reshape(-1, h * w)
  n_trials = responses.shape[0]
  if center:
    mean = sums.sum(0) / n_trials  # (n,)
    weights = (sums - counts[:, None] * mean) / n_trials  # (k, n)
  else:
    total = sums.sum(0)
    weights = sums / np.where(total == 0, 1.0, total)
  maps = jnp.einsum("kn,kp->np", jnp.asarray(weights, jnp.float32), stim)  # (k,n)x(k,P) -> (n,P)
  return np.asarray(maps).reshape(-1, h, w)


# ---- DNN feature detectors in pixel space ------------------------------------------------------


def kernel_detectors(kernel: np.ndarray, shape: Sequence[int] | None = None) -> np.ndarray:
  """First-layer kernels as 2-D maps, one per output channel.

  Args:
    kernel: (kh, kw, c_in, c_out) convolution kernel (flax layout); input channels are averaged,
      as a grayscale stimulus tiled to RGB drives them all alike.
    shape: (h, w) to resize the maps to (linear interpolation), e.g. the neural maps' shape.

  Returns:
    (c_out, h, w) float32.
  """
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim != 4:
    raise ValueError(f"kernel_detectors: expected a (kh, kw, c_in, c_out) kernel, got "
                     f"{kernel.shape}")
  maps = np.moveaxis(kernel.mean(axis=2), -1, 0)  # (c_out, kh, kw)
  if shape is not None:
    h, w = (int(s) for s in shape)
    maps = np.asarray(jax.image.resize(maps, (maps.shape[0], h, w), method="linear"))
  return maps


def unit_responses(features: np.ndarray, *, grid: int = 1) -> np.ndarray:
  """Responses of single DNN units to each image: channels read at a grid of positions.

  Args:
    features: (n_images, h, w, c) one layer's feature maps.
    grid: 1 reads every channel at the map's centre (a unit with a centred receptive field);
      g > 1 reads it at g x g evenly spaced positions (cell centres), giving g*g*c units.

  Returns:
    (n_images, grid * grid * c), units ordered (row, column, channel).
  """
  features = np.asarray(features)
  if features.ndim != 4:
    raise ValueError(f"unit_responses: expected features (n_images, h, w, c), got {features.shape}")
  if grid < 1:
    raise ValueError(f"unit_responses: grid must be >= 1, got {grid}")
  _, h, w, c = features.shape
  rows = ((np.arange(grid) + 0.5) * h / grid).astype(int)
  cols = ((np.arange(grid) + 0.5) * w / grid).astype(int)
  picked = features[:, rows][:, :, cols]  # (n, g, g, c)
  return picked.reshape(features.shape[0], -1)


def unit_representations(features: np.ndarray, images: np.ndarray, *,
                         shape: Sequence[int] | None = None, grid: int = 1,
                         center: bool = True) -> np.ndarray:
  """Response-weighted stimulus average of DNN units, in the same pixel space as the neurons.

  Args:
    features: (n_images, h, w, c) one layer's feature maps for ``images``.
    images: (n_images, H, W) the stimuli the features were computed from.
    shape: (h', w') the stimuli are resized to (as for the neurons).
    grid, center: see ``unit_responses`` and ``response_weighted_average``.

  Returns:
    (grid * grid * c, h', w') float32.
  """
  images = np.asarray(images, np.float32)
  features = np.asarray(features)
  if features.shape[0] != images.shape[0]:
    raise ValueError(f"unit_representations: features {features.shape} and images {images.shape} "
                     f"differ in the number of images")
  small = resize_images(images, shape) if shape is not None else images
  resp = unit_responses(features, grid=grid)
  maps = response_weighted_average(resp, small.reshape(small.shape[0], -1), center=center)
  return np.asarray(maps).reshape(-1, *small.shape[1:])


# ---- RMSE between normalised maps --------------------------------------------------------------


def normalize_maps(maps: jax.Array, *, method: str = "zscore", eps: float = 1e-8) -> jax.Array:
  """Normalise each map over its pixels.

  Args:
    maps: (n, ...) maps; every trailing axis is a pixel axis.
    method: ``"zscore"`` (zero mean, unit population std; ``RMSE^2 = 2 - 2 r``) or ``"minmax"``
      (scaled to [0, 1]). A flat map becomes all zeros.

  Returns:
    (n, P) float32 flattened normalised maps.
  """
  x = jnp.asarray(maps, jnp.float32).reshape(maps.shape[0], -1)
  if method == "zscore":
    x = x - x.mean(1, keepdims=True)
    return x / jnp.maximum(x.std(1, keepdims=True), eps)
  if method == "minmax":
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    return (x - lo) / jnp.maximum(hi - lo, eps)
  raise ValueError(f"normalize_maps: method must be 'zscore' or 'minmax', got {method!r}")


@jax.jit
def rmse_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """RMSE between every row of ``a`` (n_a, P) and every row of ``b`` (n_b, P) -> (n_a, n_b)."""
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  cross = jnp.einsum("ip,jp->ij", a, b)  # (n_a, P) x (n_b, P) -> (n_a, n_b)
  sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * cross
  return jnp.sqrt(jnp.maximum(sq, 0.0) / a.shape[1])


@functools.partial(jax.jit, static_argnames=("chunk",))
def best_match(a: jax.Array, b: jax.Array, *, chunk: int = 4096) -> tuple[jax.Array, jax.Array]:
  """For each row of ``a`` (n_a, P), the lowest RMSE to any row of ``b`` (n_b, P) and its index.

  Rows of ``a`` are processed ``chunk`` at a time, so memory stays ``chunk x n_b``. Rows of ``b``
  that are all zero (flat maps after ``normalize_maps``, e.g. a dead ReLU unit) are never
  chosen: their RMSE to any z-scored map is 1 whatever its shape, which would beat every real
  detector correlated below 0.5 with it.

  Returns:
    ``(rmse (n_a,), index (n_a,))``; ``inf`` RMSE where every row of ``b`` is flat.
  """
  n_a = a.shape[0]
  pad = (-n_a) % chunk if n_a > chunk else 0
  step = min(chunk, n_a)
  a_p = jnp.pad(a, ((0, pad), (0, 0))).reshape(-1, step, a.shape[1])
  shaped = jnp.any(b != 0, axis=1)  # (n_b,)

  def one(block):
    m = jnp.where(shaped[None, :], rmse_matrix(block, b), jnp.inf)
    return m.min(1), m.argmin(1)

  rmse, index = jax.lax.map(one, a_p)
  return rmse.reshape(-1)[:n_a], index.reshape(-1)[:n_a]


# ---- embedding and clusters --------------------------------------------------------------------


def embed(maps: np.ndarray, *, n_components: int = 2, seed: int = 0,
          method: str = "auto") -> tuple[np.ndarray, str]:
  """Low-dimensional embedding of maps (n, ...): UMAP if importable (``method="auto"``), else PCA.

  Returns:
    ``(embedding (n, n_components), method_used)``; ``method_used`` is ``"umap"`` or ``"pca"``.
  """
  x = np.asarray(maps, np.float64).reshape(len(maps), -1)
  x = x - x.mean(1, keepdims=True)
  x = x / np.maximum(x.std(1, keepdims=True), 1e-8)  # normalize_maps without a compile per shape
  n = x.shape[0]
  if n < 2:
    raise ValueError(f"embed: need at least 2 maps, got shape {np.shape(maps)}")
  if method not in ("auto", "umap", "pca"):
    raise ValueError(f"embed: method must be 'auto', 'umap' or 'pca', got {method!r}")
  if method in ("auto", "umap"):
    try:
      import umap  # optional: pip install 'jaxmouse[umap]'
    except ImportError:
      if method == "umap":
        raise ValueError("embed: method='umap' but umap-learn is not installed "
                         "(pip install umap-learn)") from None
    else:
      if n > n_components + 2:
        reducer = umap.UMAP(n_components=n_components, n_neighbors=min(15, n - 1),
                            random_state=seed)
        return np.asarray(reducer.fit_transform(x), np.float32), "umap"
  from sklearn.decomposition import PCA

  k = min(n_components, n, x.shape[1])
  out = PCA(n_components=k, random_state=seed).fit_transform(x)
  if k < n_components:
    out = np.pad(out, ((0, 0), (0, n_components - k)))
  return out.astype(np.float32), "pca"


@dataclasses.dataclass(frozen=True)
class Clusters:
  """k-means clusters of an embedding.

  labels: (n,) cluster of each member; centers: (n_clusters, d) centroids;
  central: (n_clusters, n_central) indices of the members nearest each centroid (-1 pads clusters
  with fewer members).
  """

  labels: np.ndarray
  centers: np.ndarray
  central: np.ndarray

  def central_members(self) -> np.ndarray:
    """All central member indices, flattened, padding removed."""
    return self.central[self.central >= 0]


def cluster(embedding: np.ndarray, *, n_clusters: int = 5, n_central: int = 3,
            seed: int = 0) -> Clusters:
  """k-means (scikit-learn) of (n, d) points, with the ``n_central`` members nearest each
  centroid."""
  from sklearn.cluster import KMeans

  x = np.asarray(embedding, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"cluster: expected an (n, d) embedding, got {x.shape}")
  k = min(n_clusters, x.shape[0])
  km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
  central = np.full((k, n_central), -1, np.int64)
  for c in range(k):
    members = np.flatnonzero(km.labels_ == c)
    d = np.linalg.norm(x[members] - km.cluster_centers_[c], axis=1)
    keep = members[np.argsort(d, kind="stable")[:n_central]]
    central[c, :keep.size] = keep
  return Clusters(labels=km.labels_.astype(np.int64),
                  centers=km.cluster_centers_.astype(np.float32), central=central)


def groups_of(labels: np.ndarray) -> dict[str, np.ndarray]:
  """``{label: indices}`` in order of first appearance (e.g. areas or Cre lines of neurons)."""
  labels = np.asarray(labels).astype(str)
  _, first = np.unique(labels, return_index=True)
  return {str(g): np.flatnonzero(labels == g) for g in labels[np.sort(first)]}


def central_representations(neuron_maps: np.ndarray, groups: Mapping[str, np.ndarray], *,
                            n_clusters: int = 5, n_central: int = 3,
                            seed: int = 0) -> dict[str, np.ndarray]:
  """Each group's typical representations: embed its maps, k-means, keep the most central members.

  Args:
    neuron_maps: (n_neurons, h, w) neural representations.
    groups: ``{name: neuron indices}``.

  Returns:
    ``{name: neuron indices}`` of the central members (all members when a group has < 3 neurons).
  """
  out = {}
  for name, idx in groups.items():
    idx = np.asarray(idx)
    if idx.size > 2:
      emb, _ = embed(neuron_maps[idx], seed=seed)
      out[name] = idx[cluster(emb, n_clusters=n_clusters, n_central=n_central,
                              seed=seed).central_members()]
    else:
      out[name] = idx
  return out


def summarize_rmse(best: np.ndarray, groups: Mapping[str, np.ndarray],
                   central: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """Per group: ``bottom_up`` (mean best-match RMSE of its neurons), ``top_down`` (the same over
  its central representations), ``n_neurons``, ``n_central``. best: (n_neurons,)."""
  summary = {}
  for name, idx in groups.items():
    idx = np.asarray(idx)
    if idx.size == 0:
      continue
    c = np.asarray(central[name])
    summary[name] = {"bottom_up": float(best[idx].mean()), "top_down": float(best[c].mean()),
                     "n_neurons": int(idx.size), "n_central": int(c.size)}
  return summary


def grouped_rmse(neuron_maps: np.ndarray, detectors: np.ndarray, groups: Mapping[str, np.ndarray],
                 *, central: Mapping[str, np.ndarray] | None = None, normalize: str = "zscore",
                 **cluster_kw) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray]:
  """Top-down and bottom-up RMSE of every group of neurons against one set of DNN detectors.

  Args:
    neuron_maps: (n_neurons, h, w) neural representations.
    detectors: (n_units, h, w) DNN feature detectors in the same pixel space.
    groups: ``{name: neuron indices}`` (areas, Cre lines, ...).
    central: ``{name: indices}`` of each group's central representations (default: computed by
      ``central_representations(neuron_maps, groups, **cluster_kw)``).
    normalize: map normalisation (``normalize_maps``).

  Returns:
    ``(summary, best_rmse (n_neurons,), best_unit (n_neurons,))``, summary as ``summarize_rmse``.
  """
  if neuron_maps.shape[1:] != detectors.shape[1:]:
    raise ValueError(f"grouped_rmse: neuron maps {neuron_maps.shape} and detectors "
                     f"{detectors.shape} are not in the same pixel space")
  if central is None:
    central = central_representations(neuron_maps, groups, **cluster_kw)
  a = normalize_maps(jnp.asarray(neuron_maps), method=normalize)
  b = normalize_maps(jnp.asarray(detectors), method=normalize)
  best, unit = (np.asarray(v) for v in best_match(a, b))
  return summarize_rmse(best, groups, central), best, unit


# ---- RSA and CKA -------------------------------------------------------------------------------


def _bucket(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Zero-pads the columns of a narrow (n, p) matrix to the next power of two, with a column mask.

  Groups of neurons come in many sizes; padding keeps the jitted functions below to a few
  compiles (wide matrices, e.g. whole layers, keep their exact shape).
  """
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  p = x.shape[1]
  width = p if p > 4096 else max(8, 1 << (p - 1).bit_length())
  mask = (jnp.arange(width) < p).astype(jnp.float32)
  return jnp.pad(x, ((0, 0), (0, width - p))), mask


def rdm(x: jax.Array) -> jax.Array:
  """Correlation-distance RDM between the rows (conditions) of x (n, p) -> (n, n).

  ``d_ij = 1 - pearson(x_i, x_j)`` over the p channels (rsatoolbox's ``correlation``).
  """
  return _rdm(*_bucket(x))


@jax.jit
def _rdm(x: jax.Array, mask: jax.Array) -> jax.Array:
  x = (x - (x * mask).sum(1, keepdims=True) / mask.sum()) * mask  # centre over real channels
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return 1.0 - jnp.einsum("ip,jp->ij", x, x)  # (n, p) x (n, p) -> (n, n)


def centered_gram(x: jax.Array) -> jax.Array:
  """H X X^T H for x (n, p): the Gram matrix of column-centred x, (n, n)."""
  return _centered_gram(_bucket(x)[0])  # zero columns add nothing to the Gram matrix


@jax.jit
def _centered_gram(x: jax.Array) -> jax.Array:
  x = x - x.mean(0, keepdims=True)
  return jnp.einsum("ip,jp->ij", x, x)  # (n, p) x (n, p) -> (n, n)


def _upper(m: jax.Array) -> jax.Array:
  """(..., n, n) -> (..., n(n-1)/2) strict upper triangles."""
  n = m.shape[-1]
  i, j = np.triu_indices(n, k=1)
  return m[..., i, j]


@jax.jit
def rsa_matrix(rdms_a: jax.Array, rdms_b: jax.Array) -> jax.Array:
  """Spearman correlation between every RDM of a (A, n, n) and of b (B, n, n) -> (A, B).

  Upper triangles are rank-transformed (ties get their average rank, as scipy.stats.rankdata) and
  the Pearson correlation of the ranks is taken (rsatoolbox's ``spearman``).
  """
  def ranked(rdms):
    v = _upper(rdms)  # (m, n(n-1)/2)
    r = jax.vmap(lambda u: jax.scipy.stats.rankdata(u, method="average"))(v)
    r = r - r.mean(1, keepdims=True)
    return r / jnp.maximum(jnp.linalg.norm(r, axis=1, keepdims=True), 1e-12)
  return jnp.einsum("ak,bk->ab", ranked(rdms_a), ranked(rdms_b))  # (A, K) x (B, K) -> (A, B)


@jax.jit
def cka_matrix(grams_a: jax.Array, grams_b: jax.Array) -> jax.Array:
  """Linear CKA between every centred Gram of a (A, n, n) and of b (B, n, n) -> (A, B).

  ``CKA = <K, L>_F / (||K||_F ||L||_F)`` with K, L centred Grams (``centered_gram``).
  """
  def unit(g):
    g = g.reshape(g.shape[0], -1)
    return g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), 1e-30)
  return jnp.einsum("ak,bk->ab", unit(grams_a), unit(grams_b))  # (A, n*n) x (B, n*n) -> (A, B)


def rsa(x: jax.Array, y: jax.Array) -> float:
  """Spearman correlation between the correlation-distance RDMs of x (n, p) and y (n, q)."""
  return float(rsa_matrix(rdm(x)[None], rdm(y)[None])[0, 0])


def linear_cka(x: jax.Array, y: jax.Array) -> float:
  """Linear CKA between x (n, p) and y (n, q) (same n conditions)."""
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"linear_cka: x {x.shape} and y {y.shape} differ in the number of rows")
  return float(cka_matrix(centered_gram(x)[None], centered_gram(y)[None])[0, 0])


def standardize(x: np.ndarray, *, eps: float = 1e-8) -> np.ndarray:
  """Columns of x (n, p) z-scored over the n rows (constant columns become 0)."""
  x = np.asarray(x, np.float32).reshape(x.shape[0], -1)
  x = x - x.mean(0)
  return x / np.maximum(x.std(0), eps)


def match_units(responses: np.ndarray, units: np.ndarray, *,
                chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
  """Each neuron's best-matching DNN unit: the largest absolute Pearson correlation over images.

  Args:
    responses: (k, n) responses of n neurons to k images.
    units: (k, U) responses of U units (e.g. every channel at every position of a layer).
    chunk: units per jitted block (memory stays n x chunk).

  Returns:
    ``(index (n,), corr (n,))``: the matched unit of each neuron and its signed correlation.
  """
  r = jnp.asarray(standardize(responses))
  k = r.shape[0]
  if units.shape[0] != k:
    raise ValueError(f"match_units: responses {responses.shape} and units {units.shape} differ in "
                     f"the number of images")
  best = np.full(r.shape[1], -1.0)
  index = np.zeros(r.shape[1], np.int64)
  signed = np.zeros(r.shape[1])
  for s in range(0, units.shape[1], chunk):
    c = np.asarray(_block_corr(r, jnp.asarray(standardize(units[:, s:s + chunk]))))  # (n, b)
    j = np.abs(c).argmax(1)
    v = np.abs(c[np.arange(c.shape[0]), j])
    better = v > best
    best[better], index[better] = v[better], s + j[better]
    signed[better] = c[better, j[better]]
  return index, signed


@jax.jit
def _block_corr(r: jax.Array, u: jax.Array) -> jax.Array:
  return jnp.einsum("kn,ku->nu", r, u) / r.shape[0]  # (k, n) x (k, u) -> (n, u)


def matched_rsa_cka(responses: np.ndarray, units: np.ndarray, *, select: np.ndarray,
                    evaluate: np.ndarray, index: np.ndarray | None = None) -> tuple[float, float]:
  """RSA and linear CKA between neurons and their matched units, cross-validated over images.

  Each neuron is paired with its best-correlated unit on the ``select`` images (``match_units``);
  RSA and CKA between the neurons and their matched units are computed on the disjoint
  ``evaluate`` images, so the selection cannot inflate them.

  Args:
    responses: (k, n) repeat-averaged responses of one group of neurons.
    units: (k, U) one layer's unit responses to the same images.
    select, evaluate: disjoint image indices.
    index: (n,) precomputed matches (``match_units(responses[select], units[select])[0]``).

  Returns:
    ``(rsa, cka)`` on z-scored columns.
  """
  if index is None:
    index, _ = match_units(responses[select], units[select])
  x = standardize(responses[evaluate])
  y = standardize(units[evaluate][:, index])
  return rsa(x, y), linear_cka(x, y)


# ---- one data set against one network ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
  """How ``compare_dataset`` compares a data set with a network.

  layers: the network's layers (paper names, e.g. ``conv3_3``).
  map_shape: (h, w) pixel grid of neural and unit representations.
  neurn_k: NeuRN patch size in front of the network, or None for raw images.
  group_fields: per-neuron fields to group by besides ``area`` (e.g. ``cre_line``); fields the data
    set lacks are skipped.
  unit_grid: positions per side at which units are read for RMSE (see ``unit_responses``).
  n_clusters, n_central: k-means clusters and central members per group (top-down RMSE).
  normalize: map normalisation for RMSE (``zscore`` or ``minmax``).
  standardize: z-score every neuron and every DNN feature over images before RSA / CKA, so that
    neurons with high rates and features with large activations do not dominate the geometry.
  select_fraction: fraction of the images that make every choice (each neuron's best unit and
    matched unit, central representations, and the per-layer criterion a best layer is chosen
    on); the other images only score (``split_images``).
  tier: trials used (None: every trial).
  seed: image split, embedding and k-means seed.
  ceiling_splits: random split halves of each image's repeats averaged for the RSA / CKA noise
    ceilings.
  n_boot: resamples of the evaluate images for the RSA / CKA intervals (0: none).
  ci: the intervals' level.
  """

  layers: tuple[str, ...]
  map_shape: tuple[int, int] = (16, 16)
  neurn_k: int | None = None
  group_fields: tuple[str, ...] = ("cre_line", "cell_class")
  unit_grid: int = 1
  n_clusters: int = 5
  n_central: int = 3
  normalize: str = "zscore"
  standardize: bool = True
  select_fraction: float = 0.5
  tier: str | None = None
  seed: int = 0
  ceiling_splits: int = 5
  n_boot: int = 1000
  ci: float = 0.95

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(self.layers))
    object.__setattr__(self, "map_shape", tuple(int(s) for s in self.map_shape))
    object.__setattr__(self, "group_fields", tuple(self.group_fields))
    if not self.layers:
      raise ValueError("CompareConfig: layers is empty")
    if len(self.map_shape) != 2 or min(self.map_shape) < 2:
      raise ValueError(f"CompareConfig: map_shape must be (h, w) >= 2, got {self.map_shape}")
    if self.neurn_k is not None and (self.neurn_k < 1 or self.neurn_k % 2 == 0):
      raise ValueError(f"CompareConfig: neurn_k must be odd and positive or None, got "
                       f"{self.neurn_k}")
    if self.normalize not in ("zscore", "minmax"):
      raise ValueError(f"CompareConfig: normalize must be 'zscore' or 'minmax', got "
                       f"{self.normalize!r}")
    if self.unit_grid < 1 or self.n_clusters < 1 or self.n_central < 1:
      raise ValueError("CompareConfig: unit_grid, n_clusters and n_central must be >= 1")
    if not 0 < self.select_fraction < 1:
      raise ValueError(f"CompareConfig: select_fraction must be in (0, 1), got "
                       f"{self.select_fraction}")
    if self.ceiling_splits < 1 or self.n_boot < 0 or not 0.5 < self.ci < 1:
      raise ValueError(f"CompareConfig: need ceiling_splits >= 1, n_boot >= 0 and ci in (0.5, "
                       f"1), got {self.ceiling_splits}, {self.n_boot}, {self.ci}")


def network_input(images: np.ndarray, neurn_k: int | None) -> np.ndarray:
  """Images (n, H, W) 0-255 as the network sees them: raw, or ``255 * NeuRN_k`` (same shape)."""
  if neurn_k is None:
    return np.asarray(images, np.float32)
  from jaxmouse.models.neurn import neurn

  out = jax.jit(functools.partial(neurn, k=neurn_k))(jnp.asarray(images, jnp.float32)[..., None])
  return 255.0 * np.asarray(out)[..., 0]


def split_images(n_images: int, *, select_fraction: float = 0.5,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """Disjoint image sets for choosing and for scoring (sorted index arrays).

  ``select`` (``select_fraction`` of the images) makes every choice; ``evaluate`` (the rest) only
  scores the chosen units, neurons and layers. ``select_a`` and ``select_b`` halve ``select`` for
  a held-out criterion inside it (a unit chosen on one half, scored on the other), so that a
  layer can be chosen without the evaluate images and without favouring layers with more units.
  """
  order = np.random.default_rng(seed).permutation(n_images)
  n_select = int(round(select_fraction * n_images))
  select, evaluate = order[:n_select], order[n_select:]
  half = n_select // 2
  sets = {"select": select, "evaluate": evaluate, "select_a": select[:half],
          "select_b": select[half:]}
  if min(v.size for v in sets.values()) < 3:
    raise ValueError(f"split_images: {n_images} images with select_fraction={select_fraction} "
                     f"leave {({k: v.size for k, v in sets.items()})} images per set; each needs "
                     f">= 3")
  return {k: np.sort(v) for k, v in sets.items()}


def paired_rmse(a: jax.Array, b: jax.Array) -> jax.Array:
  """RMSE between row i of ``a`` and row i of ``b``, both (n, P) -> (n,)."""
  return jnp.sqrt(jnp.mean((jnp.asarray(a) - jnp.asarray(b)) ** 2, axis=1))


def cross_validated_match(neuron_maps: Mapping[str, jax.Array],
                          detectors: Mapping[str, jax.Array]) -> tuple[np.ndarray, ...]:
  """Each neuron's best-matching detector chosen on one image set, its RMSE scored on another.

  Args:
    neuron_maps, detectors: ``{set: (n, P)}`` and ``{set: (U, P)}`` normalised maps computed from
      the image sets of ``split_images`` (``select``, ``evaluate``, ``select_a``, ``select_b``).

  Returns:
    ``(rmse (n,), unit (n,), rmse_select (n,))``: ``unit`` is chosen on ``select`` and ``rmse``
    scores it on ``evaluate``; ``rmse_select`` is the criterion to choose among layers, inside
    ``select``: the unit chosen on ``select_a`` scored on ``select_b`` and vice versa, averaged.
  """
  def held_out(choose, score):
    _, unit = best_match(neuron_maps[choose], detectors[choose])
    return paired_rmse(neuron_maps[score], detectors[score][unit]), unit

  rmse, unit = held_out("select", "evaluate")
  ab, _ = held_out("select_a", "select_b")
  ba, _ = held_out("select_b", "select_a")
  return np.asarray(rmse), np.asarray(unit), np.asarray((ab + ba) / 2)


def compare_dataset(ds, features_fn: Callable[[np.ndarray, Sequence[str]],
                                              Mapping[str, np.ndarray]],
                    config: CompareConfig, *, kernel: np.ndarray | None = None,
                    central: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                    progress: Callable | None = None) -> dict:
  """RMSE, RSA and CKA of every group of neurons (area, Cre line) against every layer.

  Choosing and scoring use disjoint images (``split_images``): every choice (each neuron's
  best-matching unit for RMSE, its matched unit for RSA / CKA, each group's central
  representations) is made on the ``select`` images, and every reported ``value`` / ``rmse`` is
  measured on the ``evaluate`` images. Each row also carries the criterion a best layer is chosen
  on (``value_select`` / ``rmse_select``), computed from the ``select`` images alone, so that
  "the most similar layer" is chosen on ``select`` and reported on ``evaluate``
  (``jaxmouse.studies.mice_to_machines.best_layers``).

  RSA and CKA come in two forms (column ``method``): ``layer`` compares the group's
  repeat-averaged responses with the whole layer (every channel at every position), the field's
  standard; ``matched`` compares them with the group's best-matching single units of the layer
  (``matched_rsa_cka``), which follows neurons that read a small part of a layer at their own
  receptive-field positions.

  Args:
    ds: a ``jaxmouse.data.NeuralDataset``.
    features_fn: ``(images (n, H, W) 0-255, layers) -> {layer: (n, h, w, c)}``; called once per
      layer so only one layer's features are held at a time (e.g. a partial of
      ``jaxmouse.features.extract``).
    config: ``CompareConfig``.
    kernel: optional first-layer kernel (kh, kw, c_in, c_out), compared by RMSE as the
      pseudo-layer ``"kernels"``.
    central: ``{kind: {group: indices}}`` central representations from an earlier call on the
      same data and config (they do not depend on the network); computed when None.
    progress: optional wrapper for the layer loop (e.g. ``tqdm``).

  Returns:
    ``{"rsa": rows, "cka": rows, "rmse": rows, "neurons": rows, "maps": (n_neurons, h, w),
    "maps_select": (n_neurons, h, w), "groups": {kind: {name: indices}}, "central": {kind:
    {name: indices}}, "images": {set: indices into ds.images}}``; rows are lists of dicts ready
    for a DataFrame: rsa/cka rows ``kind, group, layer, method, value, value_select`` and, from
    the evaluate images, ``ci_low, ci_high`` (image bootstrap), ``ceiling`` (the group's noise
    ceiling), ``normalized`` (value / ceiling) with ``normalized_ci_low, normalized_ci_high``, and
    ``ceiling_images`` (evaluate images with two or more trials, which the ceiling rests on); rmse rows
    ``kind, group, layer, level, rmse, rmse_select, n_neurons``; neurons rows ``neuron, area,
    layer, best_rmse, best_unit`` (unit chosen on select, RMSE on evaluate). ``maps`` uses every
    image (for display); ``maps_select`` the select images (what the clusters are made from).
  """
  if config.tier is None:
    trial_image, responses = ds.trial_image, ds.responses
  else:
    trial_image, responses = ds.tier(config.tier)
  used = np.unique(trial_image)
  remap = np.full(ds.n_images, -1)
  remap[used] = np.arange(used.size)
  images = ds.images[used]
  trial_image = remap[trial_image]
  n_images = images.shape[0]
  sets = split_images(n_images, select_fraction=config.select_fraction, seed=config.seed)
  net_images = network_input(images, config.neurn_k)
  prep = standardize if config.standardize else (lambda x: np.asarray(x, np.float32))

  groups = {"area": groups_of(ds.areas)}
  for field in config.group_fields:
    if field in ds.neuron_meta:
      groups[field] = groups_of(ds.neuron_meta[field])
  names = [(kind, g) for kind, gs in groups.items() for g in gs]

  def maps_on(subset):
    keep = np.isin(trial_image, subset)
    return neural_representations(responses[keep], trial_image[keep], images,
                                  shape=config.map_shape)

  maps = neural_representations(responses, trial_image, images, shape=config.map_shape)
  sub_maps = {name: maps_on(subset) for name, subset in sets.items()}
  neuron_maps = {name: normalize_maps(jnp.asarray(m), method=config.normalize)
                 for name, m in sub_maps.items()}
  mean_resp = image_average(responses, trial_image, n_images)  # (k, n_neurons)
  scored = ("select", "evaluate")  # the layer form: criterion on select, value on evaluate
  neural_rdms = {s: jnp.stack([rdm(prep(mean_resp[sets[s]][:, groups[k][g]])) for k, g in names])
                 for s in scored}
  neural_grams = {s: jnp.stack([centered_gram(prep(mean_resp[sets[s]][:, groups[k][g]]))
                                for k, g in names]) for s in scored}

  if central is None:
    central = {kind: central_representations(sub_maps["select"], gs,
                                             n_clusters=config.n_clusters,
                                             n_central=config.n_central, seed=config.seed)
               for kind, gs in groups.items()}
  out = {"rsa": [], "cka": [], "rmse": [], "neurons": [], "maps": maps,
         "maps_select": sub_maps["select"], "groups": groups, "central": central,
         "images": {name: used[subset] for name, subset in sets.items()}}

  def add_rmse(layer, detectors):
    det = {name: normalize_maps(jnp.asarray(d), method=config.normalize)
           for name, d in detectors.items()}
    best, unit, crit = cross_validated_match(neuron_maps, det)
    for kind, gs in groups.items():
      value = summarize_rmse(best, gs, central[kind])
      select = summarize_rmse(crit, gs, central[kind])
      for g, s in value.items():
        for level in ("top_down", "bottom_up"):
          out["rmse"].append({"kind": kind, "group": g, "layer": layer, "level": level,
                              "rmse": s[level], "rmse_select": select[g][level],
                              "n_neurons": s["n_neurons"]})
    out["neurons"].extend({"neuron": int(i), "area": str(ds.areas[i]), "layer": layer,
                           "best_rmse": float(best[i]), "best_unit": int(unit[i])}
                          for i in range(maps.shape[0]))

  if kernel is not None:
    k_maps = kernel_detectors(kernel, config.map_shape)  # no image enters a kernel
    add_rmse("kernels", {name: k_maps for name in sets})
  layer_rdms = {s: [] for s in scored}
  layer_grams = {s: [] for s in scored}
  matched_eval = {"rdm": [], "gram": []}  # (layer, group) matrices of the matched units
  for layer in (progress(config.layers) if progress else config.layers):
    feats = np.asarray(features_fn(net_images, [layer])[layer])  # (k, h, w, c)
    flat = feats.reshape(n_images, -1)
    for s in scored:
      x = jnp.asarray(prep(flat[sets[s]]))
      layer_rdms[s].append(rdm(x))
      layer_grams[s].append(centered_gram(x))
      del x
    # Matched units: chosen on select, scored on evaluate; the criterion stays inside select.
    matched = {name: match_units(mean_resp[sets[name]], flat[sets[name]])[0]
               for name in ("select", "select_a", "select_b")}
    for kind, g in names:
      idx = groups[kind][g]
      r, c = matched_rsa_cka(mean_resp[:, idx], flat, select=sets["select"],
                             evaluate=sets["evaluate"], index=matched["select"][idx])
      r_ab, c_ab = matched_rsa_cka(mean_resp[:, idx], flat, select=sets["select_a"],
                                   evaluate=sets["select_b"], index=matched["select_a"][idx])
      r_ba, c_ba = matched_rsa_cka(mean_resp[:, idx], flat, select=sets["select_b"],
                                   evaluate=sets["select_a"], index=matched["select_b"][idx])
      out["rsa"].append({"kind": kind, "group": g, "layer": layer, "method": "matched",
                         "value": r, "value_select": (r_ab + r_ba) / 2})
      out["cka"].append({"kind": kind, "group": g, "layer": layer, "method": "matched",
                         "value": c, "value_select": (c_ab + c_ba) / 2})
      y = jnp.asarray(standardize(flat[sets["evaluate"]][:, matched["select"][idx]]))
      matched_eval["rdm"].append(rdm(y))
      matched_eval["gram"].append(centered_gram(y))
    add_rmse(layer, {name: unit_representations(feats[subset], images[subset],
                                                shape=config.map_shape, grid=config.unit_grid)
                     for name, subset in sets.items()})
    del feats, flat
  rsa_m = {s: np.asarray(rsa_matrix(neural_rdms[s], jnp.stack(layer_rdms[s]))) for s in scored}
  cka_m = {s: np.asarray(cka_matrix(neural_grams[s], jnp.stack(layer_grams[s]))) for s in scored}
  for i, (kind, g) in enumerate(names):
    for j, layer in enumerate(config.layers):
      out["rsa"].append({"kind": kind, "group": g, "layer": layer, "method": "layer",
                         "value": float(rsa_m["evaluate"][i, j]),
                         "value_select": float(rsa_m["select"][i, j])})
      out["cka"].append({"kind": kind, "group": g, "layer": layer, "method": "layer",
                         "value": float(cka_m["evaluate"][i, j]),
                         "value_select": float(cka_m["select"][i, j])})
  _add_ceilings_and_intervals(out, config, responses=responses, trial_image=trial_image,
                              evaluate=sets["evaluate"], mean_resp=mean_resp, names=names,
                              groups=groups, neural={"rdm": neural_rdms["evaluate"],
                                                     "gram": neural_grams["evaluate"]},
                              layers={"rdm": layer_rdms["evaluate"],
                                      "gram": layer_grams["evaluate"]},
                              matched=matched_eval, prep=prep)
  return out


def _add_ceilings_and_intervals(out: dict, config: CompareConfig, *, responses, trial_image,
                                evaluate, mean_resp, names, groups, neural, layers, matched,
                                prep) -> None:
  """Adds to every rsa / cka row of ``out`` its group's noise ceiling, the normalized score and
  image-bootstrap intervals (``jaxmouse.reliability``), all on the evaluate images. The
  ``layer`` rows compare ``prep``-ed responses (as their values do), the ``matched`` rows
  z-scored ones (as ``matched_rsa_cka``)."""
  from jaxmouse import reliability

  halves, ok = reliability.split_half_means(responses, trial_image, evaluate,
                                            n_splits=config.ceiling_splits, seed=config.seed)
  n, n_layers = len(evaluate), len(config.layers)
  where = np.flatnonzero(ok)

  def half_matrices(fn, prep_fn):
    """(G, S, 2, n, n): each group's split-half matrices over the images with two trials."""
    g = np.zeros((len(names), halves.shape[0], 2, n, n), np.float32)
    if where.size < 3:
      return g
    for a, (kind, name) in enumerate(names):
      idx = groups[kind][name]
      for s in range(halves.shape[0]):
        for h in range(2):
          m = np.asarray(fn(prep_fn(halves[s, h][where][:, idx])))
          g[a, s, h][np.ix_(where, where)] = m
    return g

  fns = {"rsa": ("rdm", rdm), "cka": ("gram", centered_gram)}
  z_neural = {"rdm": [], "gram": []}
  for kind, name in names:
    x = jnp.asarray(standardize(mean_resp[evaluate][:, groups[kind][name]]))
    z_neural["rdm"].append(rdm(x))
    z_neural["gram"].append(centered_gram(x))
  n_groups = len(names)
  for measure, (key, fn) in fns.items():
    forms = {
        # layer rows: group a against layer j; matched rows: against its own matched units.
        "layer": (neural[key], jnp.stack(layers[key]), prep,
                  [(a, j) for a in range(n_groups) for j in range(n_layers)]),
        "matched": (jnp.stack(z_neural[key]), jnp.stack(matched[key]), standardize,
                    [(a, j * n_groups + a) for a in range(n_groups) for j in range(n_layers)]),
    }
    for method, (neural_m, models, prep_fn, pairs) in forms.items():
      res = reliability.ceiling_and_intervals(
          measure=measure, neural=np.asarray(neural_m), models=np.asarray(models),
          pairs=np.asarray(pairs), halves=half_matrices(fn, prep_fn), ok=ok,
          n_boot=config.n_boot, seed=config.seed, ci=config.ci)
      stats = {}
      for q, (a, _) in enumerate(pairs):
        stats[(names[a], config.layers[q % n_layers])] = {
            "ci_low": res["ci_low"][q], "ci_high": res["ci_high"][q],
            "ceiling": res["ceiling"][a], "normalized": res["normalized"][q],
            "normalized_ci_low": res["normalized_ci_low"][q],
            "normalized_ci_high": res["normalized_ci_high"][q],
            "ceiling_images": int(where.size)}
      for row in out[measure]:
        if row["method"] == method:
          row.update({k: float(v) if k != "ceiling_images" else v
                      for k, v in stats[((row["kind"], row["group"]), row["layer"])].items()})
