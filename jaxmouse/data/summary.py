"""What a data set holds, as plain rows and as a readable table (``jaxmouse data info``), and
the checks that flag a choice (loss, window, tiers) that looks wrong for the data."""

from __future__ import annotations

import numpy as np

from jaxmouse.data.dataset import TIERS, NeuralDataset

EV_THRESHOLD = 0.15  # the field's usual cut on the explainable-variance fraction
FEW_TRAIN_IMAGES = 500  # below this, CNN readouts trained by gradient descent overfit easily
CALCIUM = ("dF/F", "L0 events")
CALCIUM_WINDOW_MS = 400  # a calcium window should reach ~0.5 s after onset


def response_type(ds: NeuralDataset) -> str:
  """The data set's stated response type, or ``"not stated"``."""
  return ds.info.get("response_type", "not stated")


def shared_images(ds: NeuralDataset) -> dict[tuple[str, str], int]:
  """Number of images shown in two tiers, for every pair of tiers that share any."""
  present = [t for t in TIERS if t in ds.tier_names]
  images = {t: ds.tier_images(t) for t in present}
  out = {}
  for i, a in enumerate(present):
    for b in present[i + 1:]:
      n = int(np.intersect1d(images[a], images[b]).size)
      if n:
        out[(a, b)] = n
  return out


def split_statement(ds: NeuralDataset) -> str:
  """``"by image: 78 train / 20 validation / 20 test images, no image in two tiers"``."""
  counts = " / ".join(f"{ds.tier_images(t).size} {t}" for t in ds.tier_names)
  shared = shared_images(ds)
  if not shared:
    return f"by image: {counts} images, no image in two tiers"
  both = ", ".join(f"{n} images in both {a} and {b}" for (a, b), n in shared.items())
  return f"{counts} images; {both}"


def checks(ds: NeuralDataset, *, tier: str = "test", threshold: float = EV_THRESHOLD) -> list[str]:
  """One line per choice that looks wrong for this data set (loss, window, tiers, size)."""
  out = []
  kind = response_type(ds)
  stated = not kind.startswith("not stated")
  negative = float(np.mean(ds.responses < 0))
  if negative and stated and kind != "dF/F":
    out.append(f"responses are stated to be {kind!r}, yet {negative:.1%} are negative: check the "
               "files; a Poisson loss cannot fit them")
  if not stated:
    out.append(f"the response type is not stated in the files ({negative:.1%} negative values): "
               "--loss auto fits Poisson to non-negative responses, Gaussian otherwise")
  ms = ds.info.get("response_window_ms")
  if kind in CALCIUM and ms:
    try:
      end = float(ms.split("-")[-1])
    except ValueError:
      end = None
    if end is not None and end < CALCIUM_WINDOW_MS:
      out.append(f"the response window ends {end:.0f} ms after onset: calcium responses lag the "
                 "stimulus and last ~0.5 s; use window 'allen' ([start, start + 2 x duration)) "
                 "or '0-500ms'")
  for (a, b), n in shared_images(ds).items():
    out.append(f"{n} images are in both the {a} and {b} tiers: split by image, or "
               f"{'scores' if 'test' in (a, b) else 'early stopping and model selection'} "
               "reward memorising images")
  for t in TIERS:
    if t not in ds.tier_names:
      out.append(f"no {t!r} trials" + (": nothing to score (withheld?)" if t == "test" else ""))
  if "left_out" in ds.info:
    out.append(f"left out while reading: {ds.info['left_out']}")
  if "train" in ds.tier_names and ds.tier_images("train").size < FEW_TRAIN_IMAGES:
    out.append(f"{ds.tier_images('train').size} training images are few for CNN readouts fitted "
               "by gradient descent: prefer ridge with a per-neuron penalty (--readout ridge; "
               "the cadena2019 default on Allen data)")
  if tier in ds.tier_names and ds.repeats(tier).max() >= 2:
    ev = ds.explainable_variance_fraction(tier)
    ev = ev[np.isfinite(ev)]
    if ev.size and np.median(ev) < threshold:
      out.append(f"median explainable-variance fraction {np.median(ev):.2f} < {threshold:g}: most "
                 "neurons respond unreliably to the images; their FEVE is mostly noise")
  return out


