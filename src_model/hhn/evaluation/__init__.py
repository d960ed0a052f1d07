"""``wfss eval``: seeded few-shot episodes scored with mIoU / FB-IoU (spec section 3).

- ``cli``: ``run_eval_cli(args)``, the command.
- ``runner``: ``evaluate(dataset, sampler, methods, ...)``, several methods sharing episodes and priors.
- ``methods``: all-fg, prior, map (masked average pooling) and hhn.
- ``baselines``: the MAP prototype computation.
"""
