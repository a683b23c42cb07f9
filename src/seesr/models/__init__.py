"""SeeSR's UNet and ControlNet: stock diffusers models extended with representation cross-attention (RCA).

* :mod:`seesr.models.image_cross_attention` - the RCA wrapper and ``add_image_cross_attention``;
* :mod:`seesr.models.convert` - key renaming between official checkpoints and our layout;
* :mod:`seesr.models.io` - loading / saving UNet and ControlNet folders (the one place that touches those files);
* :mod:`seesr.models.build` - SeeSR UNet + ControlNet from a stock SD-2 UNet (training start).

Submodules import torch/diffusers; import them directly (this package file stays cheap).
"""

from __future__ import annotations
