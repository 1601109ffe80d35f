"""``mmgen eval``: adherence, diversity and distribution figures of a saved pipeline, over a guidance sweep.

One row per guidance scale, so a user picks a CFG scale from the adherence / recall trade-off (the usual
FID-vs-CFG curve). The figures come from :func:`pipelines.generation_quality`, the code the trainer's
evaluation runs too; the rows go to ``eval.json`` and, when asked, into the pipeline's model card.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sweep_guidance", "quality_table", "EVAL_CARD_HEADING"]

EVAL_CARD_HEADING = "Generation quality (mmgen eval)"


def sweep_guidance(pipe: Any, *, guidance_scales: list[float], samples_per_class: int, seed: int,
                   batch_size: int | None = None, **call_kwargs: Any) -> list[dict[str, Any]]:
    """:func:`pipelines.generation_quality` at each guidance scale (same seeds each time), samples left out."""
    from pipelines import generation_quality

    rows = []
    for scale in guidance_scales:
        result = generation_quality(pipe, samples_per_class=samples_per_class, seed=seed, batch_size=batch_size,
                                    guidance_scale=scale, **call_kwargs)
        result.pop("images", None)
        result.pop("audios", None)
        rows.append({"guidance_scale": scale, **result})
    return rows


def quality_table(rows: list[dict[str, Any]]) -> str:
    """The sweep as a Markdown table: adherence, the attribute-space manifold figures, Fréchet, spreads."""
    spreads = list(rows[0]["spread"]) if rows else []
    header = ["guidance", "adherence", "precision", "recall", "density", "coverage", "Fréchet",
              *(f"spread {name}" for name in spreads)]
    if rows and "network" in rows[0]["distribution"]:
        header += ["net precision", "net recall", "net Fréchet"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        attrs = row["distribution"]["attributes"]
        cells = [f"{row['guidance_scale']:g}", f"{row['adherence']:.1%}", *(f"{attrs[m]:.3f}" for m in
                 ("precision", "recall", "density", "coverage")), f"{attrs['frechet']:.3f}",
                 *(f"{row['spread'][name]:.2f}" for name in spreads)]
        if "network" in row["distribution"]:
            net = row["distribution"]["network"]
            cells += [f"{net['precision']:.3f}", f"{net['recall']:.3f}", f"{net['frechet']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
