"""kvbench: what each inference optimization buys and costs, for your model and your workload."""
