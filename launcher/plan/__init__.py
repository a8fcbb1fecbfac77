"""`ftl plan`: predict per-GPU memory, throughput, time and cost of a run before launching it.

catalogue  known model architectures (config.json fields as data)
inventory  the parameters ftl will hold, from a meta-device build (no weights)
hardware   GPU memory and peak throughput table
memory     per-GPU memory by strategy: weights, gradients, optimizer, activations, overhead
throughput FLOPs per token, tokens/s, epoch time and cost
suggest    the cheapest changes that make a run fit
render     the text report
"""
