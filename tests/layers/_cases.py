"""Layer configurations shared by the layer tests: every format, uniform and mixed t, split channels with
different numbers of in/out factors, the STT last core with t ∤ O_d, and unfactored Tucker modes."""

from __future__ import annotations

import pytest

# conv: 8 -> 6 channels, kernel (3, 2)
CONV_CASES = [
    ("tucker", dict(rank=3)),
    ("tucker", dict(rank=(2, 3, 2, 3), in_shape=(2, 4), out_shape=(2, 3))),
    ("tucker", dict(rank=(None, 4))),  # output mode left unfactored
    ("sttu", dict(rank=4, t=2)),
    ("sttu", dict(rank=(2, 3, 4, 2), t=(2, 1, 2, 1), in_shape=(4, 2), out_shape=(2, 3))),
    ("tt", dict(rank=3)),  # default split: pairs (2, 2), (4, 3)
    ("tt", dict(rank=(3, 4, 2), in_shape=(2, 2, 2), out_shape=(6,))),  # out padded to (6, 1, 1)
    ("stt", dict(rank=4, t=2)),  # last pair O_d = 3: t ∤ O_d
    ("stt", dict(rank=4, t=2, in_shape=(4, 2), out_shape=(3, 2))),  # last pair O_d = 2: shared map
    ("stt", dict(rank=(4, 4, 4), t=(2, 4, 2), in_shape=(2, 2, 2), out_shape=(3, 1, 2))),  # no classical eq.
    ("tr", dict(rank=2)),
    ("tr", dict(rank=3, in_shape=(8,), out_shape=(6,))),
    ("tr", dict(rank=(2, 3, 2, 4), in_shape=(8,), out_shape=(2, 3))),
    ("str", dict(rank=4, t=2)),
    ("str", dict(rank=4, t=(2, 4, 2, 4))),  # chord: spatial core shared over 2 groups
    ("str", dict(rank=(4, 2, 4, 4), t=(2, 4, 4), in_shape=(8,), out_shape=(2, 3))),
]

# linear: 12 -> 6 features
LINEAR_CASES = [
    ("tucker", dict(rank=3)),
    ("tucker", dict(rank=(2, 3, 3, 2), in_shape=(3, 4), out_shape=(2, 3))),
    ("sttu", dict(rank=(2, 3, 4, 3), t=(2, 1, 2, 1), in_shape=(4, 3), out_shape=(2, 3))),
    ("sttu", dict(rank=(6, 12), t=(2, 4))),
    ("tt", dict(rank=3)),  # pairs (3, 2), (4, 3)
    ("tt", dict(rank=(2, 3), in_shape=(2, 2, 3), out_shape=(6,))),  # out padded to (6, 1, 1)
    ("stt", dict(rank=4, t=2)),  # last O_d = 3: t ∤ O_d
    ("stt", dict(rank=4, t=2, in_shape=(4, 3), out_shape=(3, 2))),
    ("stt", dict(rank=(4, 4), t=(4, 2), in_shape=(2, 3, 2), out_shape=(2, 1, 3))),
    ("tr", dict(rank=2)),
    ("tr", dict(rank=(2, 3, 2), in_shape=(12,), out_shape=(2, 3))),
    ("str", dict(rank=4, t=2)),
    ("str", dict(rank=4, t=(2, 4, 2), in_shape=(3, 4), out_shape=(2, 3))),
]


def case_id(case) -> str:
    fmt, kw = case
    return fmt + "-" + "-".join(f"{k}{v}".replace(" ", "") for k, v in kw.items())


def params(cases):
    return [pytest.param(c, id=case_id(c)) for c in cases]
