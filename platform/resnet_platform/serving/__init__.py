"""Using registered models at scale: batch inference with Ray Data, online serving with Ray Serve.

Both pull the model through the registry's safe loader (weights + JSON spec, no pickles) and apply
the exact preprocessing of ``load_model(...).predict_topk``. Import the submodule you need
(``serving.batch`` or ``serving.serve``): Ray Serve is only imported by the latter.
"""
