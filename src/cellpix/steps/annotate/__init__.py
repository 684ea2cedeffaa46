"""Annotation step: hierarchical prediction with subtype masking, novelty flags and evaluation."""
