"""Explain a trained model: SHAP attributions on rendered images, mapped back to genes."""
