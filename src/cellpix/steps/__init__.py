"""The five steps of the method, each on top of the core and the data layer and never importing another:

integrate (QC, normalisation, the panel, a query brought to the reference), imaging (the gene layout), train
(the hierarchical classifier), annotate (prediction, novelty, evaluation) and explain (SHAP gene importance).
"""
