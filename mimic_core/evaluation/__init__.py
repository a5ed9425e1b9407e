"""The paper's evaluation protocol (``python -m mimic_core evaluate``), as a harness.

``benchmark`` (the folder format), ``cropping`` (which pixels each metric sees), ``metrics`` and
``backbones`` (the numbers, from torchmetrics and local DINOv2/CLIP/LPIPS networks), ``scoring``
(metrics per case), ``runner`` (resumable, shardable editing), ``report`` and ``contact_sheet``
(what is written), ``harness`` (the command's steps). Nothing here is imported by ``import
mimic_core`` or by the other commands: ``command`` imports the rest only when ``evaluate`` runs.
"""
