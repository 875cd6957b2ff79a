"""Training: the plan checked once, the lifecycle of 1…K runs, the loop, stacks and captured steps."""
