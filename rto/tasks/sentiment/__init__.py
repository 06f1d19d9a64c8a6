"""The sentiment task: a real pretrained policy (SmolLM2-135M-Instruct) asked for short texts about
everyday things, with VADER's sentiment score (plus penalties that keep it honest) as gold reward."""

from rto.tasks.sentiment.gold import END_MARKER, GoldParts, gold_breakdown, gold_parts, gold_reward, gold_rewards
from rto.tasks.sentiment.labels import LabelStats, bradley_terry_labels, expected_agreement, label_agreement
from rto.tasks.sentiment.prompts import PromptSplits, prompt_pool, sentiment_prompts, things_by_split
from rto.tasks.sentiment.sampling import ResponsePairs, chat_encoder, sample_response_pairs

__all__ = [
    "END_MARKER",
    "GoldParts",
    "LabelStats",
    "PromptSplits",
    "ResponsePairs",
    "bradley_terry_labels",
    "chat_encoder",
    "expected_agreement",
    "gold_breakdown",
    "gold_parts",
    "gold_reward",
    "gold_rewards",
    "label_agreement",
    "prompt_pool",
    "sample_response_pairs",
    "sentiment_prompts",
    "things_by_split",
]
