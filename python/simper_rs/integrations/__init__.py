"""Model integrations: this package's log-probs and losses inside HuggingFace models and trainers.

- :mod:`~simper_rs.integrations.transforms`: what each model family does to its logits after the
  lm_head (the one table);
- :mod:`~simper_rs.integrations.causal_lm`: the log-prob forward of a causal LM
  (:func:`add_logps_forward`), the first-step check against the model's own logits, the MoE
  router loss.

These import transformers only where a function needs it; :mod:`simper_rs` itself never imports
this subpackage.
"""
