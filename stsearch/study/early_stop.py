"""Early stopping for multi-objective trials.

Optuna cannot prune multi-objective trials through ``trial.report``. Rule used here ("cannot reach the
front"): after epoch ``e ≥ after_epoch``, a trial is stopped when some complete trial with a compression
ratio at least as high had, *at the same epoch*, a validation accuracy more than ``margin`` higher. Such a
trial is dominated at that epoch already, and the same recipe rarely recovers a gap of that size in the
remaining epochs; comparing at equal epochs (not against final accuracies) keeps the rule fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = True
    after_epoch: int = 1
    margin: float = 0.05

    def verdict(self, epoch: int, accuracy: float, cr: float,
                others: Sequence[tuple[float, Sequence[float]]]) -> str | None:
        """Why to stop (a sentence), or ``None`` to go on.

        epoch: 1-based epoch just finished; accuracy: this trial's validation accuracy at that epoch;
        cr: its compression ratio; others: (cr, per-epoch validation accuracies) of complete trials.
        """
        if not self.enabled or epoch < self.after_epoch:
            return None
        best, who = None, None
        for other_cr, curve in others:
            if other_cr >= cr and len(curve) >= epoch:
                a = curve[epoch - 1]
                if best is None or a > best:
                    best, who = a, other_cr
        if best is not None and accuracy < best - self.margin:
            return (f"early stop after epoch {epoch}: validation accuracy {accuracy:.4f} is more than "
                    f"{self.margin:.3f} below {best:.4f}, reached at the same epoch by a complete trial with "
                    f"CR {who:.2f} ≥ {cr:.2f}")
        return None
