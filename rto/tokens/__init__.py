"""The token page of a finished run: every response token coloured by its reward.

    python -m rto.tokens <run folder> [--n-prompts 8]     # -> <run folder>/tokens.html (+ tokens.json)

Draws responses to the first prompts of the run's evaluation set (`eval.prompt_set`, test by default)
from each policy of the run (SFT = pi_ref, DPO, the PPO/RTO policy), as the evaluation drew them
(each policy's own stream), and writes one self-contained HTML page (no network; open it from disk)
with a switch between the per-token signals of `rto.tokens.signals` (DPO token reward, its raw
log-ratio, the KL term, the run's total reward, the critic's value, the advantage and, on the
embedded task, the gold per-word reward), numbers on hover, a legend, and the sequence scores (gold,
RM, KL) beside each response. `tokens.json` holds the same numbers. When the run logged to W&B, the
page is logged to that W&B run too (`tokens/page`, an HTML panel; offline runs get an offline record
to sync).

- `signals`: the numbers of each token (from PPO's own experience step);
- `page`: the page's data (summaries, help texts) and writing it;
- `html`: the HTML, CSS and JavaScript;
- `wandb_panel`: the page as a panel of the run's W&B run.
"""

from rto.tokens.page import DATA, PAGE, page_data, write_page

__all__ = ["DATA", "PAGE", "page_data", "write_page"]
