"""What a data set holds, as plain rows and as a readable table (``jaxmouse data info``)."""

from __future__ import annotations

import numpy as np

from jaxmouse.data.dataset import NeuralDataset

EV_THRESHOLD = 0.15  # the field's usual cut on the explainable-variance fraction


def area_rows(ds: NeuralDataset, *, tier: str = "test", threshold: float = EV_THRESHOLD,
              truth=None) -> list[dict]:
  """One dict per area (and ``"all"``): neurons, explainable-variance summary, rates, truth mix."""
  has_test = tier in ds.tier_names and ds.repeats(tier).max() >= 2
  ev = ds.explainable_variance_fraction(tier) if has_test else None
  noise = ds.noise_variance(tier) if has_test else None
  mean_rate = ds.responses.mean(axis=0, dtype=np.float64)
  rows = []
  for area in (*ds.area_names, "all"):
    m = np.ones(ds.n_neurons, bool) if area == "all" else ds.areas == area
    row = {"area": area, "neurons": int(m.sum()), "mean_response": float(mean_rate[m].mean())}
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
             threshold: float = EV_THRESHOLD, truth=None) -> str:
  """A readable multi-line summary: sizes, tiers, repeats and a per-area table."""
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
  meta = ", ".join(sorted(ds.neuron_meta)) or "none"
  lines.append(f"neurons    {ds.n_neurons} in {len(ds.area_names)} areas; per-neuron meta: {meta}")
  for key in ("cre_line", "cell_class"):
    if key in ds.neuron_meta:
      names, counts = np.unique(ds.neuron_meta[key], return_counts=True)
      lines.append(f"  {key:<10} " + ", ".join(f"{n} {c}" for n, c in zip(names, counts)))

  rows = area_rows(ds, tier=tier, threshold=threshold, truth=truth)
  has_ev = "ev_median" in rows[0]
  header = f"{'area':<8}{'neurons':>8}{'mean resp':>11}"
  if has_ev:
    header += f"{'EV frac median [q25, q75]':>28}{f'EV>={threshold:g}':>10}{'noise var':>11}"
  if truth is not None:
    header += "   planted models"
  lines += ["", header, "-" * len(header)]
  for r in rows:
    line = f"{r['area']:<8}{r['neurons']:>8}{r['mean_response']:>11.2f}"
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
  return "\n".join(lines)
