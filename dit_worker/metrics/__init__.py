"""Sample-quality metrics of generated sets: FID, sFID, Inception Score, precision/recall.

They follow the ADM evaluator suite (openai/guided-diffusion `evaluations/evaluator.py`), which the
DiT paper used, with torch-fidelity's TensorFlow-faithful Inception-v3 as the feature network.
Beside them (`set_metrics`): FD-DINOv2 (dgm-eval's protocol), CMMD and the CLIP score, on
transformers' DINOv2 and CLIP models; `row_scores` computes per-image CLIP scores on the workers.
"""
