"""Layout: the pure planner, the batched packer and generations."""
