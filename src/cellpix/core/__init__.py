"""The core every step builds on: the hierarchy and label space, the network and its backbones, prediction,
novelty calibration, image rendering, the gene layout, the model bundle and the loaded model.

Nothing here imports a step package (integrate, imaging, train, annotate, explain).
"""
