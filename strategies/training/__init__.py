"""Trained speculation heads (Medusa, EAGLE, multi-token prediction): their modules, the self-distillation data
(the target's own hidden states and predictions, cached once), AdamW training and the on-disk store."""
