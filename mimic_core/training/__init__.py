"""Training MimicBrush as the paper describes it (the authors released no training code).

``python -m mimic_core train`` (``command.py``) runs :func:`trainer.train`: pairs from videos
(``video_pairs``) and single images (``image_pairs``), augmented (``augment``) and grid-masked by
SIFT matches (``masking``) into samples (``dataset``); networks started from a MimicBrush checkpoint
or SD-1.5 parts (``init_models``, optionally with LoRA: ``lora``); the noise-prediction loss fed as
inference feeds the networks (``objective``); the result saved in the authors' format and as a
self-describing ``.safetensors`` (``export``); the run's folder, checkpoints and log
(``run_folder``). Settings and their paper defaults: ``default_config.yaml`` (``config``). Guide:
``docs/training.md``.

Nothing is imported here, so that the CLI can register the command without the training
requirements installed.
"""
