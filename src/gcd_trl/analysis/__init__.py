"""The paper's diagnostics (`gcd-trl analyze`): each analysis reads a model and saved step records and
writes NAME.json and NAME.png. docs/analysis.md describes them.

- `theory`: Lemma 3.1, Theorem 3.2, Figure 4 and Appendix A.3, numerically (no model).
- `similarity`: inter-sample similarity, agent steps vs single-turn samples (Figure 3a).
- `coupling`: change of log p(a_j|x_j) after one SGD step on (x_i, a_i) (Figure 3b).
- `influence`: Eq. 2 influence between good and bad samples over checkpoints (Figure 8).
- `consistency`: how often the model repeats repeated / good / bad actions (Figures 1 and 5).
- `tokens`: which tokens carry the cross-sample coupling (Figure 9).
- `suite`: all of them on a training run (`gcd-trl analyze all`), with a markdown report.

Shared pieces: `common` (models, samples, batched forward passes, per-sample gradients), `reference`
(single-turn reference samples), `plotting`, `scripted` (step records with known mistakes, for tests).
"""
