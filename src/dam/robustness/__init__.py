"""Past the paper's own probes: standard attacks, gradient-masking checks, the junk detector, adversarial
fine-tuning.  Depends on data, the models, training and the probes; nothing below imports it."""
