"""Quick start with the Python API: simulate a physical pair, register it, fit paired LB-NLM,
super-resolve the whole LR field and score it against the simulator's ground truth.

    python examples/quickstart.py
"""

import numpy as np

from pairsr.api import fit, prepare_pair, super_resolve
from pairsr.grid import bicubic
from pairsr.io import to_float32
from pairsr.metrics import psnr
from pairsr.simulate import simulate_pair

sim = simulate_pair(seed=0, lr_shape=(472, 640))  # two independent scans of one specimen
pair = prepare_pair(sim.lr, sim.hr)  # registration; LR window around the HR, HR on its SR grid
r = pair.registration
print(f"zoom {r.zoom:.4f} (truth {sim.truth['zoom']:.4f}), "
      f"rotation {r.rotation_deg:+.3f}° (truth {sim.truth['rotation_deg']:+.3f}°)")

model = fit([pair], "lbnlm")  # paired library + σ chosen on a held-out strip
sr = super_resolve(model, sim.lr)  # xarray.DataArray on the SR grid
lr = to_float32(sim.lr)
print(f"PSNR vs ground truth: bicubic {psnr(np.clip(bicubic(lr), 0, 1), sim.gt, border=8):.2f} dB, "
      f"LB-NLM {psnr(to_float32(sr.values), sim.gt, border=8):.2f} dB")
