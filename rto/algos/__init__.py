"""Pure tensor functions of the RLHF pipeline: masks, log-probs, rewards, advantages, losses.

Nothing here knows about Lightning, Hydra or models; every function is unit-tested by hand.
"""
