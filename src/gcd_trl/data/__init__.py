"""Dataset builders: the project's SFT data, made with the same prompt code as RL.

- `agent`: agent SFT data (expert episodes and DAgger-style recovery steps, one chat per step);
- `judge`: judge SFT data (critic prompts over labelled steps, template or endpoint critiques);
- `rationale`: the reasoning text written around an expert's action;
- `io`: writing rows with `datasets`, step records and summaries.

data/README.md (top level) lists every dataset the project builds or reads and how to rebuild it.
"""
