"""Generation: the sampler chain and the loop that turns a prompt into tokens."""
