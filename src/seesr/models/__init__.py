"""SeeSR's UNet and ControlNet: stock diffusers models extended with representation cross-attention (RCA).

* :mod:`seesr.models.image_cross_attention` - the RCA wrapper and ``add_image_cross_attention``;
* :mod:`seesr.models.convert` - key renaming between official checkpoints and our layout;
* :mod:`seesr.models.limits` - config size checks and the empty (meta-device) model with RCA (no file access:
  :mod:`seesr.weights.unet` reads and writes the folders);
* :mod:`seesr.models.build` - SeeSR UNet + ControlNet from a stock SD-2 UNet (training start).

Submodules import torch/diffusers; import them directly (this package file stays cheap).
"""

from __future__ import annotations
