"""The paper's published numbers (Ahn & Nam, arXiv:2509.02915), used as reference rows."""

from __future__ import annotations

# Table 3: (layers, epoch, Acc, Flu, Pros, Total PCC, WER, PER, F1, P, R)
TABLE3: list[tuple[str, int, float, float, float, float, float, float, float, float, float]] = [
    ("no training", 0, -0.041, -0.017, -0.0493, -0.104, 0.97, 0.792, 0.143, 0.154, 0.134),
    ("LoRA", 1, 0.547, 0.585, 0.567, 0.544, 0.15, 0.137, 0.686, 0.689, 0.682),
    ("LoRA", 2, 0.637, 0.726, 0.709, 0.662, 0.139, 0.118, 0.722, 0.725, 0.719),
    ("LoRA", 3, 0.656, 0.727, 0.711, 0.675, 0.14, 0.114, 0.724, 0.728, 0.721),
    ("LoRA", 4, 0.645, 0.733, 0.714, 0.668, 0.148, 0.121, 0.721, 0.723, 0.72),
    ("Unfreeze", 1, 0.535, 0.559, 0.564, 0.55, 0.159, 0.199, 0.575, 0.579, 0.57),
    ("Unfreeze", 2, 0.624, 0.668, 0.653, 0.634, 0.145, 0.154, 0.651, 0.651, 0.651),
    ("Unfreeze", 3, 0.621, 0.669, 0.655, 0.637, 0.148, 0.15, 0.663, 0.665, 0.662),
    ("Unfreeze", 4, 0.743, 0.717, 0.704, 0.666, 0.142, 0.142, 0.667, 0.671, 0.663),
]
# Fig. 5: Pearson r of per-utterance PER with human and with predicted accuracy.
FIG5_PER_ACC_PCC = {"human": -0.4463, "pred": -0.3543}
