"""From images to a feature cache: datasets, preprocessing, backbones, the backbone loop, augmented
views and the extract command (``python -m pipeline.extract``, in command.py).

Nothing is imported here, so that importing one module (say, datasets) does not load the others.
"""