def area_rows(ds: NeuralDataset, *, tier: str = "test", threshold: float = EV_THRESHOLD,
              truth=None) -> list[dict]:
  """One dict per area (and ``"all"``): neurons, explainable-variance summary, rates, truth mix."""
  has_test = tier in ds.tier_names and ds.repeats(tier).max() >= 2
  ev = ds.explainable_variance_fraction(tier) if has_test else None
  noise = ds.noise_variance(tier) if has_test else None
  mean_rate = ds.responses.mean(axis=0, dtype=np.float64)
  negative = (ds.responses < 0).mean(axis=0, dtype=np.float64)
  images = {t: ds.tier_images(t).size for t in ds.tier_names}
  repeats = {t: float(np.median(ds.repeats(t))) for t in ds.tier_names}
  rows = []
  for area in (*ds.area_names, "all"):
    m = np.ones(ds.n_neurons, bool) if area == "all" else ds.areas == area
    row = {"area": area, "neurons": int(m.sum()), "mean_response": float(mean_rate[m].mean()),
           "negative": float(negative[m].mean()), "response_type": response_type(ds)}
    row.update({f"images_{t}": n for t, n in images.items()})
    row.update({f"repeats_{t}": r for t, r in repeats.items()})
    if ev is not None:
      e = ev[m][np.isfinite(ev[m])]
      row.update(ev_median=float(np.median(e)) if e.size else np.nan,
                 ev_q25=float(np.quantile(e, 0.25)) if e.size else np.nan,
                 ev_q75=float(np.quantile(e, 0.75)) if e.size else np.nan,
                 ev_above=int(np.sum(e >= threshold)), noise_var=float(noise[m].mean()))
    if truth is not None and area != "all":
      kinds = np.where(np.asarray(truth.model)[m] == "gabor", "gabor",
                       np.asarray(truth.layer)[m])
      names, counts = np.unique(kinds, return_counts=True)
      row["planted"] = ", ".join(f"{k} {c}" for k, c in zip(names, counts))
    rows.append(row)
  return rows


def describe(ds: NeuralDataset, *, source: str = "", tier: str = "test",
             threshold: float = EV_THRESHOLD, truth=None, loss: str | None = None) -> str:
  """A readable multi-line summary: sizes, tiers, repeats, the responses, a per-area table and
  warnings (``checks``). ``loss``: a statement of the loss a fit would use, printed as given."""
  lines = [f"data set   {ds.name}" + (f"   ({source})" if source else "")]
  lo, hi = float(ds.images.min()), float(ds.images.max())
  lines.append(f"images     {ds.n_images} x {ds.image_shape[0]} x {ds.image_shape[1]}   "
               f"values {lo:.3g}..{hi:.3g}")
  per_tier = ", ".join(f"{t} {int(np.sum(ds.tiers == t))}" for t in ds.tier_names)
  lines.append(f"trials     {ds.n_trials}: {per_tier}")
  for t in ds.tier_names:
    reps = ds.repeats(t)
    lines.append(f"  {t:<10} {reps.size} images, repeats per image "
                 f"{reps.min()}..{reps.max()} (median {np.median(reps):g})")
  lines.append(f"responses  {response_type(ds)}; {float(np.mean(ds.responses < 0)):.1%} negative")
  if "response_window" in ds.info:
    ms = ds.info.get("response_window_ms")
    lines.append(f"  window   {ds.info['response_window']}" + (f" ({ms} ms)" if ms else ""))
  if loss:
    lines.append(f"  loss     {loss}")
  if "split" in ds.info:
    lines.append(f"  split    {ds.info['split']}")
  meta = ", ".join(sorted(ds.neuron_meta)) or "none"
  lines.append(f"neurons    {ds.n_neurons} in {len(ds.area_names)} areas; per-neuron meta: {meta}")
  for key in ("cre_line", "cell_class"):
    if key in ds.neuron_meta:
      names, counts = np.unique(ds.neuron_meta[key], return_counts=True)
      lines.append(f"  {key:<10} " + ", ".join(f"{n} {c}" for n, c in zip(names, counts)))

  rows = area_rows(ds, tier=tier, threshold=threshold, truth=truth)
  has_ev = "ev_median" in rows[0]
  header = f"{'area':<8}{'neurons':>8}{'mean resp':>11}{'negative':>10}"
  if has_ev:
    header += f"{'EV frac median [q25, q75]':>28}{f'EV>={threshold:g}':>10}{'noise var':>11}"
  if truth is not None:
    header += "   planted models"
  lines += ["", header, "-" * len(header)]
  for r in rows:
    line = f"{r['area']:<8}{r['neurons']:>8}{r['mean_response']:>11.2f}{r['negative']:>10.1%}"
    if has_ev:
      ev = f"{r['ev_median']:.2f} [{r['ev_q25']:.2f}, {r['ev_q75']:.2f}]"
      line += f"{ev:>28}{r['ev_above']:>10}{r['noise_var']:>11.2f}"
    if r.get("planted"):
      line += f"   {r['planted']}"
    lines.append(line)
  if not has_ev:
    lines.append(f"(no repeated {tier!r} trials: explainable variance not available)")
  else:
    lines.append(f"EV frac = explainable-variance fraction on {tier!r} trials "
                 f"(1 - noise var / total var)")
  warnings = checks(ds, tier=tier, threshold=threshold)
  if warnings:
    lines += [""] + [f"warning: {w}" for w in warnings]
  return "\n".join(lines)
