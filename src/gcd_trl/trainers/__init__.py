"""The trainers: RL over env transitions on TRL's GRPOTrainer (`grpo`, with `token` and `ppo` on top), the
supervised cold starts (`sft`, `value_sft`), and what they share (`microbatch`, `sampler`, `metrics`,
`checkpoints`, `card`, `value_head`). `run` builds and runs the RL trainer a config asks for.

Nothing is imported here, so `gcd_trl.trainers.microbatch` stays free of torch and TRL."""
