"""Tasks with a known gold reward, generated offline: `embedded` (a toy language, models trained from
scratch) and `sentiment` (a real pretrained chat model asked for short texts, judged by a VADER-based
gold). Each task gives prompts, demonstrations or a starting policy's samples, preference pairs
labelled on its gold reward, and the gold judge the evaluation reads."""
