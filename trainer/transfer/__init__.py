"""Transfer-learning strategies as transforms of the one trainer's model and optimizer.

config.py          the `transfer` config section and its cross-section rules
model_parts.py     which parameters are the head, the blocks (by depth) and the embeddings
freezing.py        feature extraction and partial fine-tuning (static freezing)
unfreezing.py      gradual unfreezing (ULMFiT): the schedule, applied at step boundaries
param_groups.py    differential learning rates: head vs pretrained, layer-wise decay, LoRA+
heads.py           task heads (sequence classification): model class, loss, accuracy/macro-F1
early_stopping.py  patience/min-delta on an eval metric, and restoring the best checkpoint
setup.py           the named build steps run.py calls

Kept import-light: the launcher imports the config module without torch.
"""
