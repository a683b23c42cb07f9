"""Semantic fidelity (the paper's Table 3, and tag agreement): does a COCO segmenter still see the same things?

* :mod:`.metrics`: box/mask AP (pycocotools), panoptic PQ and semantic mIoU (torchmetrics) from predictions;
* :mod:`.segmenter`: Mask2Former (transformers) run on a folder of images, giving those predictions;
* :mod:`.tags`: RAM tags of a prediction against RAM tags of its ground truth (precision, recall, F1);
* :mod:`.benchmark`: ``seesr benchmark --semantic``: GT, zoomed-LR and method rows on a ``prepare --coco`` set.
"""
