"""How good is a trained video model: FVD, CLIPSIM, subject consistency and motion/flicker statistics.

Each metric is a small module with its reference; `suite.EvalSuite` loads the models the config names
and measures a set of videos (samples, or real clips as the reference row); `page` renders the result.
`reelmill eval` (jobs/eval.py) and the training-time callback (training/eval_callback.py) use them.
"""
